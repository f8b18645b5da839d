//! The gateway's TOML configuration: one table per layer, reusing each crate's own
//! `serde::Deserialize` configuration type, plus the gateway's own settings.
//!
//! Durations are integers of milliseconds in fields ending in `_ms`, as in every layer crate.
//! Every table is optional; unknown keys are errors (a typo never goes unnoticed).
//!
//! ```toml
//! [server]
//! drain_timeout_ms = 30000
//!
//! # Clients allowed in: SHA-256 of the key, hex (`printf %s "$KEY" | sha256sum`).
//! [[keys]]
//! sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//! tenant = "acme"
//! requests_per_minute = 600
//! tokens_per_minute = 1000000
//!
//! [layers]        # every layer is on by default; audit needs --audit-log or [audit] path
//! cache = true
//!
//! [client]        # tower_deepseek::client::ClientConfig
//! connect_timeout_ms = 5000
//! [timeout]       # tower_deepseek_retry::timeout::TimeoutConfig
//! first_token_ms = 60000
//! [retry]         # tower_deepseek_retry::RetryConfig
//! max_attempts = 5
//! [rate_limit]    # tower_deepseek_retry::rate_limit::RateLimitConfig (defaults for keys without own limits)
//! requests_per_minute = 3000
//! key_by = "tenant"
//! [rate_limit.redis]  # optional: quotas shared by every gateway on this Redis (fleet::FleetConfig)
//! redis_url = "redis://127.0.0.1:6379"   # or redis_cluster_urls = [...]; rediss:// and AUTH
//! key_prefix = "deepseek-gateway:fleet"
//! timeout_ms = 50                        # slower: this gateway uses its local share
//! expected_instances = 3                 # local share = quota / 3 while Redis is down
//! [concurrency]   # tower_deepseek_retry::concurrency::AdaptiveConcurrencyConfig: a cap on calls in flight upstream
//! initial = 16                           # initial = max: a fixed cap C, lowered (AIMD) after a 429
//! max = 16
//! account = "prod"                       # the upstream account the cap belongs to
//! [concurrency.redis]                    # optional: one cap for every gateway on this Redis (leases)
//! redis_url = "redis://127.0.0.1:6379"
//! [cache]         # tower_deepseek_cache::CacheConfig (`--redis` sets redis_url; also the OAuth2 token store)
//! l1_ttl_ms = 300000
//! [breaker]       # tower_deepseek_breaker::CircuitBreakerConfig
//! failure_rate_threshold = 50.0
//! [redact]        # tower_deepseek_redact::RedactConfig
//! default_mode = "placeholder"
//! [audit]         # the gateway's audit settings
//! hash_chain = true
//! [review]        # quality review (crate::review): sampled calls, feedback, evaluation
//! path = "review.jsonl"
//! [oauth2]        # tower_deepseek_auth::OAuth2Config (instead of DEEPSEEK_API_KEY)
//! token_url = "https://auth.example.com/oauth2/token"
//! client_id = "gateway"
//! client_secret = "..."
//!
//! # Active-active upstreams (instead of --upstream); each its own pool, breaker, credential.
//! [[upstreams]]
//! name = "az1"                      # the label in metrics and /readyz (default upstream-N)
//! url = "https://az1.example.com"
//! weight = 2
//! api_key_env = "DEEPSEEK_API_KEY_AZ1"   # or an [upstreams.oauth2] table; default: the global one
//! [upstreams.models]                # the model name to send there
//! "deepseek-chat" = "deepseek-v3"
//! [upstreams.probe]                 # optional active health check: GET <url>/models
//! interval_ms = 10000
//! [health]        # passive health: latency ejection
//! latency_threshold_ms = 10000
//! [websocket]     # WebSocketConfig: GET /v1/chat/completions/ws
//! idle_timeout_ms = 300000
//! [prices]        # tower_deepseek_retry::cost::PriceTable (docs/prices.example.toml)
//! currency = "USD"
//! [prices.models.deepseek-chat]
//! cache_hit = 0.028
//! cache_miss = 0.28
//! output = 0.42
//! [budgets]       # tower_deepseek_retry::cost::CostBudgets (per tenant)
//! default = { daily_cost = "5", monthly_tokens = 100000000 }
//! tenants.acme = { monthly_cost = "500" }
//! [budgets.redis]  # optional: budgets shared by every gateway on this Redis and key_prefix
//! redis_url = "redis://127.0.0.1:6379"   # absent: [rate_limit.redis], else the cache's Redis
//! key_prefix = "deepseek-gateway:prod"   # one per environment sharing the Redis
//! expected_instances = 3                 # while Redis is down: limit / 3 per gateway
//! [otel]          # crate::otel::OtelConfig: traces over OTLP (feature `otel`); absent = off
//! endpoint = "http://127.0.0.1:4318"
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tower_deepseek::auth::OAuth2Config;
use tower_deepseek::breaker::CircuitBreakerConfig;
use tower_deepseek::cache::CacheConfig;
use tower_deepseek::client::ClientConfig;
use tower_deepseek::redact::RedactConfig;
use tower_deepseek::redact::audit::SinkFailurePolicy;
use tower_deepseek::retry::RetryConfig;
use tower_deepseek::retry::concurrency::AdaptiveConcurrencyConfig;
use tower_deepseek::retry::cost::{CostBudgets, PriceTable};
use tower_deepseek::retry::rate_limit::RateLimitConfig;
use tower_deepseek::retry::timeout::TimeoutConfig;

pub use crate::otel::OtelConfig;
pub use crate::ws::config::WebSocketConfig;

/// The whole configuration file. See the [module docs](self).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct GatewayConfig {
    /// The gateway's own server settings.
    pub server: ServerConfig,
    /// Client keys allowed in. Empty: any client, and only on a loopback address.
    pub keys: Vec<ClientKey>,
    /// Which layers are on.
    pub layers: LayersConfig,
    /// The upstream HTTP client.
    pub client: ClientConfig,
    /// Attempt timeouts (right above the client).
    pub timeout: TimeoutConfig,
    /// Retries.
    pub retry: RetryConfig,
    /// Rate limits for clients without limits of their own.
    pub rate_limit: RateLimitConfig,
    /// A cap on calls in flight at the upstream (`[concurrency]`), adapted to 429s (AIMD);
    /// with `[concurrency.redis]`, one cap for every gateway sharing that Redis and `account`
    /// (leases that expire when their holder dies). Absent: no cap. Read at start only.
    pub concurrency: Option<AdaptiveConcurrencyConfig>,
    /// The response cache.
    pub cache: CacheConfig,
    /// The circuit breaker.
    pub breaker: CircuitBreakerConfig,
    /// PII masking.
    pub redact: RedactConfig,
    /// Audit records.
    pub audit: AuditConfig,
    /// OAuth2 client credentials for the upstream (instead of `DEEPSEEK_API_KEY`).
    pub oauth2: Option<OAuth2Config>,
    /// Active-active upstreams (`[[upstreams]]`). Empty: the one `--upstream`.
    pub upstreams: Vec<UpstreamConfig>,
    /// Passive and active health of the upstreams.
    pub health: HealthConfig,
    /// The WebSocket route.
    pub websocket: WebSocketConfig,
    /// The price table: with it (or with `[budgets]`) each call is priced from its usage
    /// (`tower_deepseek_retry::cost`), counted in `deepseek_cost_micros_total{tenant,model}`
    /// and written in the audit record. See `docs/prices.example.toml`.
    pub prices: Option<PriceTable>,
    /// Budgets per tenant (so per client key) or for all, per day and month, in money (the
    /// price table's currency) or tokens; shared by the fleet through `[budgets.redis]`, else
    /// `[rate_limit.redis]`'s settings, else the cache's Redis (`--redis`) with the defaults.
    pub budgets: Option<CostBudgets>,
    /// OpenTelemetry traces over OTLP ([`OtelConfig`]); absent: no tracing. Needs the
    /// crate's `otel` feature: a gateway built without it refuses the table.
    pub otel: Option<OtelConfig>,
    /// Quality review: sampled calls to a file, feedback, evaluation
    /// ([`crate::review::ReviewTable`]). Absent: off.
    pub review: Option<crate::review::ReviewTable>,
}

/// One upstream of an active-active set (`[[upstreams]]`): its own connection pool, circuit
/// breaker, credential and model names.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct UpstreamConfig {
    /// Its name: the label in metrics, logs and `/readyz` (never the URL, which may hold
    /// credentials). Default `upstream-N` (N from 0, in file order).
    #[serde(default)]
    pub name: Option<String>,
    /// The base URL (`https://api.deepseek.com`, `http://10.0.0.7:8080/v1`).
    pub url: String,
    /// Its share of the traffic relative to the others. Default 1; 0 = standby, used only
    /// when no weighted upstream is usable.
    #[serde(default = "one")]
    pub weight: u32,
    /// The environment variable holding this upstream's API key. Default: the global
    /// credential (`DEEPSEEK_API_KEY` or `[oauth2]`). Not together with `oauth2`.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// OAuth2 client credentials for this upstream (`[upstreams.oauth2]`).
    #[serde(default)]
    pub oauth2: Option<OAuth2Config>,
    /// Model names to send to this upstream: the client's name → this upstream's name (for a
    /// provider that serves DeepSeek models under other names). Names not listed go as they are.
    #[serde(default)]
    pub models: BTreeMap<String, String>,
    /// An active health check (`[upstreams.probe]`); none by default.
    #[serde(default)]
    pub probe: Option<ProbeConfig>,
}

fn one() -> u32 {
    1
}

impl UpstreamConfig {
    /// An upstream at `url`, weight 1, the global credential, no model map, no probe.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            name: None,
            url: url.into(),
            weight: 1,
            api_key_env: None,
            oauth2: None,
            models: BTreeMap::new(),
            probe: None,
        }
    }

    /// With a name.
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// With a weight.
    #[must_use]
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// With its API key from the environment variable `var`.
    #[must_use]
    pub fn api_key_env(mut self, var: impl Into<String>) -> Self {
        self.api_key_env = Some(var.into());
        self
    }

    /// With a model name mapping (`from` as clients send it, `to` as this upstream wants it).
    #[must_use]
    pub fn model(mut self, from: impl Into<String>, to: impl Into<String>) -> Self {
        self.models.insert(from.into(), to.into());
        self
    }

    /// With an active probe.
    #[must_use]
    pub fn probe(mut self, probe: ProbeConfig) -> Self {
        self.probe = Some(probe);
        self
    }
}

/// An upstream's active health check (`[upstreams.probe]`): `GET <url><path>` every
/// `interval_ms`; a failure (no answer within `timeout_ms`, or not a 2xx) after
/// `unhealthy_after` in a row takes the upstream out, a success after `healthy_after` in a
/// row brings an ejected upstream back.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ProbeConfig {
    /// The path probed, relative to the upstream's URL. Default `/models`.
    pub path: String,
    /// How often. Default 10 000.
    #[serde(
        rename = "interval_ms",
        with = "tower_deepseek::core::config::duration_ms"
    )]
    pub interval: Duration,
    /// How long one probe may take. Default 5 000.
    #[serde(
        rename = "timeout_ms",
        with = "tower_deepseek::core::config::duration_ms"
    )]
    pub timeout: Duration,
    /// Failed probes in a row that take the upstream out. Default 2.
    pub unhealthy_after: u32,
    /// Successful probes in a row that bring it back. Default 1.
    pub healthy_after: u32,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            path: "/models".to_owned(),
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
            unhealthy_after: 2,
            healthy_after: 1,
        }
    }
}

impl ProbeConfig {
    /// Sets the interval.
    #[must_use]
    pub fn interval(mut self, d: Duration) -> Self {
        self.interval = d;
        self
    }

    /// Sets the timeout of one probe.
    #[must_use]
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }
}

/// Passive health of the upstreams (`[health]`): the latency ejection of the guide's Nginx
/// rule. Each upstream's latency (time to its first content) is averaged (an EWMA, so the last
/// few calls dominate); above `latency_threshold_ms` its weight is 0 until a recovery call
/// (one every `latency_probe_interval_ms`) comes back under it. Its breaker (`[breaker]`'s
/// settings, one per upstream) takes it out on errors.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct HealthConfig {
    /// The latency above which an upstream's weight drops to 0. Default 10 000; `null` or 0
    /// turns latency ejection off.
    #[serde(
        rename = "latency_threshold_ms",
        with = "tower_deepseek::core::config::option_duration_ms"
    )]
    pub latency_threshold: Option<Duration>,
    /// How often an upstream dropped for latency gets one real call to see whether it
    /// recovered. Default 5 000.
    #[serde(
        rename = "latency_probe_interval_ms",
        with = "tower_deepseek::core::config::duration_ms"
    )]
    pub latency_probe_interval: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            latency_threshold: Some(Duration::from_secs(10)),
            latency_probe_interval: Duration::from_secs(5),
        }
    }
}

/// The gateway's own server settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ServerConfig {
    /// The address to listen on (`--listen`). Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// After SIGTERM, how long requests and streams in flight may take to finish. Default 30 000.
    pub drain_timeout_ms: u64,
    /// Proxies (CIDR) whose `x-forwarded-for` is believed for the client IP. Default none.
    pub trusted_proxies: Vec<String>,
    /// Allow a non-loopback listen address without client keys (an open relay for the
    /// upstream credential: only behind another authenticating proxy). Default false.
    pub allow_open_non_loopback: bool,
    /// The largest request headers a proxied route accepts, in bytes (names and values plus
    /// 32 per field, as HTTP/2 counts them); larger ones get a 431 in the OpenAI error shape.
    /// Default 32 768. (hyper's own limits lie above it: about 400 KiB of buffer and 100
    /// fields for HTTP/1.1, where hyper itself answers 431.)
    pub max_header_bytes: usize,
    /// How long a client has to send a whole request head (HTTP/1.1), from its first byte, or
    /// from the end of the previous answer on a kept-alive connection (so also how long an
    /// idle keep-alive connection stays open). A slower client (slowloris) is disconnected.
    /// Default 10 000.
    pub header_read_timeout_ms: u64,
    /// Connections served at once. Beyond it, a few more get `/healthz` and a 503
    /// `too_many_connections` on everything else, and the rest are closed at once. Keep it well
    /// under the process's file-descriptor limit (`ulimit -n`), which the upstream connections
    /// share. Default 1 024.
    pub max_connections: usize,
    /// How long a client has to send a whole request body, from the end of its head; a client
    /// that trickles it gets a 408 in the OpenAI shape. Default 30 000.
    pub body_read_timeout_ms: u64,
    /// The largest request body read, in bytes; larger ones get a 413. Default 8 MiB (the
    /// layers' own body limits apply too).
    pub max_body_bytes: usize,
    /// A connection with no request in flight for this long is closed gracefully (HTTP/2:
    /// `GOAWAY`; an idle HTTP/1.1 connection meets `header_read_timeout_ms` first). Default
    /// 60 000.
    pub idle_timeout_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            drain_timeout_ms: 30_000,
            trusted_proxies: Vec::new(),
            allow_open_non_loopback: false,
            max_header_bytes: 32 * 1024,
            header_read_timeout_ms: 10_000,
            max_connections: 1024,
            body_read_timeout_ms: 30_000,
            max_body_bytes: tower_deepseek::core::body::DEFAULT_BODY_LIMIT,
            idle_timeout_ms: 60_000,
        }
    }
}

/// One client key allowed in.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ClientKey {
    /// SHA-256 of the key, 64 hex digits. The key itself is never stored.
    pub sha256: String,
    /// The tenant name (cache scope, limits, audit). Default: derived from the hash.
    #[serde(default)]
    pub tenant: Option<String>,
    /// This client's own requests-per-minute limit (else `[rate_limit]`'s).
    #[serde(default)]
    pub requests_per_minute: Option<u32>,
    /// This client's own tokens-per-minute limit (else `[rate_limit]`'s).
    #[serde(default)]
    pub tokens_per_minute: Option<u64>,
}

impl ClientKey {
    /// An entry for `sha256` (hex).
    pub fn new(sha256: impl Into<String>) -> Self {
        Self {
            sha256: sha256.into(),
            tenant: None,
            requests_per_minute: None,
            tokens_per_minute: None,
        }
    }

    /// With a tenant name.
    #[must_use]
    pub fn tenant(mut self, name: impl Into<String>) -> Self {
        self.tenant = Some(name.into());
        self
    }

    /// With its own requests-per-minute limit.
    #[must_use]
    pub fn requests_per_minute(mut self, n: u32) -> Self {
        self.requests_per_minute = Some(n);
        self
    }

    /// With its own tokens-per-minute limit.
    #[must_use]
    pub fn tokens_per_minute(mut self, n: u64) -> Self {
        self.tokens_per_minute = Some(n);
        self
    }

    /// Whether this key has limits of its own.
    pub fn has_own_limits(&self) -> bool {
        self.requests_per_minute.is_some() || self.tokens_per_minute.is_some()
    }
}

impl fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The hash is not a secret, but nothing is gained by printing it.
        f.debug_struct("ClientKey")
            .field("tenant", &self.tenant)
            .field("requests_per_minute", &self.requests_per_minute)
            .field("tokens_per_minute", &self.tokens_per_minute)
            .finish_non_exhaustive()
    }
}

/// Which layers are on (all by default; audit also needs a log path).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct LayersConfig {
    /// `AuditLayer`.
    pub audit: bool,
    /// `RedactLayer`.
    pub redact: bool,
    /// `CacheLayer`.
    pub cache: bool,
    /// `RateLimitLayer`.
    pub rate_limit: bool,
    /// `RetryLayer`.
    pub retry: bool,
    /// `CircuitBreakerLayer`.
    pub breaker: bool,
    /// `TimeoutLayer`.
    pub timeout: bool,
}

impl Default for LayersConfig {
    fn default() -> Self {
        Self {
            audit: true,
            redact: true,
            cache: true,
            rate_limit: true,
            retry: true,
            breaker: true,
            timeout: true,
        }
    }
}

/// Audit settings (the `AuditLayer` has a builder, not a serde type).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct AuditConfig {
    /// The JSON Lines file (`--audit-log`).
    pub path: Option<PathBuf>,
    /// Rotate at this size. Default 100 MiB.
    pub max_bytes: u64,
    /// Rotated files kept. Default 10.
    pub keep: usize,
    /// Hash-chain the records. Default true.
    pub hash_chain: bool,
    /// What a failing sink does. Default `fail_closed`.
    pub on_sink_failure: SinkFailurePolicy,
    /// Environment variable holding the HMAC key (at least 16 bytes) for tenant, key and
    /// prompt hashes. Default `GATEWAY_AUDIT_HMAC_KEY`; when unset, a random key per process
    /// (hashes then do not correlate across restarts).
    pub hmac_key_env: String,
    /// How often the records written to the file are `fsync`ed, in milliseconds (each record
    /// reaches the OS before its answer completes; this bounds what a power loss can take).
    /// Default 1000; 0 syncs every record before its answer completes.
    pub fsync_interval_ms: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            path: None,
            max_bytes: 100 * 1024 * 1024,
            keep: 10,
            hash_chain: true,
            on_sink_failure: SinkFailurePolicy::FailClosed,
            hmac_key_env: "GATEWAY_AUDIT_HMAC_KEY".to_owned(),
            fsync_interval_ms: 1000,
        }
    }
}

/// The configuration file could not be read or parsed.
#[derive(Debug)]
#[non_exhaustive]
pub struct ConfigFileError {
    path: PathBuf,
    message: String,
}

impl fmt::Display for ConfigFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "config file {}: {}", self.path.display(), self.message)
    }
}

impl std::error::Error for ConfigFileError {}

impl GatewayConfig {
    /// Parses TOML text.
    ///
    /// # Errors
    ///
    /// The text is not valid TOML for this configuration (the message names the key).
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// Reads and parses a TOML file.
    ///
    /// # Errors
    ///
    /// The file cannot be read or does not parse.
    pub fn load(path: &Path) -> Result<Self, ConfigFileError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigFileError {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        Self::from_toml(&text).map_err(|e| ConfigFileError {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_parses() {
        let text = include_str!("../gateway.example.toml");
        let cfg = GatewayConfig::from_toml(text).unwrap();
        assert_eq!(cfg.keys.len(), 2);
        assert_eq!(cfg.keys[0].tenant.as_deref(), Some("acme"));
        assert_eq!(cfg.keys[0].requests_per_minute, Some(600));
        assert_eq!(cfg.retry.max_attempts, 5);
        assert_eq!(cfg.rate_limit.requests_per_minute, Some(3000));
        assert!(cfg.oauth2.is_none());
        assert!(!format!("{:?}", cfg.keys[0]).contains(&cfg.keys[0].sha256));
        let cc = cfg.concurrency.as_ref().unwrap();
        assert_eq!(
            (cc.initial, cc.max, cc.account.as_str()),
            (32, 32, "default")
        );
        assert!(cc.redis.is_none());
    }

    #[test]
    fn the_concurrency_table_is_optional_and_takes_a_fleet() {
        assert!(GatewayConfig::from_toml("").unwrap().concurrency.is_none());
        let cfg = GatewayConfig::from_toml(
            "[concurrency]\nmax = 4\ninitial = 4\nlease_ttl_ms = 1500\n\
             [concurrency.redis]\nredis_url = \"redis://127.0.0.1:6379\"\nexpected_instances = 2\n",
        )
        .unwrap();
        let cc = cfg.concurrency.unwrap();
        assert_eq!((cc.initial, cc.max, cc.min), (4, 4, 1));
        assert_eq!(cc.lease_ttl, Duration::from_millis(1500));
        assert_eq!(cc.redis.unwrap().expected_instances, 2);
        let err = GatewayConfig::from_toml("[concurrency]\nmaxx = 4\n").unwrap_err();
        assert!(err.to_string().contains("maxx"), "{err}");
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = GatewayConfig::from_toml("[retry]\nmax_atempts = 3\n").unwrap_err();
        assert!(err.to_string().contains("max_atempts"), "{err}");
        let err = GatewayConfig::from_toml("[nonsense]\n").unwrap_err();
        assert!(err.to_string().contains("nonsense"), "{err}");
    }

    #[test]
    fn empty_file_is_all_defaults() {
        let cfg = GatewayConfig::from_toml("").unwrap();
        assert!(cfg.keys.is_empty());
        assert!(cfg.layers.cache && cfg.layers.retry);
        assert_eq!(cfg.server.drain_timeout_ms, 30_000);
        assert_eq!(cfg.server.max_header_bytes, 32 * 1024);
        assert!(!cfg.retry.wait_for_open_breaker);
        assert!(cfg.upstreams.is_empty());
        assert_eq!(cfg.health.latency_threshold, Some(Duration::from_secs(10)));
    }

    #[test]
    fn upstreams_parse_with_defaults() {
        let cfg = GatewayConfig::from_toml(
            r#"
[[upstreams]]
url = "http://a.test"
[[upstreams]]
name = "az2"
url = "http://b.test/v1"
weight = 3
api_key_env = "KEY_B"
[upstreams.models]
"deepseek-chat" = "ds-chat"
[upstreams.probe]
interval_ms = 250
[health]
latency_threshold_ms = 800
"#,
        )
        .unwrap();
        assert_eq!(cfg.upstreams.len(), 2);
        assert_eq!(cfg.upstreams[0].weight, 1);
        assert!(cfg.upstreams[0].probe.is_none() && cfg.upstreams[0].name.is_none());
        let b = &cfg.upstreams[1];
        assert_eq!((b.name.as_deref(), b.weight), (Some("az2"), 3));
        assert_eq!(b.api_key_env.as_deref(), Some("KEY_B"));
        assert_eq!(b.models["deepseek-chat"], "ds-chat");
        let probe = b.probe.as_ref().unwrap();
        assert_eq!(probe.interval, Duration::from_millis(250));
        assert_eq!(
            (probe.path.as_str(), probe.timeout),
            ("/models", Duration::from_secs(5))
        );
        assert_eq!(
            cfg.health.latency_threshold,
            Some(Duration::from_millis(800))
        );
        let err = GatewayConfig::from_toml("[[upstreams]]\nurl = \"http://a\"\nwieght = 2\n")
            .unwrap_err();
        assert!(err.to_string().contains("wieght"), "{err}");
    }
}
