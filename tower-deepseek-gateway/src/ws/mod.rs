//! `GET /v1/chat/completions/ws`: chat completions over a WebSocket (the guide's long
//! connection for real-time conversation). The protocol, for clients, is in the crate README
//! ("WebSocket"); in short:
//!
//! - **Auth before the upgrade.** The client key comes from `Authorization: Bearer <key>`
//!   (or `x-api-key`), or, for browsers, which cannot set headers, from the subprotocol list:
//!   `Sec-WebSocket-Protocol: deepseek-gateway, bearer.<key>`. The gateway selects (echoes)
//!   `deepseek-gateway` only, never the token. A missing or refused key is a plain HTTP 401 in
//!   the OpenAI error shape, and no upgrade; so is every other refusal (503 at the connection
//!   cap or while shutting down, 400/426 for a request that is not a valid upgrade). Each
//!   refusal is audited like the HTTP routes' own.
//! - **Requests.** Each text message is a chat-completion request body, with an optional `id`
//!   (string or number) that tags it; the `id` is removed before the request goes on. Each goes
//!   through the proxy handler inside the gateway's layers, exactly as `POST /v1/chat/completions`
//!   does: the key check (again, per request), the body limits, the whole stack (audit,
//!   redaction and restore, cache, limits, retries, breaker, timeouts), the metrics.
//! - **Answers.** `{"id":…,"chunk":{chat.completion.chunk}}` per event of a stream,
//!   `{"id":…,"completion":{chat.completion}}` for a request without `"stream": true`, and
//!   exactly one final message per request: `{"id":…,"done":true,"request_id":…}` or
//!   `{"id":…,"error":{"message","type","param","code"},"status"?,"retry_after"?,"request_id"?}`.
//!   The envelope keeps the chunk's own `id` (`chatcmpl-…`) as the upstream sent it.
//! - **Connection.** Several requests at once (`websocket.max_concurrent_requests`); pings
//!   every `ping_interval_ms` (a ping unanswered for a whole interval closes with 1001); idle
//!   close (1000) after `idle_timeout_ms` without a message and with nothing in flight; a
//!   binary message closes with 1003, a message over `max_message_bytes` with 1009, a failure
//!   of the gateway with 1011. Shutdown: new requests are refused (`shutting_down`), the
//!   answers in flight finish, then 1001; past the drain deadline they end with a
//!   `shutting_down` error and the socket closes with 1001.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, FromRequestParts, State};
use http::header::{AUTHORIZATION, HeaderName, SEC_WEBSOCKET_PROTOCOL};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_deepseek::core::meta::{ClientIp, PeerAddr};

use crate::config::WebSocketConfig;
use crate::{Shared, error, handler, inbound, telemetry};

mod answer;
pub(crate) mod config;
mod conn;
mod message;

/// The route.
pub(crate) const PATH: &str = "/v1/chat/completions/ws";

/// The subprotocol the gateway speaks, and selects when the client offers it.
pub(crate) const PROTOCOL: &str = "deepseek-gateway";

/// The prefix of the subprotocol that carries the client key (`bearer.<key>`).
pub(crate) const BEARER_PREFIX: &str = "bearer.";

/// The request headers that carry a client key.
const CREDENTIAL_HEADERS: [&str; 3] = ["authorization", "x-api-key", "api-key"];

/// The connections of a gateway, for its shutdown.
#[derive(Debug, Clone)]
pub(crate) struct Runtime {
    tracker: TaskTracker,
    /// Shutdown began: refuse new requests, close once the answers in flight are done.
    stop: CancellationToken,
    /// The drain deadline passed: cut what is left.
    abort: CancellationToken,
    stopped_at: Arc<OnceLock<Instant>>,
    permits: Arc<Semaphore>,
}

impl Runtime {
    pub(crate) fn new(max_connections: usize) -> Self {
        Self {
            tracker: TaskTracker::new(),
            stop: CancellationToken::new(),
            abort: CancellationToken::new(),
            stopped_at: Arc::default(),
            permits: Arc::new(Semaphore::new(max_connections)),
        }
    }

    /// Shutdown begins: every connection stops taking requests and closes (1001) once its
    /// answers are done.
    pub(crate) fn begin_shutdown(&self) {
        let _ = self.stopped_at.set(Instant::now());
        self.stop.cancel();
    }

    /// Waits for every connection to close, up to `drain` after shutdown began; then cuts
    /// the rest (their requests end with a `shutting_down` error, the sockets close with 1001).
    pub(crate) async fn drain(&self, drain: Duration) {
        self.begin_shutdown();
        self.tracker.close();
        let deadline = *self.stopped_at.get().expect("set above") + drain;
        if tokio::time::timeout_at(deadline, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(target: "tower_deepseek_gateway", open = self.tracker.len(), "drain deadline passed: closing the remaining websocket connections");
            self.abort.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(3), self.tracker.wait()).await;
        }
    }
}

/// The route's settings and connections.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) config: Arc<WebSocketConfig>,
    pub(crate) runtime: Runtime,
}

impl Settings {
    pub(crate) fn new(config: WebSocketConfig) -> Self {
        Self {
            runtime: Runtime::new(config.max_connections),
            config: Arc::new(config),
        }
    }
}

/// What the `Sec-WebSocket-Protocol` header offers.
#[derive(Debug, Default, PartialEq, Eq)]
struct Offered {
    ours: bool,
    key: Option<String>,
}

fn offered(headers: &HeaderMap) -> Offered {
    let mut o = Offered::default();
    let tokens = headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim);
    for t in tokens {
        if t == PROTOCOL {
            o.ours = true;
        } else if let Some(key) = t.strip_prefix(BEARER_PREFIX) {
            if !key.is_empty() && o.key.is_none() {
                o.key = Some(key.to_owned());
            }
        }
    }
    o
}

/// The credential headers of the upgrade request, or, with none, `Authorization: Bearer` from
/// the subprotocol's key.
fn credentials(headers: &HeaderMap, offered: &Offered) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in CREDENTIAL_HEADERS {
        if let Some(v) = headers.get(name) {
            out.insert(HeaderName::from_static(name), v.clone());
        }
    }
    if out.is_empty() {
        if let Some(key) = &offered.key {
            if let Ok(mut v) = HeaderValue::from_str(&format!("Bearer {key}")) {
                v.set_sensitive(true);
                out.insert(AUTHORIZATION, v);
            }
        }
    }
    out
}

fn upgrades(outcome: &'static str) {
    metrics::counter!(telemetry::WEBSOCKET_UPGRADES_TOTAL, "outcome" => outcome).increment(1);
}

/// A refusal before the upgrade, audited like the HTTP routes' own (with the key, if it came
/// as a subprotocol, moved to `Authorization` and the subprotocol header dropped).
async fn refuse(
    s: &Shared,
    mut req: Request<Body>,
    credentials: HeaderMap,
    res: Response<Body>,
    outcome: &'static str,
) -> Response<Body> {
    upgrades(outcome);
    req.headers_mut().remove(SEC_WEBSOCKET_PROTOCOL);
    req.headers_mut().extend(credentials);
    handler::refuse(s, req, res).await
}

/// `GET /v1/chat/completions/ws`.
pub(crate) async fn upgrade(
    State(s): State<Arc<Shared>>,
    mut req: Request<Body>,
) -> Response<Body> {
    let settings = &s.ws;
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    if let Some(peer) = peer {
        req.extensions_mut().insert(PeerAddr(peer));
    }
    // The request id and, from trusted proxies, the client's IP: each request on the
    // connection gets a request id of its own, and this client IP.
    s.meta.apply(&mut req);
    let client_ip = req.extensions().get::<ClientIp>().copied();
    let offered = offered(req.headers());
    let credentials = credentials(req.headers(), &offered);
    let mut tenant = None;
    let refusal = match s.live().keys.check(&credentials) {
        inbound::Verdict::Allowed(client) => {
            tenant = client.map(|c| c.tenant);
            None
        }
        inbound::Verdict::Missing => Some(
            "missing API key: send `Authorization: Bearer <your gateway key>`, or the subprotocols `deepseek-gateway, bearer.<your gateway key>`",
        ),
        inbound::Verdict::Unknown => {
            Some("invalid API key: this key is not allowed on this gateway")
        }
    };
    if let Some(message) = refusal {
        let res = error::json_error(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "invalid_api_key",
            message,
            None,
        );
        return refuse(&s, req, credentials, res, "unauthorized").await;
    }
    if offered.key.is_some() && !offered.ours {
        let res = error::json_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_subprotocol",
            "a `bearer.<key>` subprotocol needs `deepseek-gateway` beside it: the gateway selects that one (it never echoes the key)",
            None,
        );
        return refuse(&s, req, credentials, res, "invalid").await;
    }
    let (mut parts, body) = req.into_parts();
    let ws = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(ws) => ws,
        Err(rejection) => {
            let status = rejection.status();
            let res = error::json_error(
                status,
                "invalid_request_error",
                "websocket_upgrade_required",
                "this route takes a WebSocket upgrade over HTTP/1.1: GET with `Connection: Upgrade`, `Upgrade: websocket`, `Sec-WebSocket-Version: 13` and a `Sec-WebSocket-Key`",
                None,
            );
            return refuse(
                &s,
                Request::from_parts(parts, body),
                credentials,
                res,
                "invalid",
            )
            .await;
        }
    };
    if settings.runtime.stop.is_cancelled() {
        let res = error::json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "api_error",
            "shutting_down",
            "the gateway is shutting down; reconnect",
            Some(Duration::from_secs(1)),
        );
        return refuse(
            &s,
            Request::from_parts(parts, body),
            credentials,
            res,
            "refused",
        )
        .await;
    }
    let Ok(permit) = settings.runtime.permits.clone().try_acquire_owned() else {
        let res = error::json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "api_error",
            "too_many_connections",
            "the gateway is at its WebSocket connection limit (websocket.max_connections); retry shortly",
            Some(Duration::from_secs(1)),
        );
        return refuse(
            &s,
            Request::from_parts(parts, body),
            credentials,
            res,
            "refused",
        )
        .await;
    };
    upgrades("accepted");
    let cfg = settings.config.clone();
    let conn = conn::Conn {
        shared: s.clone(),
        credentials,
        tenant,
        peer,
        client_ip,
        config: cfg.clone(),
        runtime: settings.runtime.clone(),
        _permit: permit,
        _token: settings.runtime.tracker.token(),
    };
    let mut res = ws
        .max_message_size(cfg.max_message_bytes)
        .max_frame_size(cfg.max_message_bytes)
        .protocols([PROTOCOL])
        .on_failed_upgrade(|e| {
            tracing::debug!(target: "tower_deepseek_gateway", error = %e, "websocket upgrade failed");
        })
        .on_upgrade(move |socket| conn::run(socket, conn));
    if let Some(id) = parts
        .extensions
        .get::<tower_deepseek::core::meta::RequestId>()
    {
        res.headers_mut().insert(
            tower_deepseek::core::meta::X_REQUEST_ID.clone(),
            id.to_header_value(),
        );
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn the_subprotocol_list_gives_the_key_and_ours() {
        let h = headers(&[("sec-websocket-protocol", "deepseek-gateway, bearer.sk-abc")]);
        assert_eq!(
            offered(&h),
            Offered {
                ours: true,
                key: Some("sk-abc".to_owned())
            }
        );
        let h = headers(&[
            ("sec-websocket-protocol", "bearer.sk-1"),
            ("sec-websocket-protocol", "other,deepseek-gateway"),
        ]);
        let o = offered(&h);
        assert!(o.ours);
        assert_eq!(o.key.as_deref(), Some("sk-1"));
        assert_eq!(
            offered(&headers(&[("sec-websocket-protocol", "bearer.")])),
            Offered::default()
        );
    }

    #[test]
    fn the_headers_win_over_the_subprotocol() {
        let o = Offered {
            ours: true,
            key: Some("sk-sub".to_owned()),
        };
        let c = credentials(&headers(&[("x-api-key", "sk-head")]), &o);
        assert_eq!(c.len(), 1);
        assert_eq!(c["x-api-key"], "sk-head");
        let c = credentials(&HeaderMap::new(), &o);
        assert_eq!(c[AUTHORIZATION], "Bearer sk-sub");
        assert!(c[AUTHORIZATION].is_sensitive());
        assert!(credentials(&HeaderMap::new(), &Offered::default()).is_empty());
    }
}
