//! `watrunk call`: places one business-initiated call. When a `watrunk serve` answers on the control
//! API (`--api`), the call is placed there and its id printed; otherwise this process runs the call
//! itself, one-shot, until it ends, printing its events as JSON lines. One-shot is `watrunk serve`
//! for one call: the same configuration, listeners (Meta's BYE comes to our Contact) and call path.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;
use tokio::sync::{mpsc, oneshot};

use crate::config::{ServeArgs, ServeConfig};
use crate::server::{self, CallInput, Command};

#[derive(Args, Debug)]
pub struct PlaceCallArgs {
    /// The business number calling (one of --number).
    #[arg(long)]
    pub from: String,
    /// The WhatsApp user: +E.164 or a BSUID.
    #[arg(long)]
    pub to: String,
    /// Hang up after this many seconds of call (default: wait for the far side).
    #[arg(long)]
    pub hangup_after: Option<f64>,
    /// Where this call's audio goes (default: --sink).
    #[arg(long = "call-sink")]
    pub call_sink: Option<SocketAddr>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Places the call through a running server's API. None: no server answers there.
fn through_api(api: &str, args: &PlaceCallArgs) -> Option<Result<()>> {
    let base = format!("http://{api}");
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(10))
        .build();
    let body = serde_json::json!({"from": args.from, "to": args.to, "sink": args.call_sink});
    let call = match agent.post(&format!("{base}/calls")).send_json(body) {
        Err(ureq::Error::Transport(_)) => return None,
        Err(ureq::Error::Status(code, r)) => {
            let text = r.into_string().unwrap_or_default();
            return Some(Err(anyhow::anyhow!(
                "the server at {api} refused the call ({code}): {text}"
            )));
        }
        Ok(r) => match r.into_json::<serde_json::Value>() {
            Ok(v) => v["call"].as_str().unwrap_or_default().to_string(),
            Err(e) => return Some(Err(e.into())),
        },
    };
    println!(
        "{}",
        serde_json::json!({"event": "call.placed", "call": call, "api": base})
    );
    if let Some(secs) = args.hangup_after {
        std::thread::sleep(Duration::from_secs_f64(secs));
        if let Err(e) = agent.post(&format!("{base}/calls/{call}/hangup")).call() {
            return Some(Err(anyhow::anyhow!("hang up {call}: {e}")));
        }
    }
    Some(Ok(()))
}

pub async fn run(mut args: PlaceCallArgs) -> Result<()> {
    let api = args
        .serve
        .calls
        .api
        .clone()
        .unwrap_or_else(|| crate::config::DEFAULT_API.to_string());
    if api != "off" {
        let (api2, args2) = (api.clone(), args.clone_call());
        if let Some(r) = tokio::task::spawn_blocking(move || through_api(&api2, &args2)).await? {
            return r;
        }
        tracing::info!("no watrunk serve answers on {api}: placing the call from this process");
    }
    args.serve.calls.api = Some("off".into());
    if args.serve.calls.numbers.is_empty() {
        args.serve.calls.numbers.push(args.from.clone());
    }
    if args.serve.calls.events.is_none() {
        args.serve.calls.events = Some("-".into());
    }
    let cfg = ServeConfig::resolve(args.serve)?;
    let (tx, rx) = mpsc::channel(4096);
    let server = tokio::spawn(server::run_with(cfg, None, tx.clone(), rx, true));
    let (reply, answer) = oneshot::channel();
    tx.send(CallInput::Command(Command::Originate {
        from: args.from.clone(),
        to: args.to.clone(),
        sink: args.call_sink,
        reply,
    }))
    .await?;
    let name = match answer.await? {
        Ok(name) => name,
        Err(e) => bail!("cannot place the call: {e}"),
    };
    if let Some(secs) = args.hangup_after {
        let tx = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs_f64(secs)).await;
            let (reply, _answer) = oneshot::channel();
            let _ = tx
                .send(CallInput::Command(Command::HangUp { call: name, reply }))
                .await;
        });
    }
    server.await?
}

impl PlaceCallArgs {
    fn clone_call(&self) -> PlaceCallArgs {
        PlaceCallArgs {
            from: self.from.clone(),
            to: self.to.clone(),
            hangup_after: self.hangup_after,
            call_sink: self.call_sink,
            serve: ServeArgs::default(),
        }
    }
}
