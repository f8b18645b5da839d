//! OAuth2 client credentials: fetch a token, share it, refresh it ahead of expiry, replay a
//! request once after a 401.
//!
//! [`OAuth2Layer`] follows the integration guide: it `POST`s `grant_type=client_credentials`
//! (plus optional `scope` and `audience`) to the token URL with HTTP Basic
//! `client_id:client_secret`, keeps the token for `expires_in` (2 hours when the answer has
//! none), refreshes it 10 minutes early, and can share it across a fleet through a
//! [`TokenStore`].
//!
//! # Example
//!
//! ```no_run
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use tower_deepseek_auth::oauth2::{OAuth2Config, OAuth2Layer, ReplayBody};
//! use tower_deepseek_core::body::BufferedBody;
//!
//! # #[tokio::main] async fn main() -> Result<(), tower_deepseek_core::BoxError> {
//! // The token endpoint gets its own client (its own timeouts and TLS settings).
//! let token_client = Client::builder(TokioExecutor::new()).build_http::<BufferedBody>();
//! let config = OAuth2Config::new(
//!     "http://auth.internal/oauth2/token",
//!     "my-client",
//!     std::env::var("OAUTH_CLIENT_SECRET")?,
//! );
//! let layer = OAuth2Layer::new(config, token_client)?;
//!
//! let api_client = Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Full<Bytes>>>();
//! let mut svc = ServiceBuilder::new().layer(layer).service(api_client);
//! let request = Request::post("http://llm.internal/chat/completions")
//!     .body(Full::new(Bytes::from_static(b"{\"model\":\"deepseek-chat\",\"messages\":[]}")))?;
//! let response = svc.ready().await?.call(request).await?;
//! # let _ = response; Ok(()) }
//! ```
//!
//! The same with in-process services, runnable (a token endpoint made with `service_fn`):
//!
//! ```
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//! use tower_deepseek_auth::oauth2::{OAuth2Config, OAuth2Layer, ReplayBody};
//! use tower_deepseek_core::body::BufferedBody;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_deepseek_core::BoxError> {
//! let token_endpoint = service_fn(|req: Request<BufferedBody>| async move {
//!     assert_eq!(req.body().bytes().as_ref(), b"grant_type=client_credentials");
//!     let answer = r#"{"access_token":"at-1","token_type":"Bearer","expires_in":7200}"#;
//!     Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(answer.as_bytes()))))
//! });
//! let config = OAuth2Config::new("https://auth.example/oauth2/token", "client", "secret");
//! let mut svc = ServiceBuilder::new()
//!     .layer(OAuth2Layer::new(config, token_endpoint)?)
//!     .service_fn(|req: Request<ReplayBody<Full<Bytes>>>| async move {
//!         assert_eq!(req.headers()["authorization"], "Bearer at-1");
//!         Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
//!     });
//! let response = svc.ready().await?.call(Request::new(Full::new(Bytes::new()))).await?;
//! assert_eq!(response.status(), 200);
//! # Ok(()) }
//! ```
//!
//! # How a request gets its token
//!
//! - **Fresh token (the hot path):** one atomic pointer load (`arc-swap`), one atomic load of
//!   the token's phase and a header clone. No lock, no clock read, no await before the inner
//!   call.
//! - **Refresh ahead:** each installed token has a timer task on the runtime that installed it.
//!   At `expires_in − margin − jitter` it starts one background refresh (an atomic flag makes
//!   it one), with or without traffic, so that the first request after a quiet spell does not
//!   wait for a fetch; at the token's expiry it marks it expired. The current token keeps
//!   serving until the new one is installed. A failed refresh is logged and tried again later
//!   (at most every 30 s); the token serves until it expires. Tokens living shorter than twice
//!   the margin are refreshed at half their life. A token whose timer cannot run (installed
//!   outside a runtime, or its runtime shut down) falls back to a clock read per request, and
//!   the first request past the refresh time starts the refresh.
//! - **No usable token** (cold start, expired): single flight. Exactly one fetch runs; every
//!   other request waits for it (a `tokio::sync::Mutex` taken only on this path). When that
//!   fetch fails, the requests that waited for it get its error instead of queueing behind a
//!   new full deadline each.
//! - **401 from the upstream:** the token is invalidated if it is still the one the request
//!   used (a generation number; a token refreshed meanwhile is kept), a new one is obtained
//!   (single flight again), the first 401's body is drained, and the request is sent once more.
//!   A second 401 goes back to the caller. If no token can be obtained, the first 401 goes back.
//! - **401 under a retry layer:** the retry layer above already keeps every attempt's request
//!   to send it again, and offers that replay
//!   ([`ReplayOn401::Offered`](tower_deepseek_core::meta::ReplayOn401) in the request's
//!   extensions). This layer then keeps no copy (no body buffering, no head clone: the fresh
//!   token path costs what it costs with `replay_on_401(false)`). After a 401 it invalidates
//!   the token, obtains a new one and returns the 401 marked
//!   [`CredentialRefreshed`](tower_deepseek_core::meta::CredentialRefreshed); the retry layer
//!   sends the request again at once, marked
//!   [`ReplayOn401::Replaying`](tower_deepseek_core::meta::ReplayOn401), and a 401 to that is
//!   final. One refresh and one replay per call, as on its own.
//!
//! # Request bodies
//!
//! To replay after a 401, the body is buffered with
//! [`tower_deepseek_core::body::buffer`] up to a limit (default 8 MiB); the inner service
//! receives a [`ReplayBody`]. A body over the limit is still sent, streamed once; a 401 to it
//! invalidates the token and goes back to the caller. The caller's body type must be `Unpin`
//! (hyper's `Incoming`, `Full`, axum's `Body`, boxed bodies all are).
//!
//! # Token endpoint failures
//!
//! Every failure is a [`TokenFetchFailed`](crate::error::TokenFetchFailed) (boxed into a
//! [`BoxError`]; downcast it) with a [`kind`](crate::error::TokenFetchErrorKind).
//! `invalid_client`, `invalid_grant`, `unauthorized_client`, `invalid_scope` and other 4xx
//! are not retried; 5xx, 429, timeouts and connection errors are retried with full-jitter
//! exponential backoff until the [deadline](OAuth2Config::deadline) (default 10 s, each attempt
//! bounded by 5 s). Nothing waits without a bound. No error and no log line carries the client
//! secret or a token; the token endpoint's `error_description` is never logged (servers may
//! echo input in it).
//!
//! # Observability
//!
//! Tracing target `tower_deepseek_auth`. Metrics:
//! `deepseek_auth_token_fetches_total{outcome}` (one per fetch, `success` or the error kind),
//! `deepseek_auth_token_refreshes_total{trigger}` (`ahead`: refresh-ahead; `missing`: no
//! usable token, cold start included; `unauthorized`: after a 401),
//! `deepseek_auth_401_replays_total`, `deepseek_auth_token_store_errors_total{op}`.
//!
//! # Order
//!
//! Put it below retry and the circuit breaker, right above the HTTP client: every attempt then
//! gets the current token, and the retry layer makes the replay after a 401 (see above). Any
//! other retry layer above should not retry 401s itself (the shared classifier does not); the
//! layer then replays on its own. Audit or trace layers above it never see the token.
//!
//! # Clone
//!
//! The layer owns the token state in an `Arc`: every service it makes, and every clone of
//! them, shares one token and one fetch. Build one layer per credential.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use http_body::Body;
use http_body_util::BodyExt;
use tower_deepseek_core::BoxError;
use tower_deepseek_core::body::BufferedBody;
use tower_layer::Layer;
use tower_service::Service;

mod config;
mod fetch;
pub mod future;
mod state;

pub use self::config::{
    DEFAULT_ATTEMPT_TIMEOUT, DEFAULT_DEADLINE, DEFAULT_LIFETIME, DEFAULT_REFRESH_JITTER,
    DEFAULT_REFRESH_MARGIN, DEFAULT_STORE_WAIT, OAuth2Config,
};
use self::fetch::TokenRequest;
use self::future::ResponseFuture;
use self::state::{Shared, Tuning};
use crate::error::ConfigError;
use crate::store::{MemoryTokenStore, TokenStore};
pub use tower_deepseek_core::body::ReplayBody;

/// The most of a 401 body read (then dropped) before a replay, and for how long.
const DRAIN_LIMIT: usize = 64 * 1024;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// Adds an OAuth2 client-credentials bearer token to every request. See the
/// [module docs](crate::oauth2).
///
/// `T` is the service that talks to the token endpoint: any
/// `Service<Request<BufferedBody>, Response = Response<impl Body>>`, e.g. a hyper-util client
/// with its own timeouts and TLS.
pub struct OAuth2Layer<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for OAuth2Layer<T> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<T> fmt::Debug for OAuth2Layer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuth2Layer")
            .field("state", &self.shared)
            .finish()
    }
}

/// Builds an [`OAuth2Layer`] with a [`TokenStore`].
#[must_use]
pub struct OAuth2LayerBuilder<T> {
    config: OAuth2Config,
    token_service: T,
    store: Option<Arc<dyn TokenStore>>,
}

impl<T> fmt::Debug for OAuth2LayerBuilder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuth2LayerBuilder")
            .field("config", &self.config)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl<T, RB> OAuth2LayerBuilder<T>
where
    T: Service<Request<BufferedBody>, Response = Response<RB>> + Clone + Send + Sync + 'static,
    T::Error: Into<BoxError>,
    T::Future: Send,
    RB: Body + Send + 'static,
    RB::Data: Send,
    RB::Error: Into<BoxError>,
{
    /// Shares tokens through `store` (default: a [`MemoryTokenStore`] of this layer alone).
    pub fn store(mut self, store: impl TokenStore) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// Shares tokens through an already shared `store`.
    pub fn shared_store(mut self, store: Arc<dyn TokenStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Validates the configuration and builds the layer. No I/O happens here: the first token
    /// is fetched by the first request.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first invalid setting.
    pub fn build(self) -> Result<OAuth2Layer<T>, ConfigError> {
        let uri = self.config.token_uri()?;
        let request = TokenRequest::new(&self.config, uri);
        let store = self
            .store
            .unwrap_or_else(|| Arc::new(MemoryTokenStore::new()));
        let tuning = Tuning {
            margin: self.config.margin(),
            jitter: self.config.jitter(),
            store_wait: self.config.wait(),
            deadline: self.config.deadline_ref(),
            body_limit: self.config.limit(),
            replay: self.config.replay(),
        };
        let store_key = self.config.effective_store_key();
        let token_service = self.token_service;
        let shared = Arc::new_cyclic(|me| {
            Shared::new(me.clone(), request, token_service, store, store_key, tuning)
        });
        Ok(OAuth2Layer { shared })
    }
}

impl<T, RB> OAuth2Layer<T>
where
    T: Service<Request<BufferedBody>, Response = Response<RB>> + Clone + Send + Sync + 'static,
    T::Error: Into<BoxError>,
    T::Future: Send,
    RB: Body + Send + 'static,
    RB::Data: Send,
    RB::Error: Into<BoxError>,
{
    /// A layer fetching tokens per `config` through `token_service`, kept in memory.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first invalid setting.
    pub fn new(config: OAuth2Config, token_service: T) -> Result<Self, ConfigError> {
        Self::builder(config, token_service).build()
    }

    /// A builder, to add a [`TokenStore`].
    pub fn builder(config: OAuth2Config, token_service: T) -> OAuth2LayerBuilder<T> {
        OAuth2LayerBuilder {
            config,
            token_service,
            store: None,
        }
    }

    /// Obtains a token now if none is usable (e.g. at start-up, to fail fast on bad
    /// credentials). Requests do this by themselves otherwise.
    ///
    /// # Errors
    ///
    /// [`TokenFetchFailed`](crate::error::TokenFetchFailed) when no token can be obtained.
    pub async fn warm_up(&self) -> Result<(), crate::error::TokenFetchFailed> {
        if self.shared.fresh().is_some() {
            return Ok(());
        }
        self.shared.obtain(None).await.map(drop)
    }
}

impl<S, T> Layer<S> for OAuth2Layer<T> {
    type Service = OAuth2<S, T>;

    fn layer(&self, inner: S) -> OAuth2<S, T> {
        OAuth2 {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// The service made by [`OAuth2Layer`]. See the [module docs](crate::oauth2).
pub struct OAuth2<S, T> {
    inner: S,
    shared: Arc<Shared<T>>,
}

impl<S: Clone, T> Clone for OAuth2<S, T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: fmt::Debug, T> fmt::Debug for OAuth2<S, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuth2")
            .field("inner", &self.inner)
            .field("state", &self.shared)
            .finish()
    }
}

impl<S, T> OAuth2<S, T> {
    /// Wraps `inner` with the token state of `layer`.
    pub fn new(inner: S, layer: &OAuth2Layer<T>) -> Self {
        layer.layer(inner)
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes `self`, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, T, B, ResBody, RB> Service<Request<B>> for OAuth2<S, T>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: Body + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
    ResBody: Body + Send + 'static,
    ResBody::Data: Send,
    T: Service<Request<BufferedBody>, Response = Response<RB>> + Clone + Send + Sync + 'static,
    T::Error: Into<BoxError>,
    T::Future: Send,
    RB: Body + Send + 'static,
    RB::Data: Send,
    RB::Error: Into<BoxError>,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = ResponseFuture<S, B, T>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Request<B>) -> Self::Future {
        let fresh = self.shared.fresh();
        let shared = Arc::clone(&self.shared);
        ResponseFuture::start(shared, &mut self.inner, req, fresh)
    }
}

/// Reads a little of a body we are discarding so that its connection can be reused; bounded
/// in size and time.
pub(crate) async fn drain<B: Body>(body: B) {
    let drained = async {
        let mut body = std::pin::pin!(body);
        let mut read = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(data) = frame.data_ref() {
                read += bytes::Buf::remaining(data);
                if read > DRAIN_LIMIT {
                    break;
                }
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, drained).await;
}
