//! The watrunk command line: `serve` runs the trunk endpoint, `probe` sends one request as a client
//! (digest included) to check a peer or proxy, `sdp` runs the SDP negotiator on files, `whatsapp`
//! edits the number's settings through the Graph API, `doctor` checks a deployment,
//! `completions` and `config reference` print shell completions and docs/configuration.md.

mod api;
mod call_cli;
mod capture_cli;
mod cdr;
mod client;
mod config;
mod debugging;
mod doctor;
mod events;
mod hep;
mod keylog;
mod logging;
mod media_cli;
mod metrics;
mod sdp_cli;
mod server;
mod webhooks;
mod whatsapp_cli;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "watrunk",
    version,
    about = "SIP-over-TLS trunk endpoint for WhatsApp Business Calling"
)]
struct Cli {
    /// How log lines are written to stderr: text, or json (one object a line, with the call's
    /// span: its id and Meta's wacid). Which lines: WATRUNK_LOG, else RUST_LOG (e.g. debug,
    /// watrunk=trace).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t,
        env = "WATRUNK_LOG_FORMAT"
    )]
    log_format: logging::LogFormat,
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
    /// The number's WhatsApp settings through Meta's Graph API: show, enable SIP toward us,
    /// disable it, read its SIP password into a file.
    Whatsapp {
        #[command(subcommand)]
        command: whatsapp_cli::WhatsappCommand,
    },
    /// Check a deployment before Meta's INVITEs silently fail: certificate, TLS port, DNS, media
    /// port, passwords, sinks, clock (serve's flags and config file).
    Doctor(Box<doctor::DoctorArgs>),
    /// Captures of calls: `capture decrypt` turns a pcap's SRTP into plain RTP with a key log.
    Capture {
        #[command(subcommand)]
        command: capture_cli::CaptureCommand,
    },
    /// Print the shell completion script for bash, zsh, fish, elvish or powershell.
    Completions { shell: clap_complete::Shell },
    /// About the configuration: `config reference` prints docs/configuration.md.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Every `serve` flag and config file key as markdown (docs/configuration.md).
    Reference,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let command = match cli.command {
        Command::Sdp { command } => return sdp_cli::run(command),
        Command::Whatsapp { command } => return whatsapp_cli::run(command),
        Command::Capture { command } => return capture_cli::run(command),
        Command::Doctor(args) => return doctor::run(*args),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "watrunk", &mut script);
            return print_out(&script);
        }
        Command::Config {
            command: ConfigCommand::Reference,
        } => return print_out(config::reference::markdown().as_bytes()),
        other => other,
    };
    logging::init(cli.log_format);
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
        let done: anyhow::Result<()> = match command {
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
            Command::Sdp { .. }
            | Command::Whatsapp { .. }
            | Command::Doctor(_)
            | Command::Completions { .. }
            | Command::Config { .. }
            | Command::Capture { .. } => {
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

/// Writes `bytes` to stdout; a reader that went away (`| head`) is no error of ours.
fn print_out(bytes: &[u8]) -> std::process::ExitCode {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("watrunk: cannot write to stdout: {e}");
            std::process::ExitCode::FAILURE
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
