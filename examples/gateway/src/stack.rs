//! The recommended stack of DESIGN.md around the upstream client, outermost first:
//! Audit, Redact, Cache, RateLimit (per tenant), Retry, CircuitBreaker, auth, Timeout, client.
//!
//! Each layer changes the request or response body type (a buffered body, a replayable body, an
//! observed stream). The gateway erases those types between layers ([`Svc`]): every stage
//! takes and gives `axum::body::Body`, which keeps each layer optional at run time, at the cost
//! of one small allocation per stage and request.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use futures_util::TryFutureExt;
use http::{Request, Response};
use secrecy::{ExposeSecret, SecretString};
use tower::util::{MapRequest, Oneshot};
use tower::{Layer, Service, ServiceExt};
use tower_deepseek::BoxError;
use tower_deepseek::auth::oauth2::ReplayBody;
use tower_deepseek::auth::store::RedisTokenStore;
use tower_deepseek::auth::{BearerAuthLayer, OAuth2Layer};
use tower_deepseek::breaker::CircuitBreakerLayer;
use tower_deepseek::cache::CacheLayer;
use tower_deepseek::client::{BaseUrlLayer, upstream_client};
use tower_deepseek::core::body::BufferedBody;
use tower_deepseek::core::meta::TenantId;
use tower_deepseek::redact::RedactLayer;
use tower_deepseek::redact::audit::{AuditHandle, AuditLayer, AuditRequestBody, JsonlFileSink};
use tower_deepseek::retry::rate_limit::RateLimitLayer;
use tower_deepseek::retry::retry::{RetryBody, RetryLayer};
use tower_deepseek::retry::timeout::TimeoutLayer;

use crate::StartError;
use crate::config::GatewayConfig;

/// The future of a [`Svc`].
pub(crate) type SvcFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response<Body>, BoxError>> + Send>>;

/// A stage of the stack with its body types erased.
///
/// Cloning it is one reference-count increment. (tower's `BoxCloneService` clones the boxed
/// service, and the layers that clone their inner service per call (cache, rate limit,
/// retry) would then deep-clone, with an allocation per stage, everything below them on
/// every request.) Each call clones the concrete stage (its layer state behind an `Arc`, the
/// next `Svc`) and drives it with `oneshot`, so readiness is still honoured.
#[derive(Clone)]
pub(crate) struct Svc(Arc<dyn Fn(Request<Body>) -> SvcFuture + Send + Sync>);

impl fmt::Debug for Svc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Svc")
    }
}

impl Service<Request<Body>> for Svc {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = SvcFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Readiness is taken per call, on the clone that serves it (`oneshot`).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> SvcFuture {
        (self.0)(req)
    }
}

/// Erases `svc`'s response body and error types.
fn boxed<S, B>(svc: S) -> Svc
where
    S: Service<Request<Body>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    Svc(Arc::new(move |req: Request<Body>| -> SvcFuture {
        Box::pin(
            svc.clone()
                .oneshot(req)
                .map_ok(|res: Response<B>| res.map(Body::new))
                .map_err(Into::into),
        )
    }))
}

/// `inner` taking requests with body `B`.
type Adapted<B> = MapRequest<Svc, fn(Request<B>) -> Request<Body>>;

/// Lets `inner` take the request body type `B` that the layer above hands down.
fn adapt<B>(inner: Svc) -> Adapted<B>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    inner.map_request(to_body::<B> as fn(Request<B>) -> Request<Body>)
}

fn to_body<B>(req: Request<B>) -> Request<Body>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    req.map(Body::new)
}

/// The upstream credential.
pub(crate) enum Credential {
    /// A static API key (`DEEPSEEK_API_KEY`).
    ApiKey(SecretString),
    /// OAuth2 client credentials from the config.
    OAuth2,
    /// None: requests go upstream without `Authorization` (a local mock).
    None,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Credential::ApiKey(_) => "ApiKey([REDACTED])",
            Credential::OAuth2 => "OAuth2",
            Credential::None => "None",
        })
    }
}

/// What [`build`] made.
pub(crate) struct Built {
    pub(crate) service: Svc,
    pub(crate) audit: Option<AuditHandle>,
    pub(crate) wired: Vec<&'static str>,
}

fn config_err(layer: &'static str) -> impl FnOnce(String) -> StartError {
    move |message| StartError::Layer { layer, message }
}

/// Builds the stack for `upstream` from `cfg`.
pub(crate) fn build(
    cfg: &GatewayConfig,
    upstream: &str,
    credential: &Credential,
    redis: Option<&str>,
    audit_log: Option<&std::path::Path>,
) -> Result<Built, StartError> {
    let mut wired = Vec::new();
    let base = BaseUrlLayer::new(upstream).map_err(|e| StartError::Upstream(e.to_string()))?;
    let client = upstream_client::<Body>(&cfg.client);
    let mut svc: Svc = boxed(base.layer(client));
    wired.push("client");

    if cfg.layers.timeout {
        let layer = TimeoutLayer::from_config(cfg.timeout)
            .map_err(|e| config_err("timeout")(e.to_string()))?;
        svc = boxed(layer.layer(svc));
        wired.push("timeout");
    }

    match credential {
        Credential::ApiKey(key) => {
            let layer = BearerAuthLayer::new(SecretString::from(key.expose_secret()))
                .map_err(|e| config_err("auth")(e.to_string()))?;
            svc = boxed(layer.layer(svc));
            wired.push("bearer_auth");
        }
        Credential::OAuth2 => {
            let oauth = cfg.oauth2.clone().expect("checked by the caller");
            let token_client = upstream_client::<BufferedBody>(&cfg.client);
            let mut builder = OAuth2Layer::builder(oauth, token_client);
            if let Some(url) = redis {
                let store =
                    RedisTokenStore::open(url).map_err(|e| config_err("oauth2")(e.to_string()))?;
                builder = builder.store(store);
            }
            let layer = builder
                .build()
                .map_err(|e| config_err("oauth2")(e.to_string()))?;
            svc = boxed(layer.layer(adapt::<ReplayBody<Body>>(svc)));
            wired.push("oauth2");
        }
        Credential::None => {}
    }

    if cfg.layers.breaker {
        let layer = CircuitBreakerLayer::from_config(cfg.breaker.clone())
            .map_err(|e| config_err("breaker")(e.to_string()))?;
        svc = boxed(layer.layer(svc));
        wired.push("breaker");
    }

    // Built before the retry layer below it, so that every 429 the retry layer sees (DeepSeek's
    // limits are account-wide) pauses the shared limiter too.
    let default_limiter = if cfg.layers.rate_limit {
        Some(
            RateLimitLayer::from_config(cfg.rate_limit.clone())
                .map_err(|e| config_err("rate_limit")(e.to_string()))?,
        )
    } else {
        None
    };

    if cfg.layers.retry {
        let mut builder = RetryLayer::builder().config(cfg.retry.clone());
        if let Some(limiter) = &default_limiter {
            builder = builder.pause_on_rate_limit(limiter.pause_handle());
        }
        let layer = builder
            .build()
            .map_err(|e| config_err("retry")(e.to_string()))?;
        svc = boxed(layer.layer(adapt::<RetryBody<Body>>(svc)));
        wired.push("retry");
    }

    if let Some(default) = default_limiter {
        let default_svc = boxed(default.layer(adapt::<RetryBody<Body>>(svc.clone())));
        let mut own = HashMap::new();
        for key in cfg.keys.iter().filter(|k| k.has_own_limits()) {
            let tenant =
                crate::inbound::tenant_for(key).map_err(|e| StartError::Keys(e.to_string()))?;
            let mut c = cfg.rate_limit.clone();
            c.requests_per_minute = key.requests_per_minute.or(c.requests_per_minute);
            c.tokens_per_minute = key.tokens_per_minute.or(c.tokens_per_minute);
            // One limiter per such client: its quota is its own whatever `key_by` says.
            c.key_by = Default::default();
            let layer = RateLimitLayer::from_config(c)
                .map_err(|e| config_err("rate_limit")(e.to_string()))?;
            own.insert(
                tenant,
                boxed(layer.layer(adapt::<RetryBody<Body>>(svc.clone()))),
            );
        }
        svc = boxed(TenantLimits {
            default: default_svc,
            own: Arc::new(own),
        });
        wired.push("rate_limit");
    }

    if cfg.layers.cache {
        let mut c = cfg.cache.clone();
        if let Some(url) = redis {
            if c.redis_url.is_none() && c.redis_cluster_urls.is_empty() {
                c.redis_url = Some(url.to_owned());
            }
        }
        let layer = CacheLayer::from_config(&c).map_err(|e| config_err("cache")(e.to_string()))?;
        svc = boxed(layer.layer(adapt::<BufferedBody>(svc)));
        wired.push(
            if c.redis_url.is_some() || !c.redis_cluster_urls.is_empty() {
                "cache_l1_l2"
            } else {
                "cache_l1"
            },
        );
    }

    if cfg.layers.redact {
        let layer = RedactLayer::from_config(&cfg.redact, audit_hmac_key(cfg).ok())
            .map_err(|e| config_err("redact")(e.to_string()))?;
        svc = boxed(layer.layer(adapt::<BufferedBody>(svc)));
        wired.push("redact");
    }

    let mut audit = None;
    let path = audit_log.map(ToOwned::to_owned).or(cfg.audit.path.clone());
    if let (true, Some(path)) = (cfg.layers.audit, path) {
        let a = &cfg.audit;
        let sink = JsonlFileSink::open(&path, a.max_bytes, a.keep)
            .map_err(|e| config_err("audit")(format!("cannot open {}: {e}", path.display())))?;
        let key = audit_hmac_key(cfg).unwrap_or_else(|_| {
            tracing::warn!(target: "example_gateway", env = %a.hmac_key_env, "no audit HMAC key in the environment: using a random key for this process");
            (0..4).flat_map(|_| fastrand_bytes()).collect()
        });
        let layer = AuditLayer::builder()
            .hmac_key(key)
            .sink(sink)
            .hash_chain(a.hash_chain)
            .on_sink_failure(a.on_sink_failure)
            .build()
            .map_err(|e| config_err("audit")(e.to_string()))?;
        audit = Some(layer.handle());
        svc = boxed(layer.layer(adapt::<AuditRequestBody<Body>>(svc)));
        wired.push("audit");
    }
    wired.reverse();
    Ok(Built {
        service: svc,
        audit,
        wired,
    })
}

/// 8 random bytes from the request-id generator of core (128 random bits per id).
fn fastrand_bytes() -> Vec<u8> {
    let id = tower_deepseek::core::meta::RequestId::generate();
    hex::decode(&id.as_str()[..16]).unwrap_or_default()
}

fn audit_hmac_key(cfg: &GatewayConfig) -> Result<Vec<u8>, std::env::VarError> {
    std::env::var(&cfg.audit.hmac_key_env).map(String::into_bytes)
}

/// Routes each request to the rate limiter of its tenant (clients with limits of their own),
/// or to the shared one.
#[derive(Clone)]
struct TenantLimits {
    default: Svc,
    own: Arc<HashMap<TenantId, Svc>>,
}

impl Service<Request<Body>> for TenantLimits {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Oneshot<Svc, Request<Body>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Readiness is taken per call, on the chosen limiter (`Oneshot`).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let svc = req
            .extensions()
            .get::<TenantId>()
            .and_then(|t| self.own.get(t))
            .unwrap_or(&self.default)
            .clone();
        svc.oneshot(req)
    }
}
