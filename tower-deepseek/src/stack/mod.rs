//! [`RecommendedStack`]: the recommended stack of the design, as one layer in which every
//! layer is optional.
//!
//! Outermost first: audit, redact, review, cache, cost (prices and budgets), rate limit
//! (optionally per tenant), retry, circuit breaker, auth (API key or OAuth2), attempt timeouts;
//! then the service it wraps, usually
//! [`BaseUrlLayer`](crate::client::BaseUrlLayer) over the
//! [`upstream_client`](crate::client::upstream_client). Whichever layers are set, they stay in
//! this order: each layer's docs say why it sits where it does.
//!
//! # One boxed service per stage
//!
//! Each layer changes the request or response body type (the cache buffers the request, the
//! retry layer makes it replayable, the breaker observes the response). The stack joins its
//! stages with one body type, [`StackBody`] (a boxed body of `Bytes`), and boxes each stage's
//! service ([`service::Stage`]): a layer that is off is simply not there, and the stack's
//! type is [`StackService`] whatever the layers set. Adding a layer does not grow the type, so
//! a program compiles each layer once. (An earlier, statically typed composition, in which an
//! absent layer was the `Off` side of an enum and body types nested as `Either`s, was no
//! faster in the same run and its type doubled with each stage: see `BENCHMARKS.md`.)
//!
//! For a caller's body `B` (any `Body<Data = Bytes>` that is `Send + 'static`, as every
//! hyper, axum and http-body-util body is), the service below the stack (the client) takes
//! `Request<StackBody>`, and the stack answers `Response<StackBody>`: a stream stays a stream.
//! A body that already is a [`StackBody`] is never boxed again.
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
//! use tower_deepseek::stack::{RecommendedStack, StackBody};
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
//! let upstream = tower::service_fn(|req: http::Request<StackBody>| async move {
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
//! With every layer off, the stack is one boxed call around the service it wraps. With every
//! layer on, each stage adds a boxed future and, where the layer changes a body, a boxed body
//! (`cargo bench -p tower-deepseek --bench stack`, figures in `BENCHMARKS.md`); the layers'
//! own work (audit records, body buffering and parsing, classification) dominates.
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

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tower_deepseek_auth::{BearerAuthLayer, OAuth2Layer};
use tower_deepseek_breaker::CircuitBreakerLayer;
use tower_deepseek_cache::CacheLayer;
use tower_deepseek_core::BoxError;
use tower_deepseek_core::body::BufferedBody;
use tower_deepseek_core::meta::TenantId;
use tower_deepseek_redact::RedactLayer;
use tower_deepseek_redact::audit::AuditLayer;
use tower_deepseek_redact::review::ReviewLayer;
use tower_deepseek_retry::RetryLayer;
use tower_deepseek_retry::cost::CostLayer;
use tower_deepseek_retry::rate_limit::RateLimitLayer;
use tower_deepseek_retry::timeout::TimeoutLayer;
use tower_layer::Layer;
use tower_service::Service;

pub use self::config::{StackConfig, StackConfigError};
pub use self::service::{PerTenant, StackBody, StageService, stack_body};
use self::service::{Stage, boxed, stage};
use crate::client::UpstreamClient;

/// The token client of an [`OAuth2Layer`] by default: the facade's pooled HTTPS client.
pub type TokenClient = UpstreamClient<BufferedBody>;

/// The service of [`RecommendedStack`]: takes `Request<B>` for any body `B`, answers
/// `Response<StackBody>`. Cloning it clones one box.
pub type StackService = StageService;

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
pub struct RecommendedStack<T = TokenClient> {
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
}

impl<T> Clone for RecommendedStack<T> {
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
        }
    }
}

impl<T> fmt::Debug for RecommendedStack<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecommendedStack")
            .field("layers", &self.layers())
            .finish()
    }
}

impl RecommendedStack {
    /// A builder with every layer off.
    pub fn builder() -> StackBuilder {
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
            },
        }
    }
}

impl<T> RecommendedStack<T> {
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

impl<S, RB, T, TB> Layer<S> for RecommendedStack<T>
where
    S: Service<Request<StackBody>, Response = Response<RB>> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    RB: Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<BoxError>,
    T: Service<Request<BufferedBody>, Response = Response<TB>> + Clone + Send + Sync + 'static,
    T::Error: Into<BoxError>,
    T::Future: Send,
    TB: Body + Send + 'static,
    TB::Data: Send,
    TB::Error: Into<BoxError>,
{
    type Service = StackService;

    fn layer(&self, inner: S) -> StackService {
        // Innermost first. A layer that is off adds nothing.
        let mut svc: Stage = boxed(inner);
        let wrap = |svc: Stage| StageService::from_stage(svc);
        if let Some(l) = &self.timeout {
            svc = stage(l, wrap(svc));
        }
        svc = match &self.auth {
            AuthLayer::OAuth2(l) => stage(l, wrap(svc)),
            AuthLayer::Bearer(l) => stage(l, wrap(svc)),
            AuthLayer::None => svc,
        };
        if let Some(l) = &self.breaker {
            svc = stage(l, wrap(svc));
        }
        if let Some(l) = &self.retry {
            svc = stage(l, wrap(svc));
        }
        if let Some(default) = &self.rate_limit {
            let own: HashMap<_, _> = self
                .tenant_limits
                .iter()
                .map(|(t, l)| (t.clone(), stage(l, wrap(svc.clone()))))
                .collect();
            let default = stage(default, wrap(svc));
            svc = if own.is_empty() {
                default
            } else {
                boxed(PerTenant::new(default, own))
            };
        }
        if let Some(l) = &self.cost {
            svc = stage(l, wrap(svc));
        }
        if let Some(l) = &self.cache {
            svc = stage(l, wrap(svc));
        }
        if let Some(l) = &self.review {
            svc = stage(l, wrap(svc));
        }
        if let Some(l) = &self.redact {
            svc = stage(l, wrap(svc));
        }
        if let Some(l) = &self.audit {
            svc = stage(l, wrap(svc));
        }
        wrap(svc)
    }
}

/// Builds a [`RecommendedStack`]; every layer is off until set. Setting a layer twice keeps
/// the last one; [`bearer_auth`](Self::bearer_auth) and [`oauth2`](Self::oauth2) replace each
/// other (one credential per stack).
#[must_use]
pub struct StackBuilder<T = TokenClient> {
    stack: RecommendedStack<T>,
}

impl<T> fmt::Debug for StackBuilder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StackBuilder")
            .field("layers", &self.stack.layers())
            .field("tenant_limits", &self.stack.tenant_limits.len())
            .finish()
    }
}

impl<T> StackBuilder<T> {
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
    pub fn oauth2<T2>(self, layer: OAuth2Layer<T2>) -> StackBuilder<T2> {
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
            },
        }
    }

    /// Checks the combination and builds the stack.
    ///
    /// # Errors
    ///
    /// [`StackConfigError`] when tenant rate limits are set without a default
    /// [`rate_limit`](Self::rate_limit) (the requests of other tenants would have none).
    pub fn build(self) -> Result<RecommendedStack<T>, StackConfigError> {
        if !self.stack.tenant_limits.is_empty() && self.stack.rate_limit.is_none() {
            return Err(StackConfigError::new(
                "rate_limit",
                "tenant rate limits need a default rate limit for the other requests: set rate_limit too",
            ));
        }
        Ok(self.stack)
    }
}
