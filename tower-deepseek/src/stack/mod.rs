//! [`RecommendedStack`]: the recommended stack of the design, as one statically typed layer
//! in which every layer is optional.
//!
//! Outermost first: audit, redact, review, cache, cost (prices and budgets), rate limit
//! (optionally per tenant), retry, circuit breaker, auth (API key or OAuth2), attempt timeouts;
//! then the service it wraps, usually
//! [`BaseUrlLayer`](crate::client::BaseUrlLayer) over the
//! [`upstream_client`](crate::client::upstream_client). Whichever layers are set, they stay in
//! this order: each layer's docs say why it sits where it does.
//!
//! # Why one layer
//!
//! Each layer changes the request or response body type (the cache buffers the request, the
//! retry layer makes it replayable, the breaker observes the response), so a stack whose
//! layers are chosen at run time (from a configuration file) needs the types unified between
//! stages. Boxing them (`BoxCloneService`, `axum::body::Body` per stage) costs allocations per
//! stage and request. Here an absent layer is the `Off` side of an [`Optional`] and the
//! types unify statically: the service below a layer takes an
//! [`http_body_util::Either`] of the layer's request body and the caller's, and each stage
//! answers with an `Either` of the layer's response body and the one from below. Nothing is
//! boxed by the stack itself, and the futures are enums of the layers' futures.
//!
//! For a caller's body `B` (a `Body<Data = Bytes>` that is `Unpin + Send + 'static`, as every
//! hyper, axum and http-body-util body is), the service below the stack (the client) takes
//! [`StackRequestBody<B>`], and the stack answers with nested `Either`s of the layers' response
//! bodies: a stream stays a stream. A server that needs one body type boxes the answer once,
//! at the top (`axum::body::Body::new`).
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_deepseek::auth::BearerAuthLayer;
//! use tower_deepseek::breaker::CircuitBreakerLayer;
//! use tower_deepseek::cache::CacheLayer;
//! use tower_deepseek::retry::RetryLayer;
//! use tower_deepseek::stack::{RecommendedStack, StackRequestBody};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_deepseek::BoxError> {
//! let stack = RecommendedStack::builder()
//!     .cache(CacheLayer::new())
//!     .retry(RetryLayer::builder().build()?)
//!     .circuit_breaker(CircuitBreakerLayer::builder().name("deepseek").build()?)
//!     .bearer_auth(BearerAuthLayer::new("sk-example")?)
//!     .build()?;
//!
//! // In a program this is the upstream client; here, a stand-in for it.
//! let upstream = tower::service_fn(|req: http::Request<StackRequestBody<Full<Bytes>>>| async move {
//!     assert!(req.headers().contains_key("authorization"));
//!     let res = http::Response::builder()
//!         .header("content-type", "application/json")
//!         .body(Full::new(Bytes::from_static(br#"{"choices":[{"finish_reason":"stop"}]}"#)))?;
//!     Ok::<_, tower_deepseek::BoxError>(res)
//! });
//! let svc = ServiceBuilder::new().layer(stack).service(upstream);
//!
//! let req = http::Request::post("/chat/completions")
//!     .header("content-type", "application/json")
//!     .body(Full::new(Bytes::from_static(br#"{"model":"deepseek-chat","messages":[]}"#)))?;
//! let res = svc.oneshot(req).await?;
//! assert_eq!(res.status(), 200);
//! let body = res.into_body().collect().await?.to_bytes();
//! assert!(body.starts_with(b"{\"choices\""));
//! # Ok(()) }
//! ```
//!
//! # Cost
//!
//! With every layer off, the stack adds about 0.1 µs per call to the service it wraps. With
//! every layer on, it is about as fast as the same layers joined by boxing (within a few per
//! cent either way in `cargo bench -p tower-deepseek --bench stack`): the allocations saved
//! are most likely offset by the clones of the inner service that the cache, rate-limit, retry
//! and redact layers make per call, which here clone the whole statically typed stack below
//! them (a boxed stage clones in one reference count). The layers' own work (audit records,
//! body buffering and parsing, classification) dominates.
//!
//! From a configuration file, [`StackConfig`] turns one table per layer into a builder, to
//! which the program adds what a file cannot hold (the audit sink, the credential).
//!
//! # Feature flags
//!
//! This module needs every layer crate: the features `auth`, `retry`, `cache`, `breaker` and
//! `redact` (all on by default).

mod config;
pub mod service;

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;

use http_body_util::Either;
use tower_deepseek_auth::{BearerAuth, BearerAuthLayer, OAuth2, OAuth2Layer};
use tower_deepseek_breaker::{CircuitBreaker, CircuitBreakerLayer};
use tower_deepseek_cache::{Cache, CacheLayer};
use tower_deepseek_core::body::{BufferedBody, ReplayBody};
use tower_deepseek_core::meta::TenantId;
use tower_deepseek_redact::audit::{Audit, AuditLayer, AuditRequestBody};
use tower_deepseek_redact::review::{Review, ReviewLayer, ReviewRequestBody};
use tower_deepseek_redact::{Redact, RedactLayer};
use tower_deepseek_retry::cost::{Cost, CostLayer};
use tower_deepseek_retry::rate_limit::{RateLimit, RateLimitLayer};
use tower_deepseek_retry::timeout::{Timeout, TimeoutLayer};
use tower_deepseek_retry::{Retry, RetryLayer};
use tower_layer::Layer;

pub use self::config::{StackConfig, StackConfigError};
pub use self::service::{Auth, Left, Optional, PerTenant, Right};
use crate::client::UpstreamClient;

/// The token client of an [`OAuth2Layer`] by default: the facade's pooled HTTPS client.
pub type TokenClient = UpstreamClient<BufferedBody>;

/// The request body below the audit stage, for a caller's body `B`.
pub type AuditedBody<B> = Either<AuditRequestBody<B>, B>;
/// The request body below the redact stage.
pub type RedactedBody<B> = Either<BufferedBody, AuditedBody<B>>;
/// The request body below the review stage.
pub type ReviewedBody<B> = Either<ReviewRequestBody<RedactedBody<B>>, RedactedBody<B>>;
/// The request body below the cache stage.
pub type CachedBody<B> = Either<BufferedBody, ReviewedBody<B>>;
/// The request body below the rate-limit stage.
pub type LimitedBody<B> = Either<ReplayBody<CachedBody<B>>, CachedBody<B>>;
/// The request body below the retry stage (and the breaker, which keeps it).
pub type RetriedBody<B> = Either<ReplayBody<LimitedBody<B>>, LimitedBody<B>>;
/// The request body below the auth stage: what the service wrapped by the stack takes, for a
/// caller's body `B`.
pub type StackRequestBody<B> = Either<ReplayBody<RetriedBody<B>>, RetriedBody<B>>;

/// The timeout stage around `S`.
pub type TimeoutStage<S> = Optional<Timeout<S>, S>;
/// The auth stage around `S`, taking bodies `B`.
pub type AuthStage<S, B, T> =
    Auth<OAuth2<Left<S, B>, T>, BearerAuth<Right<S, ReplayBody<B>>>, Right<S, ReplayBody<B>>>;
/// The circuit-breaker stage around `S`.
pub type BreakerStage<S> = Optional<CircuitBreaker<S>, S>;
/// The retry stage around `S`, taking bodies `B`.
pub type RetryStage<S, B> = Optional<Retry<Left<S, B>>, Right<S, ReplayBody<B>>>;
/// The rate-limit stage around `S`, taking bodies `B`.
pub type RateLimitStage<S, B> = Optional<PerTenant<RateLimit<Left<S, B>>>, Right<S, ReplayBody<B>>>;
/// The cost stage around `S` (it passes request bodies through).
pub type CostStage<S> = Optional<Cost<S>, S>;
/// The cache stage around `S`, taking bodies `B`.
pub type CacheStage<S, B> = Optional<Cache<Left<S, B>>, Right<S, BufferedBody>>;
/// The review stage around `S`, taking bodies `B`.
pub type ReviewStage<S, B> = Optional<Review<Left<S, B>>, Right<S, ReviewRequestBody<B>>>;
/// The redact stage around `S`, taking bodies `B`.
pub type RedactStage<S, B> = Optional<Redact<Left<S, B>>, Right<S, BufferedBody>>;
/// The audit stage around `S`, taking bodies `B`.
pub type AuditStage<S, B> = Optional<Audit<Left<S, B>>, Right<S, AuditRequestBody<B>>>;

/// The service of [`RecommendedStack<B, T>`] around `S`, taking `Request<B>`.
pub type Recommended<S, B, T = TokenClient> = AuditStage<
    RedactStage<
        ReviewStage<
            CacheStage<
                CostStage<
                    RateLimitStage<
                        RetryStage<
                            BreakerStage<AuthStage<TimeoutStage<S>, RetriedBody<B>, T>>,
                            LimitedBody<B>,
                        >,
                        CachedBody<B>,
                    >,
                >,
                ReviewedBody<B>,
            >,
            RedactedBody<B>,
        >,
        AuditedBody<B>,
    >,
    B,
>;

/// The credential layer of the stack.
#[derive(Clone)]
enum AuthLayer<T> {
    OAuth2(OAuth2Layer<T>),
    Bearer(BearerAuthLayer),
    None,
}

/// The recommended stack, each layer optional, as one `tower::Layer`. See the
/// [module docs](self).
///
/// `B` is the request body type of the caller (e.g. `axum::body::Body`, `Full<Bytes>`), `T`
/// the token client of the OAuth2 layer. Cloning it is cheap: each layer keeps its state
/// behind an `Arc`, so every service made from it, and every clone, shares it.
pub struct RecommendedStack<B, T = TokenClient> {
    audit: Option<AuditLayer>,
    redact: Option<RedactLayer>,
    review: Option<ReviewLayer>,
    cache: Option<CacheLayer>,
    cost: Option<CostLayer>,
    rate_limit: Option<RateLimitLayer>,
    tenant_limits: Vec<(TenantId, RateLimitLayer)>,
    retry: Option<RetryLayer>,
    breaker: Option<CircuitBreakerLayer>,
    auth: AuthLayer<T>,
    timeout: Option<TimeoutLayer>,
    _body: PhantomData<fn(B)>,
}

impl<B, T> Clone for RecommendedStack<B, T> {
    fn clone(&self) -> Self {
        Self {
            audit: self.audit.clone(),
            redact: self.redact.clone(),
            review: self.review.clone(),
            cache: self.cache.clone(),
            cost: self.cost.clone(),
            rate_limit: self.rate_limit.clone(),
            tenant_limits: self.tenant_limits.clone(),
            retry: self.retry.clone(),
            breaker: self.breaker.clone(),
            auth: match &self.auth {
                AuthLayer::OAuth2(l) => AuthLayer::OAuth2(l.clone()),
                AuthLayer::Bearer(l) => AuthLayer::Bearer(l.clone()),
                AuthLayer::None => AuthLayer::None,
            },
            timeout: self.timeout,
            _body: PhantomData,
        }
    }
}

impl<B, T> fmt::Debug for RecommendedStack<B, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecommendedStack")
            .field("layers", &self.layers())
            .finish()
    }
}

impl<B> RecommendedStack<B> {
    /// A builder with every layer off.
    pub fn builder() -> StackBuilder<B> {
        StackBuilder {
            stack: RecommendedStack {
                audit: None,
                redact: None,
                review: None,
                cache: None,
                cost: None,
                rate_limit: None,
                tenant_limits: Vec::new(),
                retry: None,
                breaker: None,
                auth: AuthLayer::None,
                timeout: None,
                _body: PhantomData,
            },
        }
    }
}

impl<B, T> RecommendedStack<B, T> {
    /// The names of the layers that are on, outermost first: `audit`, `redact`, `review`,
    /// `cache`, `cost`, `rate_limit`, `retry`, `circuit_breaker`, `oauth2` or `bearer_auth`,
    /// `timeout`.
    pub fn layers(&self) -> Vec<&'static str> {
        let mut on = Vec::new();
        let mut push = |yes: bool, name| {
            if yes {
                on.push(name);
            }
        };
        push(self.audit.is_some(), "audit");
        push(self.redact.is_some(), "redact");
        push(self.review.is_some(), "review");
        push(self.cache.is_some(), "cache");
        push(self.cost.is_some(), "cost");
        push(self.rate_limit.is_some(), "rate_limit");
        push(self.retry.is_some(), "retry");
        push(self.breaker.is_some(), "circuit_breaker");
        push(matches!(self.auth, AuthLayer::OAuth2(_)), "oauth2");
        push(matches!(self.auth, AuthLayer::Bearer(_)), "bearer_auth");
        push(self.timeout.is_some(), "timeout");
        on
    }
}

/// A stage whose layer `L` hands its inner service request bodies `X` (for callers' bodies
/// `B`): `On` through a [`Left`], `Off` through a [`Right`].
fn stage<L, S, B, X>(layer: Option<&L>, inner: S) -> Optional<L::Service, Right<S, X>>
where
    L: Layer<Left<S, B>>,
{
    match layer {
        Some(l) => Optional::On(l.layer(Left::new(inner))),
        None => Optional::Off(Right::new(inner)),
    }
}

impl<S, B, T> Layer<S> for RecommendedStack<B, T>
where
    S: Clone,
{
    type Service = Recommended<S, B, T>;

    fn layer(&self, inner: S) -> Self::Service {
        let svc = match &self.timeout {
            Some(l) => Optional::On(l.layer(inner)),
            None => Optional::Off(inner),
        };
        let svc = match &self.auth {
            AuthLayer::OAuth2(l) => Auth::OAuth2(l.layer(Left::new(svc))),
            AuthLayer::Bearer(l) => Auth::Bearer(l.layer(Right::new(svc))),
            AuthLayer::None => Auth::None(Right::new(svc)),
        };
        let svc = match &self.breaker {
            Some(l) => Optional::On(l.layer(svc)),
            None => Optional::Off(svc),
        };
        let svc = stage(self.retry.as_ref(), svc);
        let svc = match &self.rate_limit {
            Some(default) => {
                let own: HashMap<_, _> = self
                    .tenant_limits
                    .iter()
                    .map(|(t, l)| (t.clone(), l.layer(Left::new(svc.clone()))))
                    .collect();
                Optional::On(PerTenant::new(default.layer(Left::new(svc)), own))
            }
            None => Optional::Off(Right::new(svc)),
        };
        let svc = match &self.cost {
            Some(l) => Optional::On(l.layer(svc)),
            None => Optional::Off(svc),
        };
        let svc = stage(self.cache.as_ref(), svc);
        let svc = stage(self.review.as_ref(), svc);
        let svc = stage(self.redact.as_ref(), svc);
        stage(self.audit.as_ref(), svc)
    }
}

/// Builds a [`RecommendedStack`]; every layer is off until set. Setting a layer twice keeps
/// the last one; [`bearer_auth`](Self::bearer_auth) and [`oauth2`](Self::oauth2) replace each
/// other (one credential per stack).
#[must_use]
pub struct StackBuilder<B, T = TokenClient> {
    stack: RecommendedStack<B, T>,
}

impl<B, T> fmt::Debug for StackBuilder<B, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StackBuilder")
            .field("layers", &self.stack.layers())
            .field("tenant_limits", &self.stack.tenant_limits.len())
            .finish()
    }
}

impl<B, T> StackBuilder<B, T> {
    /// Writes one audit record per call; sees the caller's request and the final outcome.
    pub fn audit(mut self, layer: AuditLayer) -> Self {
        self.stack.audit = Some(layer);
        self
    }

    /// Masks PII before anything below sees it; restores placeholders in the answer.
    pub fn redact(mut self, layer: RedactLayer) -> Self {
        self.stack.redact = Some(layer);
        self
    }

    /// Samples calls into a review sink: below redact, so that the review holds only masked
    /// text, and above the cache, so that cache hits are sampled too. Off by default.
    pub fn review(mut self, layer: ReviewLayer) -> Self {
        self.stack.review = Some(layer);
        self
    }

    /// Answers repeated requests from the cache (keyed on the masked body).
    pub fn cache(mut self, layer: CacheLayer) -> Self {
        self.stack.cache = Some(layer);
        self
    }

    /// Prices each call and enforces budgets, below the cache (a hit costs nothing) and above
    /// the rate limiter and retries (one budget check per call).
    pub fn cost(mut self, layer: CostLayer) -> Self {
        self.stack.cost = Some(layer);
        self
    }

    /// Paces what really goes upstream. To have the retry layer's 429s pause this limiter,
    /// build the [`RetryLayer`] with `pause_on_rate_limit(layer.pause_handle())`
    /// ([`StackConfig`] does).
    pub fn rate_limit(mut self, layer: RateLimitLayer) -> Self {
        self.stack.rate_limit = Some(layer);
        self
    }

    /// Gives the requests of `tenant` (a [`TenantId`] in their extensions) a rate limiter of
    /// their own instead of the default one ([`rate_limit`](Self::rate_limit), which must be
    /// set too).
    pub fn tenant_rate_limit(mut self, tenant: TenantId, layer: RateLimitLayer) -> Self {
        self.stack.tenant_limits.retain(|(t, _)| *t != tenant);
        self.stack.tenant_limits.push((tenant, layer));
        self
    }

    /// The guide's status-aware retries; every attempt goes through the breaker and auth.
    pub fn retry(mut self, layer: RetryLayer) -> Self {
        self.stack.retry = Some(layer);
        self
    }

    /// Records each attempt; fails fast while open.
    pub fn circuit_breaker(mut self, layer: CircuitBreakerLayer) -> Self {
        self.stack.breaker = Some(layer);
        self
    }

    /// A static API key on every attempt (replaces an OAuth2 layer set before).
    pub fn bearer_auth(mut self, layer: BearerAuthLayer) -> Self {
        self.stack.auth = AuthLayer::Bearer(layer);
        self
    }

    /// Attempt timeouts (headers, first token, idle), right above the wrapped service.
    pub fn timeout(mut self, layer: TimeoutLayer) -> Self {
        self.stack.timeout = Some(layer);
        self
    }

    /// OAuth2 client credentials on every attempt, refreshed on 401 (replaces a static key
    /// set before). `T2` is the layer's token client.
    pub fn oauth2<T2>(self, layer: OAuth2Layer<T2>) -> StackBuilder<B, T2> {
        let s = self.stack;
        StackBuilder {
            stack: RecommendedStack {
                audit: s.audit,
                redact: s.redact,
                review: s.review,
                cache: s.cache,
                cost: s.cost,
                rate_limit: s.rate_limit,
                tenant_limits: s.tenant_limits,
                retry: s.retry,
                breaker: s.breaker,
                auth: AuthLayer::OAuth2(layer),
                timeout: s.timeout,
                _body: PhantomData,
            },
        }
    }

    /// Checks the combination and builds the stack.
    ///
    /// # Errors
    ///
    /// [`StackConfigError`] when tenant rate limits are set without a default
    /// [`rate_limit`](Self::rate_limit) (the requests of other tenants would have none).
    pub fn build(self) -> Result<RecommendedStack<B, T>, StackConfigError> {
        if !self.stack.tenant_limits.is_empty() && self.stack.rate_limit.is_none() {
            return Err(StackConfigError::new(
                "rate_limit",
                "tenant rate limits need a default rate limit for the other requests: set rate_limit too",
            ));
        }
        Ok(self.stack)
    }
}
