//! The HTTP server: hyper-util's automatic HTTP/1.1 and HTTP/2 (h2c prior knowledge)
//! connection builder, with the waits bounded and the connections capped.
//!
//! - **Header size.** hyper's own limits lie at twice `server.max_header_bytes` (HTTP/1.1 read
//!   buffer, HTTP/2 `SETTINGS_MAX_HEADER_LIST_SIZE`), so that the gateway itself answers the
//!   431 in the OpenAI shape for headers between the two; above, hyper answers 431 (HTTP/1.1)
//!   or the HTTP/2 layer refuses the stream.
//! - **Header read and idle keep-alive (HTTP/1.1).** A new connection must send its first
//!   bytes (enough to tell HTTP/1.1 from the HTTP/2 preface) within
//!   `server.header_read_timeout_ms`, and a request head must arrive whole within it, from the
//!   connection's start or from the end of the previous response on a kept-alive connection:
//!   a slowloris peer, a socket that never sends a byte, or an idle keep-alive connection is
//!   closed.
//! - **Idle connections.** A connection with no request in flight for
//!   `server.idle_timeout_ms` is closed gracefully (HTTP/2: `GOAWAY`; an idle HTTP/1.1
//!   connection meets the header-read timeout first). HTTP/2 peers are also pinged every 20 s
//!   and dropped when a ping goes 20 s unanswered.
//! - **Connection cap.** At most `server.max_connections` connections are served. Beyond it,
//!   up to 64 more are answered by a small service (`/healthz` still answers; everything else
//!   gets `503 {"error":{"code":"too_many_connections",...}}` with `Retry-After: 1`, and the
//!   connection closes); connections beyond those are closed at once.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use bytes::Bytes;
use http::Request;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use pin_project_lite::pin_project;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tower::ServiceExt;

/// Counter: connections beyond `server.max_connections` (answered by the refusal service, or
/// closed at once).
pub(crate) const CONNECTIONS_REFUSED: &str = "deepseek_gateway_connections_refused_total";

/// Connections answered beyond the cap by the refusal service.
const OVERFLOW_CONNECTIONS: usize = 64;

/// How long a connection beyond the cap may stay open.
const OVERFLOW_LIFETIME: Duration = Duration::from_secs(5);

/// HTTP/2 ping interval and timeout.
const H2_PING: Duration = Duration::from_secs(20);

/// The server's bounds (from `[server]`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) header_read_timeout: Duration,
    pub(crate) max_connections: usize,
    pub(crate) max_header_bytes: usize,
    pub(crate) idle_timeout: Duration,
}

fn builder(limits: &Limits, keep_alive: bool) -> Builder<TokioExecutor> {
    let hard = limits.max_header_bytes.saturating_mul(2).max(16 * 1024);
    let mut b = Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(keep_alive)
        .max_buf_size(hard.max(8192));
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(hard).unwrap_or(u32::MAX))
        .keep_alive_interval(H2_PING)
        .keep_alive_timeout(H2_PING);
    b
}

/// Waits until `stream` has sent enough to choose the protocol: a byte that is not the start of
/// the HTTP/2 preface, or the whole preface. `false` when the peer closed first. (hyper-util's
/// automatic builder waits for these bytes without a bound of its own.)
async fn protocol_chosen(stream: &TcpStream) -> bool {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut buf = [0u8; 24];
    loop {
        match stream.peek(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) if n >= PREFACE.len() || buf[..n] != PREFACE[..n] => return true,
            // Part of the preface: wait for the rest (peek returns at once while bytes wait).
            Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

/// How busy one connection is: requests in flight, and when the last one ended.
#[derive(Debug)]
struct Activity {
    started: Instant,
    in_flight: AtomicUsize,
    // Milliseconds since `started` at which the last answer ended (or the connection began).
    last_end_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_end_ms: AtomicU64::new(0),
        }
    }

    /// When the connection became idle; `None` while a request is in flight.
    fn idle_since(&self) -> Option<Instant> {
        (self.in_flight.load(Ordering::Acquire) == 0)
            .then(|| self.started + Duration::from_millis(self.last_end_ms.load(Ordering::Acquire)))
    }

    /// Completes once the connection has been idle for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            match self.idle_since() {
                Some(at) if at + idle <= Instant::now() => return,
                Some(at) => tokio::time::sleep_until(at + idle).await,
                None => tokio::time::sleep(idle).await,
            }
        }
    }
}

/// One request in flight on a connection; its answer's body carries it to its end.
#[derive(Debug)]
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: &Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        Self(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        let now = a.started.elapsed().as_millis() as u64;
        a.last_end_ms.fetch_max(now, Ordering::AcqRel);
        a.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

pin_project! {
    /// An answer's body that marks the end of its request when it is done or dropped.
    struct Tracked {
        #[pin]
        inner: Body,
        _in_flight: InFlight,
    }
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Serves a connection within the cap: waits (bounded) for its first bytes, then serves it
/// until it ends, it stays idle for `limits.idle_timeout` (HTTP/2 above all: HTTP/1.1 is cut
/// by the header-read timeout first), or the server stops; both of the latter close it
/// gracefully (HTTP/2: `GOAWAY`), letting requests in flight finish.
async fn serve_full(
    builder: &Builder<TokioExecutor>,
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: Limits,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    match tokio::time::timeout(limits.header_read_timeout, protocol_chosen(&stream)).await {
        Ok(true) => {}
        _ => return,
    }
    let activity = Arc::new(Activity::new());
    let seen = activity.clone();
    let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        let in_flight = InFlight::start(&seen);
        req.extensions_mut().insert(ConnectInfo(peer));
        let call = router.clone().oneshot(req);
        async move {
            let res = call.await?;
            Ok::<_, Infallible>(res.map(|inner| Tracked {
                inner,
                _in_flight: in_flight,
            }))
        }
    });
    // With upgrades: the WebSocket route takes the connection over after its 101.
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(target: "tower_deepseek_gateway", error = %e, "connection ended with an error");
                }
                return;
            }
            changed = stop.changed(), if !closing => {
                // The sender is gone or says stop: either way, wind down.
                let _ = changed;
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            () = activity.idle_for(limits.idle_timeout), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Serves one connection with `router`, giving it the peer address as axum's `ConnectInfo`.
fn serve_with(
    builder: &Builder<TokioExecutor>,
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
) -> impl Future<Output = ()> + Send + '_ {
    let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        router.clone().oneshot(req)
    });
    let conn = builder.serve_connection(TokioIo::new(stream), svc);
    async move {
        if let Err(e) = conn.await {
            tracing::debug!(target: "tower_deepseek_gateway", error = %e, "connection ended with an error");
        }
    }
}

/// Accepts on `listener` until `shutdown`, then lets the connections finish within `drain`.
pub(crate) async fn run<F>(
    listener: TcpListener,
    router: Router,
    refusal: Router,
    limits: Limits,
    shutdown: F,
    drain: Duration,
) -> io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let full = Arc::new(builder(&limits, true));
    let over = Arc::new(builder(&limits, false));
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let overflow = Arc::new(Semaphore::new(OVERFLOW_CONNECTIONS));
    // Tells every connection to finish what it is doing and close.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly, keep serving the
                    // connections already open.
                    tracing::warn!(target: "tower_deepseek_gateway", error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        if let Ok(permit) = permits.clone().try_acquire_owned() {
            let builder = full.clone();
            let router = router.clone();
            let stop = stop_rx.clone();
            tokio::spawn(async move {
                serve_full(&builder, stream, peer, router, limits, stop).await;
                drop(permit);
            });
        } else if let Ok(permit) = overflow.clone().try_acquire_owned() {
            metrics::counter!(CONNECTIONS_REFUSED).increment(1);
            let builder = over.clone();
            let refusal = refusal.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(OVERFLOW_LIFETIME, async {
                    if protocol_chosen(&stream).await {
                        serve_with(&builder, stream, peer, refusal).await;
                    }
                })
                .await;
                drop(permit);
            });
        } else {
            metrics::counter!(CONNECTIONS_REFUSED).increment(1);
            drop(stream);
        }
    }
    drop(listener);
    tracing::info!(target: "tower_deepseek_gateway", "shutting down: no new connections, draining requests in flight");
    let _ = stop_tx.send(true);
    // Every place back: every connection has ended.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    tokio::select! {
        _ = permits.acquire_many(all) => {}
        () = tokio::time::sleep(drain) => {
            tracing::warn!(target: "tower_deepseek_gateway", drain_ms = drain.as_millis() as u64, "drain deadline passed: closing the remaining connections");
        }
    }
    Ok(())
}
