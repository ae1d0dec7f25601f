//! `watrunk sdp`: the SDP negotiator from the command line, for users debugging their stacks against
//! the WhatsApp profile and for tests. `answer` and `offer` print SDP (CRLF) on stdout; `accept`
//! prints the media plan as JSON; `check` lists every rule an SDP breaks. Exit 0 on success, 2 when
//! the SDP is refused (the rule goes to stderr), 1 for a usage or I/O problem.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use sha2::{Digest, Sha256};
use watrunk_sdp::{self as sdp, Codec, Fingerprint, LocalMedia, Profile, Security};

#[derive(Subcommand)]
pub enum SdpCommand {
    /// Answer an offer (FILE, or - for stdin): prints our answer, or the rule the offer breaks.
    Answer(AnswerArgs),
    /// Print our offer for an outbound call.
    Offer(OfferArgs),
    /// Check a remote's answer to our offer: prints the media plan as JSON.
    Accept(AcceptArgs),
    /// Say whether an offer or answer meets the WhatsApp profile, and every rule it breaks.
    Check(CheckArgs),
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ProfileArg {
    Whatsapp,
    Pbx,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum SrtpArg {
    Dtls,
    Sdes,
    /// Plain RTP (PBX profile only).
    Plain,
}

#[derive(Args)]
pub struct LocalArgs {
    #[arg(long, value_enum, default_value = "whatsapp")]
    profile: ProfileArg,
    /// Key exchange. Answers follow the offer; offers default to dtls (WhatsApp) or plain (PBX).
    #[arg(long, value_enum)]
    srtp: Option<SrtpArg>,
    /// Our media address: a host candidate and, for the first IPv4 one, the c=/m= address. Repeatable.
    #[arg(long = "media-addr")]
    media_addrs: Vec<SocketAddr>,
    /// PEM certificate whose sha-256 fingerprint we announce; default: a fresh ECDSA P-256 one.
    #[arg(long)]
    cert: Option<PathBuf>,
    /// PBX profile: codecs we accept, in order of preference (opus, pcmu, pcma, telephone-event).
    #[arg(long, value_delimiter = ',')]
    codecs: Vec<String>,
}

#[derive(Args)]
pub struct AnswerArgs {
    /// The offer SDP, or - for standard input.
    file: PathBuf,
    #[command(flatten)]
    local: LocalArgs,
    /// Also write the media plan as JSON to this file.
    #[arg(long)]
    plan_out: Option<PathBuf>,
    /// The host named in the Warning header printed with a refusal.
    #[arg(long, default_value = "watrunk")]
    warning_host: String,
}

#[derive(Args)]
pub struct OfferArgs {
    #[command(flatten)]
    local: LocalArgs,
}

#[derive(Args)]
pub struct AcceptArgs {
    /// Our offer, as printed by `watrunk sdp offer`.
    offer: PathBuf,
    /// The remote's answer.
    answer: PathBuf,
    #[arg(long, value_enum, default_value = "whatsapp")]
    profile: ProfileArg,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum SideArg {
    /// The SDP is one a business sends to Meta.
    Business,
    /// The SDP is Meta's (ICE-lite relay).
    Meta,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum KindArg {
    Offer,
    Answer,
}

#[derive(Args)]
pub struct CheckArgs {
    /// The SDP, or - for standard input.
    file: PathBuf,
    #[arg(long, value_enum, default_value = "business")]
    side: SideArg,
    /// Judge as an offer or an answer; inferred from a=setup and a=crypto when not given.
    #[arg(long = "as", value_enum)]
    kind: Option<KindArg>,
    /// Also fail on what the SDP leaves out that Meta's own SDPs carry (a=ptime:20, a=maxptime,
    /// a=ssrc, telephone-event/8000, ICE candidates); without it these are advice only.
    #[arg(long)]
    strict: bool,
}

pub fn run(command: SdpCommand) -> ExitCode {
    let result = match command {
        SdpCommand::Answer(a) => answer(a),
        SdpCommand::Offer(a) => offer(a),
        SdpCommand::Accept(a) => accept(a),
        SdpCommand::Check(a) => check(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("watrunk sdp: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn read_input(path: &Path) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    if path.as_os_str() == "-" {
        std::io::stdin().read_to_end(&mut buf)?;
    } else {
        buf = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    }
    Ok(buf)
}

fn parse_file(path: &Path) -> Result<std::result::Result<sdp::Session, sdp::SdpError>> {
    Ok(sdp::parse(&read_input(path)?))
}

fn refuse(e: &sdp::SdpError, host: &str) -> ExitCode {
    eprintln!("{}: {e}", e.rule());
    eprintln!(
        "SIP: {} {}; Warning: {}",
        e.status(),
        if e.status() == 488 {
            "Not Acceptable Here"
        } else {
            "Server Internal Error"
        },
        e.warning(host)
    );
    ExitCode::from(2)
}

fn profile(p: ProfileArg) -> Profile {
    match p {
        ProfileArg::Whatsapp => Profile::WhatsApp,
        ProfileArg::Pbx => Profile::Pbx,
    }
}

fn security(s: SrtpArg) -> Security {
    match s {
        SrtpArg::Dtls => Security::Dtls,
        SrtpArg::Sdes => Security::Sdes,
        SrtpArg::Plain => Security::Plain,
    }
}

fn local_media(args: &LocalArgs, default_security: Security) -> Result<LocalMedia> {
    let profile = profile(args.profile);
    let security = args.srtp.map(security).unwrap_or(default_security);
    let mut local = LocalMedia::generate(profile, security, &mut rand::thread_rng())
        .with_candidates(args.media_addrs.iter().copied())
        .with_fingerprint(certificate_fingerprint(args.cert.as_deref())?);
    if !args.codecs.is_empty() {
        local.codecs = args
            .codecs
            .iter()
            .map(|name| {
                Codec::from_name(name).with_context(|| {
                    format!("--codecs: unknown codec {name:?} (opus, pcmu, pcma, telephone-event)")
                })
            })
            .collect::<Result<_>>()?;
    }
    Ok(local)
}

fn certificate_fingerprint(cert: Option<&Path>) -> Result<Fingerprint> {
    let der = match cert {
        Some(path) => {
            let pem = std::fs::read(path).with_context(|| format!("--cert {}", path.display()))?;
            let mut reader = std::io::BufReader::new(pem.as_slice());
            let first = rustls_pemfile::certs(&mut reader).next();
            match first {
                Some(cert) => cert
                    .with_context(|| format!("--cert {}: bad PEM", path.display()))?
                    .to_vec(),
                None => bail!("--cert {}: no certificate in the file", path.display()),
            }
        }
        None => {
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
            let params = rcgen::CertificateParams::new(vec!["watrunk".to_string()])?;
            params.self_signed(&key)?.der().to_vec()
        }
    };
    Ok(Fingerprint::sha256(Sha256::digest(&der).to_vec()))
}

fn answer(args: AnswerArgs) -> Result<ExitCode> {
    let offer = match parse_file(&args.file)? {
        Ok(s) => s,
        Err(e) => return Ok(refuse(&e, &args.warning_host)),
    };
    // Answers follow the offer's key exchange; the PBX profile needs to know it before negotiating.
    let offered_savp = offer.medias.iter().any(|m| {
        m.media.eq_ignore_ascii_case("audio")
            && m.proto.trim().to_ascii_uppercase().starts_with("RTP/SAVP")
    });
    let default_security = match (args.local.profile, offered_savp) {
        (ProfileArg::Whatsapp, _) => Security::Dtls,
        (ProfileArg::Pbx, true) => Security::Sdes,
        (ProfileArg::Pbx, false) => Security::Plain,
    };
    let local = local_media(&args.local, default_security)?;
    match sdp::answer(&offer, &local) {
        Ok((answer, plan)) => {
            if let Some(path) = &args.plan_out {
                std::fs::write(path, serde_json::to_vec_pretty(&plan)?)
                    .with_context(|| format!("--plan-out {}", path.display()))?;
            }
            std::io::stdout().write_all(sdp::print(&answer).as_bytes())?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Ok(refuse(&e, &args.warning_host)),
    }
}

fn offer(args: OfferArgs) -> Result<ExitCode> {
    let default_security = match args.local.profile {
        ProfileArg::Whatsapp => Security::Dtls,
        ProfileArg::Pbx => Security::Plain,
    };
    let local = local_media(&args.local, default_security)?;
    match sdp::offer(&local) {
        Ok(state) => {
            std::io::stdout().write_all(sdp::print(state.sdp()).as_bytes())?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Ok(refuse(&e, "watrunk")),
    }
}

fn accept(args: AcceptArgs) -> Result<ExitCode> {
    let offer = match parse_file(&args.offer)? {
        Ok(s) => s,
        Err(e) => bail!("{}: our offer does not parse: {e}", args.offer.display()),
    };
    let state = sdp::OfferState::from_sdp(profile(args.profile), &offer)
        .with_context(|| format!("{} is not an offer of ours", args.offer.display()))?;
    let answer = match parse_file(&args.answer)? {
        Ok(s) => s,
        Err(e) => return Ok(refuse(&e, "watrunk")),
    };
    match sdp::accept_answer(&state, &answer) {
        Ok(plan) => {
            println!("{}", serde_json::to_string_pretty(&plan)?);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Ok(refuse(&e, "watrunk")),
    }
}

fn check(args: CheckArgs) -> Result<ExitCode> {
    let side = match args.side {
        SideArg::Business => sdp::Side::Business,
        SideArg::Meta => sdp::Side::Meta,
    };
    let kind = args.kind.map(|k| match k {
        KindArg::Offer => sdp::Kind::Offer,
        KindArg::Answer => sdp::Kind::Answer,
    });
    let (violations, advice) = match parse_file(&args.file)? {
        Ok(session) => (
            sdp::check(&session, side, kind),
            sdp::advise(&session, side),
        ),
        Err(e) => (vec![e], Vec::new()),
    };
    let whose = match side {
        sdp::Side::Business => "sent by the business",
        sdp::Side::Meta => "sent by Meta",
    };
    let failed = !violations.is_empty() || (args.strict && !advice.is_empty());
    if violations.is_empty() {
        println!("ok: meets the WhatsApp profile (as an SDP {whose})");
    } else {
        println!(
            "does not meet the WhatsApp profile (as an SDP {whose}): {} rule(s) broken",
            violations.len()
        );
        for v in &violations {
            println!("- {}: {v}", v.rule());
        }
    }
    if !advice.is_empty() {
        println!(
            "{} (Meta's own SDPs have these{}):",
            if args.strict {
                "missing, with --strict"
            } else {
                "advice"
            },
            if args.strict {
                ""
            } else {
                "; calls work without them"
            }
        );
        for (name, text) in &advice {
            println!("- {name}: {text}");
        }
    }
    Ok(if failed {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}
