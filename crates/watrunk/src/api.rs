//! The control API: HTTP + JSON on a local address (`--api`, default 127.0.0.1:8061). Every request
//! becomes a [`Command`] for the core and waits for its answer; `GET /events` is a WebSocket that
//! streams the call events (the same JSON objects as `--events`).
//!
//! | method | path                      | body                         | answer                    |
//! |--------|---------------------------|------------------------------|---------------------------|
//! | GET    | /calls                    |                              | `{"calls": [...]}`        |
//! | POST   | /calls                    | `{"from","to","sink"?}`      | 201 `{"call"}`            |
//! | POST   | /calls/{call}/answer      | `{}`                         | 204                       |
//! | POST   | /calls/{call}/hangup      |                              | 204                       |
//! | POST   | /calls/{call}/dtmf        | `{"keys": "12#"}`            | 204                       |
//! | GET    | /events                   | WebSocket                    | one text message per event |
//!
//! Every request passes [`guard`] first: a web page a local user opens must not reach it. A
//! `Host` that names anything but this API's own address (an IP literal, or `localhost`) is a DNS
//! rebinding and gets 403; so does an `Origin` (browsers send it with every WebSocket and
//! cross-site POST) that is not such an address; with `--api-token-file`, a request without
//! `Authorization: Bearer TOKEN` gets 401.

use std::net::SocketAddr;

use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::server::{CallInput, Command};

#[derive(Clone)]
struct Api {
    core: mpsc::Sender<CallInput>,
    events: broadcast::Sender<String>,
}

#[derive(Deserialize)]
struct Originate {
    from: String,
    to: String,
    sink: Option<SocketAddr>,
}

#[derive(Deserialize, Default)]
struct AnswerBody {
    sink: Option<SocketAddr>,
}

#[derive(Deserialize)]
struct Dtmf {
    keys: String,
}

/// Who may use the API: its own address, and the token if one is set.
#[derive(Clone)]
struct Guard {
    bound: SocketAddr,
    token: Option<std::sync::Arc<str>>,
}

impl Guard {
    /// `host` (`HOST[:PORT]`, as in Host or an Origin's authority) names this API: an IP literal
    /// it is bound to (any, when bound to every address), or `localhost` and loopback addresses
    /// when bound to loopback. Names other than `localhost` never do: they are what a DNS
    /// rebinding points at us.
    fn is_us(&self, host: &str) -> bool {
        let name = match host.strip_prefix('[') {
            Some(rest) => rest.split(']').next().unwrap_or_default(),
            None => host.rsplit_once(':').map_or(host, |(h, port)| {
                if port.bytes().all(|b| b.is_ascii_digit()) {
                    h
                } else {
                    host
                }
            }),
        };
        let bound = self.bound.ip();
        if name.eq_ignore_ascii_case("localhost") {
            return bound.is_loopback() || bound.is_unspecified();
        }
        match name.parse::<std::net::IpAddr>() {
            Ok(ip) => {
                bound.is_unspecified() || ip == bound || (bound.is_loopback() && ip.is_loopback())
            }
            Err(_) => false,
        }
    }

    /// Why a request is refused, if it is: its status and reason.
    fn check(&self, headers: &HeaderMap) -> Result<(), (StatusCode, String)> {
        if let Some(host) = headers.get(header::HOST) {
            let host = host.to_str().unwrap_or_default();
            if !self.is_us(host) {
                return Err((
                    StatusCode::FORBIDDEN,
                    format!("Host {host:?} is not this API's address (DNS rebinding?)"),
                ));
            }
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or_default();
            let authority = origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"))
                .unwrap_or_default();
            if authority.is_empty() || !self.is_us(authority) {
                return Err((
                    StatusCode::FORBIDDEN,
                    format!("requests from the web page at {origin:?} are not taken"),
                ));
            }
        }
        if let Some(token) = &self.token {
            let given = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or_default();
            if !same(given.as_bytes(), token.as_bytes()) {
                return Err((
                    StatusCode::UNAUTHORIZED,
                    "Authorization: Bearer TOKEN (--api-token-file) is needed".into(),
                ));
            }
        }
        Ok(())
    }
}

/// Compares in time that does not depend on where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn guard(State(guard): State<Guard>, req: Request, next: Next) -> Response {
    match guard.check(req.headers()) {
        Ok(()) => next.run(req).await,
        Err((status, why)) => error(status, why),
    }
}

/// Binds the API; the server runs until the process ends.
pub async fn serve(
    addr: SocketAddr,
    token: Option<String>,
    core: mpsc::Sender<CallInput>,
    events: broadcast::Sender<String>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot bind the control API on {addr} (--api): {e}"))?;
    let local = listener.local_addr()?;
    let app = Router::new()
        .route("/calls", get(list).post(originate))
        .route("/calls/{call}/answer", post(answer))
        .route("/calls/{call}/hangup", post(hang_up))
        .route("/calls/{call}/dtmf", post(dtmf))
        .route("/events", get(events_ws))
        .route(
            "/metrics",
            get(move || async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    metrics.render(),
                )
            }),
        )
        .with_state(Api { core, events })
        .layer(middleware::from_fn_with_state(
            Guard {
                bound: local,
                token: token.map(Into::into),
            },
            guard,
        ));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("control API stopped: {e}");
        }
    });
    Ok(local)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// Sends a command and waits for the core's answer.
async fn ask<T>(
    api: &Api,
    make: impl FnOnce(oneshot::Sender<T>) -> Command,
) -> Result<T, Response> {
    let (tx, rx) = oneshot::channel();
    api.core
        .try_send(CallInput::Command(make(tx)))
        .map_err(|_| error(StatusCode::SERVICE_UNAVAILABLE, "the server is overloaded"))?;
    rx.await
        .map_err(|_| error(StatusCode::SERVICE_UNAVAILABLE, "the server is stopping"))
}

fn done(result: Result<(), String>) -> Response {
    match result {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) if e.starts_with("no call") => error(StatusCode::NOT_FOUND, e),
        Err(e) => error(StatusCode::CONFLICT, e),
    }
}

async fn list(State(api): State<Api>) -> Response {
    match ask(&api, |reply| Command::List { reply }).await {
        Ok(v) => Json(v).into_response(),
        Err(r) => r,
    }
}

async fn originate(State(api): State<Api>, Json(body): Json<Originate>) -> Response {
    let r = ask(&api, |reply| Command::Originate {
        from: body.from,
        to: body.to,
        sink: body.sink,
        reply,
    })
    .await;
    match r {
        Ok(Ok(call)) => (StatusCode::CREATED, Json(json!({ "call": call }))).into_response(),
        Ok(Err(e)) => error(StatusCode::UNPROCESSABLE_ENTITY, e),
        Err(r) => r,
    }
}

async fn answer(
    State(api): State<Api>,
    Path(call): Path<String>,
    body: Option<Json<AnswerBody>>,
) -> Response {
    let sink = body.map(|b| b.0).unwrap_or_default().sink;
    match ask(&api, |reply| Command::Answer { call, sink, reply }).await {
        Ok(r) => done(r),
        Err(r) => r,
    }
}

async fn hang_up(State(api): State<Api>, Path(call): Path<String>) -> Response {
    match ask(&api, |reply| Command::HangUp { call, reply }).await {
        Ok(r) => done(r),
        Err(r) => r,
    }
}

async fn dtmf(
    State(api): State<Api>,
    Path(call): Path<String>,
    Json(body): Json<Dtmf>,
) -> Response {
    match ask(&api, |reply| Command::Dtmf {
        call,
        keys: body.keys,
        reply,
    })
    .await
    {
        Ok(r) => done(r),
        Err(r) => r,
    }
}

async fn events_ws(State(api): State<Api>, ws: WebSocketUpgrade) -> Response {
    let rx = api.events.subscribe();
    ws.on_upgrade(move |socket| stream_events(socket, rx))
}

async fn stream_events(mut socket: WebSocket, mut rx: broadcast::Receiver<String>) {
    loop {
        let text = match rx.recv().await {
            Ok(line) => line,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                json!({"event": "events.lost", "count": n}).to_string()
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if socket.send(WsMessage::Text(text.into())).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.insert(name.clone(), value.parse().unwrap());
        }
        h
    }

    #[test]
    fn only_our_own_address_and_the_token_get_through() {
        let loopback = Guard {
            bound: "127.0.0.1:8061".parse().unwrap(),
            token: None,
        };
        for host in [
            "127.0.0.1:8061",
            "localhost:8061",
            "[::1]:8061",
            "127.0.0.1",
        ] {
            assert!(
                loopback.check(&headers(&[(header::HOST, host)])).is_ok(),
                "{host}"
            );
        }
        for host in [
            "evil.example:8061",
            "10.0.0.5:8061",
            "127.0.0.1.nip.io:8061",
        ] {
            assert!(
                loopback.check(&headers(&[(header::HOST, host)])).is_err(),
                "{host}"
            );
        }
        let ours = [(header::HOST, "127.0.0.1:8061")];
        for origin in ["http://127.0.0.1:8061", "http://localhost:8061"] {
            let h = headers(&[ours[0].clone(), (header::ORIGIN, origin)]);
            assert!(loopback.check(&h).is_ok(), "{origin}");
        }
        for origin in [
            "http://evil.example",
            "null",
            "https://evil.example:8061",
            "file://",
        ] {
            let h = headers(&[ours[0].clone(), (header::ORIGIN, origin)]);
            let (status, _) = loopback.check(&h).unwrap_err();
            assert_eq!(status, StatusCode::FORBIDDEN, "{origin}");
        }
        let everywhere = Guard {
            bound: "0.0.0.0:8061".parse().unwrap(),
            token: Some("s3cret".into()),
        };
        let with = |auth: &str| {
            headers(&[
                (header::HOST, "203.0.113.7:8061"),
                (header::AUTHORIZATION, auth),
            ])
        };
        assert!(everywhere.check(&with("Bearer s3cret")).is_ok());
        for wrong in ["Bearer s3cre", "Bearer s3cret2", "Basic s3cret", ""] {
            let (status, _) = everywhere.check(&with(wrong)).unwrap_err();
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{wrong}");
        }
    }
}
