//! An OpenAI-compatible gateway in front of DeepSeek, built from tower-deepseek layers.
//!
//! The binary (`src/main.rs`) parses flags and calls this library; tests drive the same code
//! in-process. See the crate's README for the flags, the configuration file
//! ([`config::GatewayConfig`]) and the metrics.
//!
//! # Routes
//!
//! | route | |
//! |---|---|
//! | `POST /v1/chat/completions`, `POST /chat/completions` | proxied to `<upstream>/chat/completions` |
//! | `GET /v1/models`, `GET /models` | proxied to `<upstream>/models` |
//! | `POST /beta/completions` | proxied to `<upstream>/beta/completions` |
//! | `GET /v1/chat/completions/ws` | WebSocket: chat completions over one long connection (README, "WebSocket") |
//! | `GET /healthz` | `{"status":"ok"}` (liveness) |
//! | `GET /readyz` | 200 while at least one upstream is usable and the audit sink (when on) takes records, else 503; JSON: each upstream's state, weight, breaker state |
//! | `GET /metrics` | Prometheus text: every layer's `deepseek_*` metrics, the gateway's, the process's |
//! | `POST /v1/feedback` | a score for a call (with `[review]`; see [`review`]) |
//!
//! Proxied requests go through the recommended stack of the workspace's ARCHITECTURE.md, outermost
//! first: audit, redact, cache, rate limit (per tenant), retry, circuit breaker, auth
//! (API key or OAuth2), attempt timeouts, the pooled rustls client. Responses stream through
//! as they arrive; every error is answered as `{"error":{"message","type","code"}}`.
//!
//! # Upstreams
//!
//! Several upstreams (`--upstream` repeated, or `[[upstreams]]`) are served active-active:
//! each has its own connection pool, breaker, credential (`api_key_env` or
//! `[upstreams.oauth2]`), model-name map and optional active probe; calls are spread by weight,
//! a slow upstream's weight drops to 0, and a call that failed before its first byte reached the
//! caller moves to the next upstream (README, "Upstreams and health").
//!
//! # Inbound authentication
//!
//! Clients present `Authorization: Bearer <key>` (or `x-api-key`). The configuration lists the
//! SHA-256 of each allowed key, with an optional tenant name and limits of its own. The
//! client's key is never forwarded: the upstream credential replaces it. With no keys
//! configured, the gateway serves anyone, and refuses to listen on anything but a loopback
//! address.
//!
//! # Protocols and limits
//!
//! HTTP/1.1 and HTTP/2 (h2c with prior knowledge) on every route; the protocol toward the
//! upstream is the client pool's choice. Only an allow-list of request headers goes upstream
//! (content type, accept, cache directives, the request id, `x-ds-*`). The server bounds what a
//! client can hold (`[server]` in [`config::ServerConfig`]): header size (431), header-read,
//! body-read (408) and idle timeouts, and a connection cap beyond which `/healthz` still
//! answers and the rest gets a 503. An event stream that fails after its head was sent ends
//! with a final error event in the OpenAI shape and a clean end, never a reset.
//!
//! # Configuration and reload
//!
//! [`sources::load`] merges the TOML file, the `DEEPSEEK_GATEWAY_*` environment and the
//! command line into a [`GatewayConfig`], flag over environment over file, for every setting;
//! [`Gateway::check`] validates it without starting. [`Gateway::reloader`] (SIGHUP in the
//! binary, [`reload_on_sighup`]) swaps in new client keys, limits and upstream weights without dropping a
//! request in flight.
//!
//! # Shutdown
//!
//! The future given to [`Gateway::serve`] (in the binary: SIGTERM or Ctrl-C) stops accepting
//! connections; requests and streams in flight finish, up to `server.drain_timeout_ms`
//! (WebSocket connections refuse new requests, finish their answers and close with 1001); audit
//! records are flushed; then `serve` returns.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::Router;
use axum::routing::get;
use secrecy::SecretString;
use tokio::net::TcpListener;
use tower_deepseek::core::meta::MetadataConfig;
use tower_deepseek::redact::audit::{AuditHandle, AuditLayer};

mod concurrency;
pub mod config;
mod error;
mod handler;
pub mod inbound;
mod layers;
pub mod otel;
mod reload;
pub mod review;
mod server;
pub mod sources;
mod stack;
mod stream;
pub mod telemetry;
mod upstream;
mod ws;

pub use config::GatewayConfig;
pub use reload::{Reloader, reload_on_sighup};
pub use sources::{LoadError, Overrides};

/// Everything the gateway needs to start.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Options {
    /// The address to listen on (checked against the inbound-key rule).
    pub listen: SocketAddr,
    /// The upstream's base URL, when neither [`upstreams`](Self::upstreams) nor the
    /// configuration's `[[upstreams]]` name any.
    pub upstream: String,
    /// Upstream base URLs given on the command line (`--upstream`, repeated): each weight 1
    /// with the global credential. When not empty they replace the configuration's
    /// `[[upstreams]]` (a flag wins over the file).
    pub upstreams: Vec<String>,
    /// The configuration (see [`sources`] for the merge of file, environment and flags).
    pub config: GatewayConfig,
    /// Redis for the L2 cache and the shared OAuth2 token: when set, replaces
    /// `config.cache.redis_url`.
    pub redis: Option<String>,
    /// The audit log (JSON Lines): when set, replaces `config.audit.path`.
    pub audit_log: Option<PathBuf>,
    /// The upstream API key (`DEEPSEEK_API_KEY`).
    pub api_key: Option<SecretString>,
}

impl Options {
    /// Defaults of the binary: `127.0.0.1:8080`, `https://api.deepseek.com`, default config.
    pub fn new() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            upstream: "https://api.deepseek.com".to_owned(),
            upstreams: Vec::new(),
            config: GatewayConfig::default(),
            redis: None,
            audit_log: None,
            api_key: None,
        }
    }

    /// The options of a merged configuration ([`sources::load`]): its `server.listen`, its
    /// `[[upstreams]]`, no upstream key.
    pub fn from_config(config: GatewayConfig) -> Self {
        Self {
            listen: config.server.listen,
            config,
            ..Self::new()
        }
    }

    /// Sets the listen address.
    #[must_use]
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Sets the upstream base URL.
    #[must_use]
    pub fn upstream(mut self, url: impl Into<String>) -> Self {
        self.upstream = url.into();
        self
    }

    /// Adds an upstream base URL (as `--upstream` repeated; see [`upstreams`](Self::upstreams)).
    #[must_use]
    pub fn add_upstream(mut self, url: impl Into<String>) -> Self {
        self.upstreams.push(url.into());
        self
    }

    /// Sets the configuration.
    #[must_use]
    pub fn config(mut self, config: GatewayConfig) -> Self {
        self.config = config;
        self
    }

    /// Sets the Redis URL.
    #[must_use]
    pub fn redis(mut self, url: impl Into<String>) -> Self {
        self.redis = Some(url.into());
        self
    }

    /// Sets the audit log path.
    #[must_use]
    pub fn audit_log(mut self, path: impl Into<PathBuf>) -> Self {
        self.audit_log = Some(path.into());
        self
    }

    /// Sets the upstream API key.
    #[must_use]
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(SecretString::from(key.into()));
        self
    }
}

impl Default for Options {
    fn default() -> Self {
        Self::new()
    }
}

/// Why the gateway did not start.
#[derive(Debug)]
#[non_exhaustive]
pub enum StartError {
    /// No client keys are configured and the address is not a loopback address.
    OpenNonLoopback {
        /// The address asked for.
        addr: SocketAddr,
    },
    /// A `[[keys]]` entry is invalid.
    Keys(String),
    /// The upstream URL is invalid.
    Upstream(String),
    /// A layer's configuration is invalid.
    Layer {
        /// The layer (`retry`, `cache`, ...).
        layer: &'static str,
        /// What is wrong.
        message: String,
    },
    /// Another setting is invalid.
    Config(String),
    /// Listening failed.
    Io(io::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::OpenNonLoopback { addr } => write!(
                f,
                "refusing to listen on {addr} without client keys: anyone who can reach it could spend the upstream credential. \
                 Add [[keys]] to the config file (SHA-256 of each client key), or listen on a loopback address such as 127.0.0.1"
            ),
            StartError::Keys(m) => write!(f, "invalid client keys: {m}"),
            StartError::Upstream(m) => write!(f, "invalid upstream URL: {m}"),
            StartError::Layer { layer, message } => {
                write!(f, "invalid [{layer}] configuration: {message}")
            }
            StartError::Config(m) => write!(f, "invalid configuration: {m}"),
            StartError::Io(e) => write!(f, "cannot listen: {e}"),
        }
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StartError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for StartError {
    fn from(e: io::Error) -> Self {
        StartError::Io(e)
    }
}

/// The endpoints proxied upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Chat,
    Models,
    Fim,
}

impl Route {
    /// The upstream path, relative to the base URL; also the metric label.
    fn path(self) -> &'static str {
        match self {
            Route::Chat => "/chat/completions",
            Route::Models => "/models",
            Route::Fim => "/beta/completions",
        }
    }
}

/// What a reload replaces, as one snapshot: a request sees the keys and the limits of the
/// same configuration.
struct Live {
    keys: inbound::Keys,
    service: stack::Svc,
}

struct Shared {
    live: ArcSwap<Live>,
    meta: MetadataConfig,
    max_header_bytes: usize,
    max_body_bytes: usize,
    body_read_timeout: Duration,
    audit_layer: Option<AuditLayer>,
    ws: ws::Settings,
    otel: Option<Arc<otel::Tracing>>,
    /// Every upstream's health, for `/readyz` and the metrics.
    upstreams: Arc<upstream::Upstreams>,
}

impl Shared {
    /// The running keys and stack (the ones of the last successful reload).
    fn live(&self) -> Arc<Live> {
        self.live.load_full()
    }
}

/// A configured gateway, ready to [`serve`](Gateway::serve).
pub struct Gateway {
    router: Router,
    audit: Option<AuditHandle>,
    review: Option<tower_deepseek::redact::review::ReviewHandle>,
    drain: Duration,
    limits: server::Limits,
    open: bool,
    allow_open_non_loopback: bool,
    wired: Vec<&'static str>,
    reloader: Reloader,
    ws: ws::Runtime,
    otel: Option<Arc<otel::Tracing>>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("layers", &self.wired)
            .field("open", &self.open)
            .field("drain", &self.drain)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// Checks the options and builds the stack. Must run inside a tokio runtime.
    ///
    /// # Errors
    ///
    /// [`StartError`]: no keys on a non-loopback address, an invalid key hash, upstream URL or
    /// layer configuration.
    pub fn new(options: Options) -> Result<Self, StartError> {
        Self::build(options, stack::AuditSink::File)
    }

    /// Checks `options` as [`new`](Self::new) does (every layer's builder, the keys, the
    /// upstream URL, the server bounds) without opening the audit log or listening; returns
    /// the layers that would be wired, outermost first. Must run inside a tokio runtime.
    ///
    /// # Errors
    ///
    /// The [`StartError`] that [`new`](Self::new) would return (short of the audit log's file
    /// itself: only its directory is checked).
    pub fn check(options: Options) -> Result<Vec<&'static str>, StartError> {
        let gw = Self::build(options, stack::AuditSink::DryRun)?;
        Ok(gw.wired)
    }

    fn build(options: Options, sink: stack::AuditSink) -> Result<Self, StartError> {
        let Options {
            listen,
            upstream,
            upstreams,
            config: mut cfg,
            redis,
            audit_log,
            api_key,
        } = options;
        let (upstreams, pooled) = upstream::pool::resolve(upstream, upstreams, &cfg);
        if let Some(url) = redis {
            cfg.cache.redis_url = Some(url);
        }
        if let Some(path) = audit_log {
            cfg.audit.path = Some(path);
        }
        if let (true, Some(path)) = (cfg.layers.audit, &cfg.audit.path) {
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
            if dir.is_some_and(|d| !d.is_dir()) {
                return Err(StartError::Layer {
                    layer: "audit",
                    message: format!("path: the directory of {} does not exist", path.display()),
                });
            }
        }
        let keys = inbound::Keys::new(&cfg.keys).map_err(|e| StartError::Keys(e.to_string()))?;
        let open = keys.is_empty();
        if open && !listen.ip().is_loopback() && !cfg.server.allow_open_non_loopback {
            return Err(StartError::OpenNonLoopback { addr: listen });
        }
        let srv = &cfg.server;
        if srv.max_connections == 0
            || srv.header_read_timeout_ms == 0
            || srv.body_read_timeout_ms == 0
            || srv.idle_timeout_ms == 0
            || srv.max_header_bytes < 1024
        {
            return Err(StartError::Config(
                "[server]: max_connections and the timeouts must be above 0, max_header_bytes at least 1024".to_owned(),
            ));
        }
        cfg.websocket.validate().map_err(|e| StartError::Layer {
            layer: "websocket",
            message: format!("`{}` {}", e.field(), e.reason()),
        })?;
        let mut meta = MetadataConfig::new();
        for net in &cfg.server.trusted_proxies {
            let net = net.parse().map_err(|_| {
                StartError::Config(format!("trusted_proxies: {net:?} is not a CIDR"))
            })?;
            meta = meta.trust_proxy(net);
        }
        let credential = match (&cfg.oauth2, api_key) {
            (Some(o), _) => {
                o.validate().map_err(|e| StartError::Layer {
                    layer: "oauth2",
                    message: e.to_string(),
                })?;
                stack::Credential::OAuth2
            }
            (None, Some(key)) => stack::Credential::ApiKey(key),
            (None, None) => {
                tracing::warn!(target: "tower_deepseek_gateway", "no upstream credential (DEEPSEEK_API_KEY or [oauth2]): requests go upstream without one");
                stack::Credential::None
            }
        };
        let otel = match &cfg.otel {
            Some(c) => Some(Arc::new(otel::Tracing::new(c).map_err(|message| {
                StartError::Layer {
                    layer: "otel",
                    message,
                }
            })?)),
            None => None,
        };
        // The recorder must exist before the layers register their metrics.
        telemetry::handle();
        let built = stack::build(&cfg, &upstreams, pooled, &credential, sink)?;
        if open {
            tracing::warn!(target: "tower_deepseek_gateway", "no client keys configured: serving any client, on a loopback address only");
        }
        let upstreams = Arc::new(built.upstreams);
        if sink == stack::AuditSink::File {
            for probe in built.probes {
                upstream::probe::spawn(probe, Arc::downgrade(&upstreams));
            }
        }
        let shared = Arc::new(Shared {
            live: ArcSwap::from_pointee(Live {
                keys,
                service: built.service,
            }),
            meta,
            max_header_bytes: cfg.server.max_header_bytes,
            max_body_bytes: cfg.server.max_body_bytes,
            body_read_timeout: Duration::from_millis(cfg.server.body_read_timeout_ms),
            audit_layer: built.audit_layer,
            ws: ws::Settings::new(cfg.websocket.clone()),
            otel: otel.clone(),
            upstreams,
        });
        let ws_runtime = shared.ws.runtime.clone();
        let mut router = Router::new();
        if cfg.websocket.enabled {
            router = router.route(ws::PATH, get(ws::upgrade));
        }
        let router = router
            .route(
                "/v1/chat/completions",
                layers::proxied(&shared, Route::Chat),
            )
            .route("/chat/completions", layers::proxied(&shared, Route::Chat))
            .route("/v1/models", layers::proxied(&shared, Route::Models))
            .route("/models", layers::proxied(&shared, Route::Models))
            .route("/beta/completions", layers::proxied(&shared, Route::Fim))
            .route("/healthz", get(healthz))
            .route("/readyz", get(upstream::health::readyz))
            .route("/metrics", get(upstream::health::metrics_page))
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .with_state(shared.clone());
        let router = review::routes(router, &shared, built.review.as_ref());
        let reloader = Reloader::new(
            shared,
            built.fixed,
            listen,
            cfg.server.allow_open_non_loopback,
        );
        Ok(Self {
            router,
            audit: built.audit,
            review: built.review,
            drain: Duration::from_millis(cfg.server.drain_timeout_ms),
            limits: server::Limits {
                header_read_timeout: Duration::from_millis(cfg.server.header_read_timeout_ms),
                max_connections: cfg.server.max_connections,
                max_header_bytes: cfg.server.max_header_bytes,
                idle_timeout: Duration::from_millis(cfg.server.idle_timeout_ms),
            },
            open,
            allow_open_non_loopback: cfg.server.allow_open_non_loopback,
            wired: built.wired,
            reloader,
            ws: ws_runtime,
            otel,
        })
    }

    /// The handle that reloads the client keys, the limits and the upstream weights of a running gateway (the
    /// binary calls it on SIGHUP). Cheap to clone.
    pub fn reloader(&self) -> Reloader {
        self.reloader.clone()
    }

    /// The layers wired, outermost first (`audit`, `redact`, `cache_l1`, ..., `client`).
    pub fn layers(&self) -> &[&'static str] {
        &self.wired
    }

    /// The axum router (to embed the gateway in another server; peer addresses come from
    /// `ConnectInfo<SocketAddr>`).
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// Serves on `listener` until `shutdown` completes, then drains (see the crate docs).
    ///
    /// # Errors
    ///
    /// [`StartError::OpenNonLoopback`] if the listener is not on a loopback address and no
    /// keys are configured; [`StartError::Io`] if serving fails.
    pub async fn serve<F>(self, listener: TcpListener, shutdown: F) -> Result<(), StartError>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let addr = listener.local_addr()?;
        if self.open && !addr.ip().is_loopback() && !self.allow_open_non_loopback {
            return Err(StartError::OpenNonLoopback { addr });
        }
        // Beyond the connection cap: the health check still answers, the rest is refused.
        let refusal = Router::new()
            .route("/healthz", get(healthz))
            .fallback(too_many_connections);
        // WebSocket connections leave the HTTP server once upgraded: they drain on their own.
        let ws = self.ws.clone();
        let shutdown = async move {
            shutdown.await;
            ws.begin_shutdown();
        };
        let result = server::run(
            listener,
            self.router.clone(),
            refusal,
            self.limits,
            shutdown,
            self.drain,
        )
        .await;
        self.ws.drain(self.drain).await;
        if let Some(audit) = &self.audit {
            if let Err(e) = audit.shutdown() {
                tracing::error!(target: "tower_deepseek_gateway", error = %e, "flushing the audit log failed");
            }
        }
        if let Some(review) = &self.review {
            if let Err(e) = review.flush().await {
                tracing::error!(target: "tower_deepseek_gateway", error = %e, "flushing the review file failed");
            }
        }
        // The spans of the calls just drained go out before `serve` returns.
        if let Some(otel) = &self.otel {
            otel.shutdown().await;
        }
        tracing::info!(target: "tower_deepseek_gateway", "stopped");
        result.map_err(StartError::Io)
    }
}

/// Builds the gateway from `options` and serves on `listener` until `shutdown`.
///
/// # Errors
///
/// See [`Gateway::new`] and [`Gateway::serve`].
pub async fn run<F>(options: Options, listener: TcpListener, shutdown: F) -> Result<(), StartError>
where
    F: Future<Output = ()> + Send + 'static,
{
    Gateway::new(options)?.serve(listener, shutdown).await
}

/// Completes on SIGTERM or Ctrl-C (SIGINT).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

use handler::*;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_gateway_refuses_a_public_address() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let err =
                Gateway::new(Options::new().listen("0.0.0.0:8080".parse().unwrap())).unwrap_err();
            assert!(matches!(err, StartError::OpenNonLoopback { .. }));
            assert!(err.to_string().contains("without client keys"));
            let gw = Gateway::new(Options::new().listen("[::1]:0".parse().unwrap())).unwrap();
            assert!(gw.layers().contains(&"cache_l1"));
        });
    }
}
