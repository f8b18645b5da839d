//! OAuth2 client credentials: fetch a token, share it, refresh it ahead of expiry, replay a
//! request once after a 401.
//!
//! [`OAuth2Layer`] follows the integration guide: it `POST`s `grant_type=client_credentials`
//! (plus optional `scope` and `audience`) to the token URL with HTTP Basic
//! `client_id:client_secret`, keeps the token for `expires_in` (2 hours when the answer has
//! none), refreshes it 10 minutes early, and can share it across a fleet through a
//! [`TokenStore`](crate::store::TokenStore).
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
//!   ([`ReplayOn401::Offered`](tower_deepseek_core::protocol::ReplayOn401) in the request's
//!   extensions). This layer then keeps no copy (no body buffering, no head clone: the fresh
//!   token path costs what it costs with `replay_on_401(false)`). After a 401 it invalidates
//!   the token, obtains a new one and returns the 401 marked
//!   [`CredentialRefreshed`](tower_deepseek_core::protocol::CredentialRefreshed); the retry layer
//!   sends the request again at once, marked
//!   [`ReplayOn401::Replaying`](tower_deepseek_core::protocol::ReplayOn401), and a 401 to that is
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
//! [`BoxError`](tower_deepseek_core::BoxError); downcast it) with a
//! [`kind`](crate::error::TokenFetchErrorKind).
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

mod config;
mod fetch;
pub mod future;
mod layer;
mod service;
mod state;

pub use self::config::{
    DEFAULT_ATTEMPT_TIMEOUT, DEFAULT_DEADLINE, DEFAULT_LIFETIME, DEFAULT_REFRESH_JITTER,
    DEFAULT_REFRESH_MARGIN, DEFAULT_STORE_WAIT, OAuth2Config,
};
pub use self::layer::{OAuth2Layer, OAuth2LayerBuilder};
pub use self::service::OAuth2;
pub use tower_deepseek_core::body::ReplayBody;
