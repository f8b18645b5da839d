//! The recommended stack (ARCHITECTURE.md, "the recommended stack") around the upstream client, outermost first:
//! Audit, Redact, Cache, RateLimit (per tenant), Retry, CircuitBreaker, auth, Timeout, client.
//!
//! It is the facade's [`RecommendedStack`](tower_deepseek::stack::RecommendedStack): one
//! statically typed layer in which each layer is optional at run time (an absent layer is the
//! `Off` side of an enum, and body types unify through `http_body_util::Either`), so nothing is
//! boxed between stages. The gateway's `[layers]` switches and tables map onto a
//! [`StackConfig`]; the program adds what a file cannot hold: the audit sink, the upstream
//! credential, and a rate limiter per client with limits of its own.

use std::fmt;

use axum::body::Body;
use secrecy::{ExposeSecret, SecretString};
use tower::Layer;
use tower_deepseek::auth::store::RedisTokenStore;
use tower_deepseek::auth::{BearerAuthLayer, OAuth2Config, OAuth2Layer};
use tower_deepseek::breaker::CircuitBreakerLayer;
use tower_deepseek::client::upstream_client;
use tower_deepseek::core::body::BufferedBody;
use tower_deepseek::redact::audit::{AuditHandle, AuditLayer, JsonlFileSink};
use tower_deepseek::retry::rate_limit::RateLimitLayer;
use tower_deepseek::stack::{Recommended, StackConfig, StackConfigError};

use crate::StartError;
use crate::config::{GatewayConfig, UpstreamConfig};
use crate::upstream::Entry;
use crate::upstream::pool::{self, Inner};
use crate::upstream::probe::Probe;

/// The stack around the upstream client (or the failover pool), taking the server's request
/// bodies.
pub(crate) type Svc = Recommended<Inner, Body>;

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
    /// The audit layer, also for the answers the gateway makes itself (a refused key, a body
    /// too large), which never reach the stack.
    pub(crate) audit_layer: Option<AuditLayer>,
    pub(crate) wired: Vec<&'static str>,
    /// Every upstream, for `/readyz` and the metrics.
    pub(crate) entries: Vec<Entry>,
    /// The active probes to start.
    pub(crate) probes: Vec<Probe>,
}

/// An OAuth2 layer for `oauth` (the global `[oauth2]` or an upstream's own), its token shared
/// through Redis when there is one.
pub(crate) fn oauth2_layer(
    oauth: &OAuth2Config,
    cfg: &GatewayConfig,
    redis: Option<&str>,
) -> Result<OAuth2Layer<tower_deepseek::stack::TokenClient>, StartError> {
    let token_client = upstream_client::<BufferedBody>(&cfg.client);
    let mut builder = OAuth2Layer::builder(oauth.clone(), token_client);
    if let Some(url) = redis {
        let store = RedisTokenStore::open(url).map_err(|e| config_err("oauth2")(e.to_string()))?;
        builder = builder.store(store);
    }
    builder
        .build()
        .map_err(|e| config_err("oauth2")(e.to_string()))
}

fn config_err(layer: &'static str) -> impl FnOnce(String) -> StartError {
    move |message| StartError::Layer { layer, message }
}

fn stack_err(e: StackConfigError) -> StartError {
    // The gateway's table for the breaker is `[breaker]`.
    let layer = match e.layer() {
        "circuit_breaker" => "breaker",
        other => other,
    };
    config_err(layer)(e.message().to_owned())
}

/// Builds the stack for `upstreams` from `cfg`: the plain stack around one upstream's client,
/// or (`pooled`) the stack without its breaker, auth and timeout stages around the failover
/// pool, which has them per upstream.
pub(crate) fn build(
    cfg: &GatewayConfig,
    upstreams: &[UpstreamConfig],
    pooled: bool,
    credential: &Credential,
    redis: Option<&str>,
    audit_log: Option<&std::path::Path>,
) -> Result<Built, StartError> {
    let on = cfg.layers;
    let mut cache = cfg.cache.clone();
    if let Some(url) = redis {
        if cache.redis_url.is_none() && cache.redis_cluster_urls.is_empty() {
            cache.redis_url = Some(url.to_owned());
        }
    }
    let l2 = cache.redis_url.is_some() || !cache.redis_cluster_urls.is_empty();

    // The layers a file configures. With both a rate limit and retries, the retry layer
    // pauses the shared limiter on every 429 it sees (DeepSeek's limits are account-wide).
    let mut tables = StackConfig::default();
    tables.redact = on.redact.then(|| cfg.redact.clone());
    tables.cache = on.cache.then_some(cache);
    tables.rate_limit = on.rate_limit.then(|| cfg.rate_limit.clone());
    tables.retry = on.retry.then(|| cfg.retry.clone());
    // The breaker is set below (its handle is kept for `/readyz`).
    tables.circuit_breaker = None;
    tables.timeout = (on.timeout && !pooled).then_some(cfg.timeout);
    let mut stack = tables
        .builder::<Body>(audit_hmac_key(cfg).ok())
        .map_err(stack_err)?;
    let mut breaker = None;
    if on.breaker && !pooled {
        let layer = CircuitBreakerLayer::from_config(cfg.breaker.clone())
            .map_err(|e| config_err("breaker")(e.to_string()))?;
        breaker = Some(layer.handle());
        stack = stack.circuit_breaker(layer);
    }

    if on.rate_limit {
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
            stack = stack.tenant_rate_limit(tenant, layer);
        }
    }

    match credential {
        _ if pooled => {}
        Credential::ApiKey(key) => {
            let layer = BearerAuthLayer::new(SecretString::from(key.expose_secret()))
                .map_err(|e| config_err("auth")(e.to_string()))?;
            stack = stack.bearer_auth(layer);
        }
        Credential::OAuth2 => {
            let oauth = cfg.oauth2.as_ref().expect("checked by the caller");
            stack = stack.oauth2(oauth2_layer(oauth, cfg, redis)?);
        }
        Credential::None => {}
    }

    let mut audit = None;
    let mut audit_layer = None;
    let path = audit_log.map(ToOwned::to_owned).or(cfg.audit.path.clone());
    if let (true, Some(path)) = (on.audit, path) {
        let a = &cfg.audit;
        let sink = JsonlFileSink::builder(&path)
            .max_bytes(a.max_bytes)
            .keep(a.keep)
            .fsync_interval(std::time::Duration::from_millis(a.fsync_interval_ms))
            .open()
            .map_err(|e| config_err("audit")(format!("cannot open {}: {e}", path.display())))?;
        let key = audit_hmac_key(cfg).unwrap_or_else(|_| {
            tracing::warn!(target: "tower_deepseek_gateway", env = %a.hmac_key_env, "no audit HMAC key in the environment: using a random key for this process");
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
        audit_layer = Some(layer.clone());
        stack = stack.audit(layer);
    }

    let stack = stack.build().map_err(stack_err)?;
    let mut wired: Vec<&'static str> = stack
        .layers()
        .into_iter()
        .map(|name| match name {
            "cache" if l2 => "cache_l1_l2",
            "cache" => "cache_l1",
            "circuit_breaker" => "breaker",
            other => other,
        })
        .collect();
    let (inner, entries, probes) = if pooled {
        // Each upstream: its breaker, credential, attempt timeouts and client.
        wired.extend(["failover", "breaker", "auth"]);
        if on.timeout {
            wired.push("timeout");
        }
        let p = pool::pool(cfg, upstreams, credential, redis)?;
        (p.inner, p.entries, p.probes)
    } else {
        let u = &upstreams[0];
        let entry = Entry {
            name: pool::name_of(0, u),
            weight: 1,
            breaker,
            probe: None,
        };
        (pool::single(cfg, &u.url)?, vec![entry], Vec::new())
    };
    wired.push("client");
    Ok(Built {
        service: stack.layer(inner),
        audit,
        audit_layer,
        wired,
        entries,
        probes,
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
