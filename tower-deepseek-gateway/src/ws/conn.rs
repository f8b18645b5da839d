//! One upgraded connection: reads requests, runs each in a task of its own, writes the answers,
//! pings, and closes (see the [module docs](super) for the rules).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::extract::ws::{CloseFrame, Message, WebSocket, close_code};
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue, Request, StatusCode};
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::task::{Id, JoinSet};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::task::task_tracker::TaskTrackerToken;
use tower_deepseek::core::meta::{ClientIp, TenantId};

use super::message::{self, gateway_error};
use super::{Runtime, answer};
use crate::Shared;
use crate::config::WebSocketConfig;
use crate::telemetry;

/// How long the closing handshake may take (our close frame out, the peer's back).
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Messages of the answers waiting for the socket, per connection: beyond it, the requests'
/// tasks wait (and so do their upstream reads).
const OUTBOX: usize = 64;

/// Everything a connection needs, gathered at the upgrade.
pub(crate) struct Conn {
    pub(crate) shared: Arc<Shared>,
    /// The client's credential headers, copied onto each request (the proxy checks them
    /// again: a key removed from the configuration stops working on open connections too).
    pub(crate) credentials: HeaderMap,
    /// The client's tenant, as the check at the upgrade found it (set on each request, so
    /// that limits, cache scope and audit never depend on where the check runs).
    pub(crate) tenant: Option<TenantId>,
    pub(crate) peer: Option<SocketAddr>,
    pub(crate) client_ip: Option<ClientIp>,
    pub(crate) config: Arc<WebSocketConfig>,
    pub(crate) runtime: Runtime,
    pub(crate) _permit: OwnedSemaphorePermit,
    pub(crate) _token: TaskTrackerToken,
}

/// How the connection ends.
enum End {
    /// Send a close frame with this code and reason, then wait (bounded) for the peer's.
    Close(u16, &'static str),
    /// The peer sent its close frame: the library's answer to it goes out, then the end.
    Answered,
    /// The peer is gone: nothing more to send.
    Gone,
}

/// The requests in flight on a connection: their tasks, and the tag of each.
struct InFlight {
    tasks: JoinSet<String>,
    tags: HashMap<Id, Option<Value>>,
}

impl InFlight {
    fn is_tagged(&self, tag: &Value) -> bool {
        self.tags.values().any(|t| t.as_ref() == Some(tag))
    }
}

impl Conn {
    fn request(&self, body: Vec<u8>) -> Request<Body> {
        let mut req = Request::post("/v1/chat/completions")
            .body(Body::from(body))
            .expect("a static URI and method");
        let headers = req.headers_mut();
        headers.extend(self.credentials.clone());
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(peer) = self.peer {
            req.extensions_mut().insert(ConnectInfo(peer));
        }
        if let Some(t) = &self.tenant {
            req.extensions_mut().insert(t.clone());
        }
        if let Some(ip) = self.client_ip {
            req.extensions_mut().insert(ip);
        }
        req
    }
}

/// Sends `msg`, bounded by the ping interval: a peer that reads nothing for that long is gone.
async fn send(socket: &mut WebSocket, msg: Message, within: Duration) -> bool {
    matches!(
        tokio::time::timeout(within, socket.send(msg)).await,
        Ok(Ok(()))
    )
}

fn refused(tag: Option<&Value>, status: StatusCode, code: &str, text: &str) -> String {
    let kind = if status.is_server_error() {
        "api_error"
    } else {
        "invalid_request_error"
    };
    message::error(
        tag,
        &gateway_error(kind, code, text),
        Some(status),
        None,
        None,
    )
}

/// Serves the connection until it ends.
pub(crate) async fn run(mut socket: WebSocket, conn: Conn) {
    metrics::gauge!(telemetry::WEBSOCKET_CONNECTIONS).increment(1.0);
    let end = serve(&mut socket, &conn).await;
    let code = match end {
        End::Close(code, reason) => {
            let frame = CloseFrame {
                code,
                reason: reason.into(),
            };
            let closing = async {
                if socket.send(Message::Close(Some(frame))).await.is_ok() {
                    // The peer's close frame ends the stream.
                    while let Some(Ok(_)) = socket.recv().await {}
                }
            };
            let _ = tokio::time::timeout(CLOSE_GRACE, closing).await;
            code_label(code)
        }
        End::Answered => {
            // Reading on sends the close frame the library queued in answer, then ends.
            let _ = tokio::time::timeout(CLOSE_GRACE, async {
                while let Some(Ok(_)) = socket.recv().await {}
            })
            .await;
            "peer"
        }
        End::Gone => "peer",
    };
    tracing::debug!(target: "tower_deepseek_gateway", close = code, "websocket closed");
    metrics::counter!(telemetry::WEBSOCKET_CLOSED_TOTAL, "code" => code).increment(1);
    metrics::gauge!(telemetry::WEBSOCKET_CONNECTIONS).decrement(1.0);
}

fn code_label(code: u16) -> &'static str {
    match code {
        close_code::NORMAL => "1000",
        close_code::AWAY => "1001",
        close_code::PROTOCOL => "1002",
        close_code::UNSUPPORTED => "1003",
        close_code::INVALID => "1007",
        close_code::SIZE => "1009",
        close_code::ERROR => "1011",
        _ => "other",
    }
}

/// The connection's loop; returns how it ends. Requests still in flight are cancelled when it
/// returns (their tasks are aborted with the set).
async fn serve(socket: &mut WebSocket, conn: &Conn) -> End {
    let cfg = &conn.config;
    let write_within = cfg.ping_interval;
    let (tx, mut rx) = mpsc::channel::<String>(OUTBOX);
    let mut inflight = InFlight {
        tasks: JoinSet::new(),
        tags: HashMap::new(),
    };
    let mut last_activity = Instant::now();
    let mut ping = tokio::time::interval_at(Instant::now() + cfg.ping_interval, cfg.ping_interval);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut awaiting_pong = false;
    let mut draining = conn.runtime.stop.is_cancelled();
    loop {
        if draining && inflight.tasks.is_empty() && rx.is_empty() {
            return End::Close(close_code::AWAY, "the gateway is shutting down");
        }
        let idle_at = last_activity + cfg.idle_timeout;
        tokio::select! {
            msg = socket.recv() => {
                let msg = match msg {
                    None => return End::Gone,
                    Some(Ok(m)) => m,
                    Some(Err(e)) => return end_for(e),
                };
                // Anything from the peer shows it is alive.
                awaiting_pong = false;
                match msg {
                    Message::Text(text) => {
                        last_activity = Instant::now();
                        if let Some(reply) = start(conn, &mut inflight, &tx, text.as_str(), draining) {
                            if !send(socket, Message::Text(reply.into()), write_within).await {
                                return End::Gone;
                            }
                        }
                    }
                    Message::Binary(_) => {
                        return End::Close(
                            close_code::UNSUPPORTED,
                            "binary messages are not supported: send each request as a JSON text message",
                        );
                    }
                    Message::Ping(_) | Message::Pong(_) => {}
                    Message::Close(_) => return End::Answered,
                }
            }
            Some(out) = rx.recv() => {
                if !send(socket, Message::Text(out.into()), write_within).await {
                    return End::Gone;
                }
            }
            Some(joined) = inflight.tasks.join_next_with_id(), if !inflight.tasks.is_empty() => {
                // Every message of this answer is in the outbox by now: they go out first,
                // then its final message.
                while let Ok(out) = rx.try_recv() {
                    if !send(socket, Message::Text(out.into()), write_within).await {
                        return End::Gone;
                    }
                }
                let last = match joined {
                    Ok((id, last)) => {
                        inflight.tags.remove(&id);
                        last
                    }
                    Err(e) => {
                        let tag = inflight.tags.remove(&e.id()).flatten();
                        tracing::error!(target: "tower_deepseek_gateway", "websocket: a request's task failed (panic or abort)");
                        let reply = refused(tag.as_ref(), StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "the gateway failed while answering this request");
                        let _ = send(socket, Message::Text(reply.into()), write_within).await;
                        fail_all(socket, &mut inflight, "internal_error", "the gateway failed while answering another request on this connection", write_within).await;
                        return End::Close(close_code::ERROR, "internal error");
                    }
                };
                if !send(socket, Message::Text(last.into()), write_within).await {
                    return End::Gone;
                }
                if inflight.tasks.is_empty() {
                    last_activity = Instant::now();
                }
            }
            _ = ping.tick() => {
                if awaiting_pong {
                    return End::Close(close_code::AWAY, "no pong within websocket.ping_interval_ms");
                }
                if !send(socket, Message::Ping(Bytes::new()), write_within).await {
                    return End::Gone;
                }
                awaiting_pong = true;
            }
            () = tokio::time::sleep_until(idle_at), if inflight.tasks.is_empty() && !draining => {
                return End::Close(close_code::NORMAL, "idle timeout (websocket.idle_timeout_ms)");
            }
            () = conn.runtime.stop.cancelled(), if !draining => {
                draining = true;
            }
            () = conn.runtime.abort.cancelled() => {
                fail_all(socket, &mut inflight, "shutting_down", "the gateway shut down before this answer finished (drain deadline)", write_within).await;
                return End::Close(close_code::AWAY, "the gateway is shutting down");
            }
        }
    }
}

/// Cancels every request in flight, telling each tagged one why.
async fn fail_all(
    socket: &mut WebSocket,
    inflight: &mut InFlight,
    code: &str,
    text: &str,
    within: Duration,
) {
    inflight.tasks.abort_all();
    for tag in std::mem::take(&mut inflight.tags).into_values() {
        let reply = refused(tag.as_ref(), StatusCode::SERVICE_UNAVAILABLE, code, text);
        if !send(socket, Message::Text(reply.into()), within).await {
            return;
        }
    }
}

/// Starts the request of a text message; returns the error message that answers it instead,
/// if it is refused.
fn start(
    conn: &Conn,
    inflight: &mut InFlight,
    tx: &mpsc::Sender<String>,
    text: &str,
    draining: bool,
) -> Option<String> {
    if draining {
        return Some(refused(
            message::tag_of(text).as_ref(),
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the gateway is shutting down: no new requests on this connection; reconnect",
        ));
    }
    let req = match message::parse(text) {
        Ok(r) => r,
        Err(refusal) => return Some(refusal.message),
    };
    if inflight.tasks.len() >= conn.config.max_concurrent_requests {
        return Some(refused(
            req.tag.as_ref(),
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_concurrent_requests",
            "too many requests in flight on this connection (websocket.max_concurrent_requests); wait for an answer to end",
        ));
    }
    if let Some(tag) = &req.tag {
        if inflight.is_tagged(tag) {
            return Some(refused(
                Some(tag),
                StatusCode::BAD_REQUEST,
                "duplicate_id",
                "a request with this id is still in flight on this connection",
            ));
        }
    }
    let request = conn.request(req.body);
    let handle = inflight.tasks.spawn(answer::answer(
        conn.shared.clone(),
        request,
        req.tag.clone(),
        tx.clone(),
    ));
    inflight.tags.insert(handle.id(), req.tag);
    None
}

/// The end for an error reading the socket.
fn end_for(e: axum::Error) -> End {
    use tokio_tungstenite::tungstenite::Error as WsError;
    let inner = e.into_inner();
    match inner.downcast_ref::<WsError>() {
        Some(WsError::Capacity(_)) => End::Close(
            close_code::SIZE,
            "message too big (websocket.max_message_bytes)",
        ),
        Some(WsError::Protocol(_)) => End::Close(close_code::PROTOCOL, "protocol error"),
        Some(WsError::Utf8(_)) => End::Close(close_code::INVALID, "text message is not UTF-8"),
        _ => End::Gone,
    }
}
