//! The watrunk command line: `serve` runs the trunk endpoint, `probe` sends one request as a client
//! (digest included) to check a peer or proxy, `sdp` runs the SDP negotiator on files.

mod api;
mod call_cli;
mod capture_cli;
mod client;
mod config;
mod debugging;
mod events;
mod hep;
mod keylog;
mod media_cli;
mod sdp_cli;
mod server;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "watrunk",
    version,
    about = "SIP-over-TLS trunk endpoint for WhatsApp Business Calling"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the trunk endpoint: TLS for Meta, optional TCP/UDP for a PBX.
    Serve(Box<config::ServeArgs>),
    /// Place one call to a WhatsApp user and run until it ends (events as JSON lines on stdout).
    Call(Box<call_cli::PlaceCallArgs>),
    /// Send one request (OPTIONS by default) and print the final response; answers 401/407 once.
    Probe(client::ProbeArgs),
    /// Media without SIP: answer an SDP offer file and relay its audio to a local sink.
    Media {
        #[command(subcommand)]
        command: media_cli::MediaCommand,
    },
    /// A Meta-like peer: `sim serve` (Meta for calls a business places), `sim call HOST` (a WhatsApp
    /// user calling a business), `sim sink` (a voice-agent stand-in: tone out, recording in).
    #[cfg(feature = "sim")]
    Sim {
        #[command(subcommand)]
        command: watrunk_sim::SimCommand,
    },
    /// SDP negotiation from the command line: answer, offer, accept an answer, check a profile.
    Sdp {
        #[command(subcommand)]
        command: sdp_cli::SdpCommand,
    },
    /// Captures of calls: `capture decrypt` turns a pcap's SRTP into plain RTP with a key log.
    Capture {
        #[command(subcommand)]
        command: capture_cli::CaptureCommand,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Command::Sdp { command } = cli.command {
        return sdp_cli::run(command);
    }
    if let Command::Capture { command } = cli.command {
        return capture_cli::run(command);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            // webrtc-ice warns on every normal call (a check tick before the far side's candidate
            // is in, candidates closed after the agent); our own log says when ICE fails.
            tracing_subscriber::EnvFilter::try_from_env("WATRUNK_LOG").unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,dtls=error,webrtc_ice=error")
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("watrunk: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let done: anyhow::Result<()> = match cli.command {
            Command::Serve(args) => server::run(*args).await,
            Command::Call(args) => call_cli::run(*args).await,
            Command::Probe(args) => client::probe(args).await,
            Command::Media { command } => media_cli::run(command).await,
            #[cfg(feature = "sim")]
            Command::Sim { command } => match watrunk_sim::run(command, rand::random()).await {
                Ok(true) => Ok(()),
                Ok(false) => return Ok(std::process::ExitCode::FAILURE),
                Err(e) => Err(e),
            },
            Command::Sdp { .. } | Command::Capture { .. } => {
                unreachable!("handled before the runtime starts")
            }
        };
        done.map(|()| std::process::ExitCode::SUCCESS)
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("watrunk: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
