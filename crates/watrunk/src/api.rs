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

use std::net::SocketAddr;

use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::StatusCode;
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

/// Binds the API; the server runs until the process ends.
pub async fn serve(
    addr: SocketAddr,
    core: mpsc::Sender<CallInput>,
    events: broadcast::Sender<String>,
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
        .with_state(Api { core, events });
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
