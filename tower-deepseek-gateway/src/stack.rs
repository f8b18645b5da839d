//! The recommended stack (ARCHITECTURE.md, "the recommended stack") around the upstream client, outermost first:
//! Audit, Redact, Cache, Cost (with `[prices]` or `[budgets]`), RateLimit (per tenant), Retry, CircuitBreaker, auth, Timeout,
//! then, below the stack, the `[concurrency]` cap around the client (`crate::concurrency::capped`).
//!
//! It is the facade's [`RecommendedStack`](tower_deepseek::stack::RecommendedStack): one
//! boxed service per stage, each layer optional at run time (a layer that is off is not
//! there). The gateway's `[layers]` switches and tables map onto a
//! [`StackConfig`](tower_deepseek::stack::StackConfig); the program adds what a file cannot
//! hold: the audit sink, the upstream credential, and a rate limiter per client with limits of
//! its own.
//!
//! With several upstreams (or one with settings of its own) the stack leaves out its breaker,
//! auth and timeout stages, and the service below it is the failover pool of
//! [`upstream::pool`](crate::upstream::pool), which runs them per upstream.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;

use secrecy::{ExposeSecret, SecretString};
use tower::Layer;
use tower_deepseek::auth::OAuth2Config;
use tower_deepseek::auth::store::RedisTokenStore;
use tower_deepseek::auth::{BearerAuthLayer, OAuth2Layer};
use tower_deepseek::breaker::{CircuitBreakerLayer, FailoverLayer};
use tower_deepseek::cache::CacheLayer;
use tower_deepseek::client::upstream_client;
use tower_deepseek::core::body::BufferedBody;
use tower_deepseek::redact::RedactLayer;
use tower_deepseek::redact::audit::{AuditHandle, AuditLayer, JsonlFileSink, WriterSink};
use tower_deepseek::retry::cost::CostLayer;
use tower_deepseek::retry::fleet::FleetConfig;
use tower_deepseek::retry::rate_limit::RateLimitLayer;
use tower_deepseek::retry::timeout::TimeoutLayer;
use tower_deepseek::retry::{RetryConfig, RetryLayer};
use tower_deepseek::stack::{
    RecommendedStack, StackBody, StackConfigError, StackService, TokenClient,
};

use crate::StartError;
use crate::config::{GatewayConfig, UpstreamConfig};
use crate::upstream::pool::{self, Inner};
use crate::upstream::probe::Probe;
use crate::upstream::{Entry, Upstreams};

/// The stack around the upstream client (or the failover pool), taking the server's request
/// bodies. The service below it is boxed ([`Inner`]): one upstream's client, or the pool.
pub(crate) type Svc = StackService;

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

/// The layers built once at start and kept across reloads (their state lives on: cache
/// entries, breaker windows, the OAuth2 token, the audit chain, the connection pool), and the
/// settings the reloadable part is built from.
pub(crate) struct Fixed {
    audit: Option<AuditLayer>,
    redact: Option<RedactLayer>,
    review: Option<tower_deepseek::redact::ReviewLayer>,
    cache: Option<CacheLayer>,
    /// Built once: its budget tallies live across reloads.
    cost: Option<CostLayer>,
    breaker: Option<CircuitBreakerLayer>,
    timeout: Option<TimeoutLayer>,
    auth: Auth,
    retry: Option<RetryConfig>,
    inner: Inner<StackBody>,
    /// What the service below the stack runs, for [`Gateway::layers`](crate::Gateway::layers):
    /// `client`, or the pool's stages.
    below: Vec<&'static str>,
    /// The failover of a pool, and its upstreams' names and URLs in order: a reload sets
    /// their weights.
    pool: Option<(FailoverLayer, Vec<(String, String)>)>,
    l2: bool,
    /// The rate limiters of the running stack, by their effective settings, so that a reload
    /// keeps the windows of the limits it does not change.
    limiters: Mutex<Limiters>,
}

#[derive(Default)]
struct Limiters {
    default: Option<(String, RateLimitLayer, Option<RetryLayer>)>,
    tenants: HashMap<String, RateLimitLayer>,
}

enum Auth {
    Bearer(BearerAuthLayer),
    OAuth2(OAuth2Layer<TokenClient>),
    None,
}

/// What [`build`] made.
pub(crate) struct Built {
    pub(crate) fixed: Fixed,
    pub(crate) service: Svc,
    pub(crate) audit: Option<AuditHandle>,
    /// The audit layer, also for the answers the gateway makes itself (a refused key, a body
    /// too large), which never reach the stack.
    pub(crate) audit_layer: Option<AuditLayer>,
    pub(crate) wired: Vec<&'static str>,
    /// The review layer's handle (feedback), when `[review]` is set.
    pub(crate) review: Option<tower_deepseek::redact::review::ReviewHandle>,
    /// Every upstream, for `/readyz` and the metrics.
    pub(crate) upstreams: Upstreams,
    /// The active probes to start.
    pub(crate) probes: Vec<Probe>,
}

/// An OAuth2 layer for `oauth` (the global `[oauth2]` or an upstream's own), its token shared
/// through the fleet's Redis (`cache.redis_url`) when there is one.
pub(crate) fn oauth2_layer(
    oauth: &OAuth2Config,
    cfg: &GatewayConfig,
) -> Result<OAuth2Layer<TokenClient>, StartError> {
    let token_client = upstream_client::<BufferedBody>(&cfg.client);
    let mut builder = OAuth2Layer::builder(oauth.clone(), token_client);
    if let Some(url) = &cfg.cache.redis_url {
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

/// Where the audit records go: a file, or (to validate the settings without touching the
/// disk) nowhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuditSink {
    File,
    DryRun,
}

/// Builds the stack for `upstreams` from `cfg` (whose `cache.redis_url` is also the OAuth2
/// token store's Redis): the plain stack around one upstream's client, or (`pooled`) the stack
/// without its breaker, auth and timeout stages around the failover pool, which has them per
/// upstream.
pub(crate) fn build(
    cfg: &GatewayConfig,
    upstreams: &[UpstreamConfig],
    pooled: bool,
    credential: &Credential,
    sink: AuditSink,
) -> Result<Built, StartError> {
    let on = cfg.layers;
    let l2 = cfg.cache.redis_url.is_some() || !cfg.cache.redis_cluster_urls.is_empty();

    // The layers a file configures, validated by their own builders.
    let redact = on
        .redact
        .then(|| RedactLayer::from_config(cfg.redact.clone(), audit_hmac_key(cfg).ok()))
        .transpose()
        .map_err(|e| config_err("redact")(e.to_string()))?;
    let cache = on
        .cache
        .then(|| CacheLayer::from_config(cfg.cache.clone()))
        .transpose()
        .map_err(|e| config_err("cache")(e.to_string()))?;
    let breaker = on
        .breaker
        .then(|| CircuitBreakerLayer::from_config(cfg.breaker.clone()))
        .transpose()
        .map_err(|e| config_err("breaker")(e.to_string()))?;
    let timeout = on
        .timeout
        .then(|| TimeoutLayer::from_config(cfg.timeout))
        .transpose()
        .map_err(|e| config_err("timeout")(e.to_string()))?;
    if on.retry {
        // Validated here once; built (with the limiter's pause handle) by `compose`.
        RetryLayer::from_config(cfg.retry.clone())
            .map_err(|e| config_err("retry")(e.to_string()))?;
    }

    let auth = match credential {
        Credential::ApiKey(key) => Auth::Bearer(
            BearerAuthLayer::new(SecretString::from(key.expose_secret()))
                .map_err(|e| config_err("auth")(e.to_string()))?,
        ),
        Credential::OAuth2 => Auth::OAuth2(oauth2_layer(
            cfg.oauth2.as_ref().expect("checked by the caller"),
            cfg,
        )?),
        Credential::None => Auth::None,
    };

    let mut cost = None;
    if cfg.prices.is_some() || cfg.budgets.is_some() {
        let mut b = CostLayer::builder(cfg.prices.clone().unwrap_or_default());
        if let Some(budgets) = &cfg.budgets {
            let mut budgets = budgets.clone();
            // Where the fleet keeps the budgets: `[budgets.redis]`, else the quotas' Redis
            // settings (`[rate_limit.redis]`: the same Redis, key prefix, timeout and
            // `expected_instances`), else the cache's Redis with the fleet's defaults.
            if budgets.redis.is_none() {
                budgets.redis = budget_redis(cfg);
            }
            b = b.budgets(budgets);
        }
        cost = Some(b.build().map_err(|e| {
            // A Redis setting of the budgets names its table.
            let table = match e.field() {
                "redis_url" | "redis_cluster_urls" | "key_prefix" | "timeout_ms" | "retry_ms"
                | "expected_instances" => "budgets.redis",
                f if f.starts_with("budgets") => "budgets",
                _ => "prices",
            };
            config_err(table)(e.to_string())
        })?);
    }

    let mut audit = None;
    let mut audit_layer = None;
    if let (true, Some(path)) = (on.audit, &cfg.audit.path) {
        let a = &cfg.audit;
        let key = audit_hmac_key(cfg).unwrap_or_else(|_| {
            if sink == AuditSink::File {
                tracing::warn!(target: "tower_deepseek_gateway", env = %a.hmac_key_env, "no audit HMAC key in the environment: using a random key for this process");
            }
            (0..4).flat_map(|_| fastrand_bytes()).collect()
        });
        let builder = AuditLayer::builder()
            .hmac_key(key)
            .hash_chain(a.hash_chain)
            .on_sink_failure(a.on_sink_failure);
        let builder = match sink {
            AuditSink::File => builder.sink(
                JsonlFileSink::builder(path)
                    .max_bytes(a.max_bytes)
                    .keep(a.keep)
                    .fsync_interval(std::time::Duration::from_millis(a.fsync_interval_ms))
                    .open()
                    .map_err(|e| {
                        config_err("audit")(format!("cannot open {}: {e}", path.display()))
                    })?,
            ),
            AuditSink::DryRun => builder.sink(WriterSink::new(std::io::sink())),
        };
        let layer = builder
            .build()
            .map_err(|e| config_err("audit")(e.to_string()))?;
        audit = Some(layer.handle());
        audit_layer = Some(layer);
    }

    let review = crate::review::layer(cfg, audit_hmac_key(cfg).ok(), sink == AuditSink::DryRun)?;
    let review_handle = review.as_ref().map(|l| l.handle());

    // Built once: its permits, leases and AIMD limit live across reloads.
    let concurrency = cfg
        .concurrency
        .as_ref()
        .map(crate::concurrency::layer)
        .transpose()
        .map_err(config_err("concurrency"))?;

    let (fixed, upstreams, probes) = if pooled {
        // Each upstream: its breaker, credential, attempt timeouts and client.
        let global_oauth = match &auth {
            Auth::OAuth2(l) => Some(l),
            _ => None,
        };
        let p = pool::pool::<StackBody>(
            cfg,
            upstreams,
            credential,
            global_oauth,
            concurrency.as_ref(),
        )?;
        let mut below = vec!["failover", "breaker"];
        if timeout.is_some() {
            below.push("timeout");
        }
        if concurrency.is_some() {
            below.push("concurrency");
        }
        below.push("client");
        let fixed = Fixed {
            audit: audit_layer.clone(),
            redact,
            review,
            cache,
            cost,
            breaker: None,
            timeout: None,
            auth: Auth::None,
            retry: on.retry.then(|| cfg.retry.clone()),
            inner: p.inner,
            below,
            pool: Some((
                p.layer.clone(),
                upstreams
                    .iter()
                    .enumerate()
                    .map(|(i, u)| (pool::name_of(i, u), u.url.clone()))
                    .collect(),
            )),
            l2,
            limiters: Mutex::new(Limiters::default()),
        };
        let upstreams = Upstreams {
            entries: p.entries,
            failover: Some(p.layer),
            audit: audit.clone(),
        };
        (fixed, upstreams, p.probes)
    } else {
        let u = &upstreams[0];
        pool::check_name(0, &pool::name_of(0, u))?;
        let entry = Entry {
            name: pool::name_of(0, u),
            breaker: breaker.as_ref().map(CircuitBreakerLayer::handle),
            probe: None,
        };
        let fixed = Fixed {
            audit: audit_layer.clone(),
            redact,
            review,
            cache,
            cost,
            breaker,
            timeout,
            auth,
            retry: on.retry.then(|| cfg.retry.clone()),
            // Innermost: one span per upstream attempt, when tracing is on (`otel`); around it,
            // below the whole stack, the upstream account's concurrency cap (one permit per
            // attempt).
            inner: pool::single::<StackBody>(cfg, &u.url, concurrency.as_ref())?,
            below: if concurrency.is_some() {
                vec!["concurrency", "client"]
            } else {
                vec!["client"]
            },
            pool: None,
            l2,
            limiters: Mutex::new(Limiters::default()),
        };
        let upstreams = Upstreams {
            entries: vec![entry],
            failover: None,
            audit: audit.clone(),
        };
        (fixed, upstreams, Vec::new())
    };
    let (service, wired) = fixed.compose(cfg)?;
    Ok(Built {
        fixed,
        service,
        audit,
        audit_layer,
        wired,
        upstreams,
        probes,
        review: review_handle,
    })
}

impl Fixed {
    /// The upstream weights of `cfg` for the running pool, checked: `None` when there is no
    /// pool or `cfg` names no upstreams (the running weights stay). The upstreams themselves
    /// (their number, names and URLs, credentials, model maps, probes) are read at start only.
    pub(crate) fn weights(&self, cfg: &GatewayConfig) -> Result<Option<Vec<u32>>, StartError> {
        let restart = || {
            config_err("upstreams")(
                "the upstreams (their number, names and URLs) change only at a restart; a reload changes their weights".to_owned(),
            )
        };
        let Some((_, running)) = &self.pool else {
            return if cfg.upstreams.len() > 1 {
                Err(restart())
            } else {
                Ok(None)
            };
        };
        if cfg.upstreams.is_empty() {
            return Ok(None);
        }
        let same = cfg.upstreams.len() == running.len()
            && cfg
                .upstreams
                .iter()
                .enumerate()
                .zip(running)
                .all(|((i, u), (name, url))| pool::name_of(i, u) == *name && u.url == *url);
        if !same {
            return Err(restart());
        }
        Ok(Some(cfg.upstreams.iter().map(|u| u.weight).collect()))
    }

    /// Sets the pool's weights (from [`weights`](Self::weights)).
    pub(crate) fn set_weights(&self, weights: &[u32]) -> Result<(), StartError> {
        match &self.pool {
            Some((layer, _)) => layer
                .set_weights(weights)
                .map_err(|e| config_err("upstreams")(e.to_string())),
            None => Ok(()),
        }
    }

    /// The stack with the rate limits of `cfg` (`[rate_limit]` and the keys' own) around the
    /// layers built at start. A limiter whose settings did not change is kept (its window
    /// goes on); a changed one starts afresh.
    pub(crate) fn compose(
        &self,
        cfg: &GatewayConfig,
    ) -> Result<(Svc, Vec<&'static str>), StartError> {
        let mut limiters = self.limiters.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = Limiters::default();
        let mut b = RecommendedStack::builder();
        if let Some(l) = &self.audit {
            b = b.audit(l.clone());
        }
        if let Some(l) = &self.redact {
            b = b.redact(l.clone());
        }
        if let Some(l) = &self.review {
            b = b.review(l.clone());
        }
        if let Some(l) = &self.cache {
            b = b.cache(l.clone());
        }
        if let Some(l) = &self.cost {
            b = b.cost(l.clone());
        }
        if cfg.layers.rate_limit {
            let id = format!("{:?}", cfg.rate_limit);
            let (limiter, retry) = match &limiters.default {
                Some((old, l, r)) if *old == id => (l.clone(), r.clone()),
                _ => {
                    let l = RateLimitLayer::from_config(cfg.rate_limit.clone())
                        .map_err(|e| config_err("rate_limit")(e.to_string()))?;
                    (l, None)
                }
            };
            let retry = match (retry, &self.retry) {
                (Some(r), _) => Some(r),
                (None, Some(c)) => Some(
                    RetryLayer::builder()
                        .config(c.clone())
                        .pause_on_rate_limit(limiter.pause_handle())
                        .build()
                        .map_err(|e| config_err("retry")(e.to_string()))?,
                ),
                (None, None) => None,
            };
            if let Some(r) = &retry {
                b = b.retry(r.clone());
            }
            b = b.rate_limit(limiter.clone());
            next.default = Some((id, limiter, retry));
            for key in cfg.keys.iter().filter(|k| k.has_own_limits()) {
                let tenant =
                    crate::inbound::tenant_for(key).map_err(|e| StartError::Keys(e.to_string()))?;
                let mut c = cfg.rate_limit.clone();
                c.requests_per_minute = key.requests_per_minute.or(c.requests_per_minute);
                c.tokens_per_minute = key.tokens_per_minute.or(c.tokens_per_minute);
                // One limiter per such client: its quota is its own whatever `key_by` says.
                c.key_by = Default::default();
                // Shared through Redis: the client's quota under a prefix of its own (a digest of
                // the tenant), so that it is neither the default limiter's nor another client's.
                if let Some(redis) = &mut c.redis {
                    redis.key_prefix = format!(
                        "{}:tenant:{}",
                        redis.key_prefix,
                        tower_deepseek::retry::fleet::Fleet::digest(tenant.as_str())
                    );
                }
                let id = format!("{}\0{c:?}", tenant.as_str());
                let layer = match limiters.tenants.get(&id).cloned() {
                    Some(l) => l,
                    None => RateLimitLayer::from_config(c)
                        .map_err(|e| config_err("rate_limit")(e.to_string()))?,
                };
                next.tenants.insert(id, layer.clone());
                b = b.tenant_rate_limit(tenant, layer);
            }
        } else if let Some(c) = &self.retry {
            b = b.retry(
                RetryLayer::builder()
                    .config(c.clone())
                    .build()
                    .map_err(|e| config_err("retry")(e.to_string()))?,
            );
        }
        if let Some(l) = &self.breaker {
            b = b.circuit_breaker(l.clone());
        }
        if let Some(l) = self.timeout {
            b = b.timeout(l);
        }
        let b = match &self.auth {
            Auth::Bearer(l) => b.bearer_auth(l.clone()),
            Auth::OAuth2(l) => b.oauth2(l.clone()),
            Auth::None => b,
        };
        let stack = b.build().map_err(stack_err)?;
        *limiters = next;
        let mut wired: Vec<&'static str> = stack
            .layers()
            .into_iter()
            .map(|name| match name {
                "cache" if self.l2 => "cache_l1_l2",
                "cache" => "cache_l1",
                "circuit_breaker" => "breaker",
                other => other,
            })
            .collect();
        wired.extend(self.below.iter().copied());
        Ok((stack.layer(self.inner.clone()), wired))
    }
}

/// 8 random bytes from the request-id generator of core (128 random bits per id).
fn fastrand_bytes() -> Vec<u8> {
    let id = tower_deepseek::core::meta::RequestId::generate();
    hex::decode(&id.as_str()[..16]).unwrap_or_default()
}

fn audit_hmac_key(cfg: &GatewayConfig) -> Result<Vec<u8>, std::env::VarError> {
    std::env::var(&cfg.audit.hmac_key_env).map(String::into_bytes)
}

/// The Redis settings of the budgets when `[budgets.redis]` is absent: `[rate_limit.redis]`
/// when there is one (an operator describes the fleet once), else the cache's Redis (`--redis`)
/// with the fleet's defaults (a warning says what that means while Redis is down), else none
/// (budgets in this process's memory).
fn budget_redis(cfg: &GatewayConfig) -> Option<FleetConfig> {
    if let Some(r) = &cfg.rate_limit.redis {
        return Some(r.clone());
    }
    let mut r = FleetConfig::default();
    if let Some(url) = &cfg.cache.redis_url {
        r.redis_url = Some(url.clone());
    } else if !cfg.cache.redis_cluster_urls.is_empty() {
        r.redis_cluster_urls = cfg.cache.redis_cluster_urls.clone();
    } else {
        return None;
    }
    tracing::warn!(
        target: "tower_deepseek_gateway",
        "budgets use the cache's Redis with the fleet defaults (expected_instances = 1: while Redis is down, each gateway allows the whole budget); set [budgets.redis] or [rate_limit.redis]"
    );
    Some(r)
}

#[cfg(test)]
mod budget_redis_tests {
    use super::*;

    #[test]
    fn budgets_follow_the_rate_limits_redis_else_the_caches() {
        let cfg = |text: &str| GatewayConfig::from_toml(text).unwrap();
        // Neither: budgets in memory.
        assert_eq!(budget_redis(&cfg("[budgets]\n")), None);
        // The cache's Redis only: the fleet defaults.
        let r = budget_redis(&cfg(
            "[cache]\nredis_url = \"redis://10.0.0.1:6379\"\n[budgets]\n",
        ))
        .unwrap();
        assert_eq!(r.redis_url.as_deref(), Some("redis://10.0.0.1:6379"));
        assert_eq!(r.expected_instances, 1);
        // `[rate_limit.redis]`: its settings, the prefix and the share included.
        let r = budget_redis(&cfg("[cache]\nredis_url = \"redis://10.0.0.1:6379\"\n\
             [rate_limit.redis]\nredis_url = \"redis://10.0.0.2:6379\"\nkey_prefix = \"staging\"\n\
             timeout_ms = 20\nexpected_instances = 3\n[budgets]\n"))
        .unwrap();
        assert_eq!(r.redis_url.as_deref(), Some("redis://10.0.0.2:6379"));
        assert_eq!(r.key_prefix, "staging");
        assert_eq!(r.timeout, std::time::Duration::from_millis(20));
        assert_eq!(r.expected_instances, 3);
        // `[budgets.redis]` is parsed into the budgets' own settings (which `build` prefers).
        let c =
            cfg("[budgets.redis]\nredis_url = \"redis://10.0.0.3:6379\"\nexpected_instances = 4\n");
        let own = c.budgets.unwrap().redis.unwrap();
        assert_eq!(own.expected_instances, 4);
    }
}
