use std::fmt;
use std::time::Duration;

use http::Uri;
use secrecy::SecretString;
use serde::Deserialize;
use tower_deepseek_core::body::DEFAULT_BODY_LIMIT;

use tower_deepseek_core::config::duration_ms;

use crate::error::ConfigError;

/// The guide's token lifetime, used when the token endpoint sends no `expires_in`: 2 hours.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(2 * 60 * 60);
/// The guide's refresh margin: refresh 10 minutes before expiry.
pub const DEFAULT_REFRESH_MARGIN: Duration = Duration::from_secs(10 * 60);
/// Default jitter on the refresh time (so a fleet does not refresh in the same second): 1 minute.
pub const DEFAULT_REFRESH_JITTER: Duration = Duration::from_secs(60);
/// Default bound on obtaining a token, all attempts included: 10 seconds.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);
/// Default bound on one request to the token endpoint: 5 seconds.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default bound on waiting for another instance's fetch (through a shared store): 3 seconds.
pub const DEFAULT_STORE_WAIT: Duration = Duration::from_secs(3);

/// Settings of [`OAuth2Layer`](super::OAuth2Layer) (client-credentials grant).
///
/// Build it with [`OAuth2Config::new`] and the setters, or deserialize it (e.g. from TOML).
/// Durations are written as milliseconds in fields ending in `_ms`:
///
/// ```
/// # use tower_deepseek_auth::oauth2::OAuth2Config;
/// let config: OAuth2Config = serde_json::from_str(r#"{
///     "token_url": "https://auth.example.com/oauth2/token",
///     "client_id": "my-client",
///     "client_secret": "s3cr3t",
///     "scope": "chat",
///     "refresh_margin_ms": 600000
/// }"#).unwrap();
/// assert!(!format!("{config:?}").contains("s3cr3t"));
/// config.validate().unwrap();
/// ```
///
/// `Debug` prints the secret as `[REDACTED]`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuth2Config {
    token_url: String,
    client_id: String,
    client_secret: SecretString,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    audience: Option<String>,
    #[serde(
        default = "defaults::margin",
        rename = "refresh_margin_ms",
        with = "duration_ms"
    )]
    refresh_margin: Duration,
    #[serde(
        default = "defaults::jitter",
        rename = "refresh_jitter_ms",
        with = "duration_ms"
    )]
    refresh_jitter: Duration,
    #[serde(
        default = "defaults::lifetime",
        rename = "default_lifetime_ms",
        with = "duration_ms"
    )]
    default_lifetime: Duration,
    #[serde(
        default = "defaults::deadline",
        rename = "deadline_ms",
        with = "duration_ms"
    )]
    deadline: Duration,
    #[serde(
        default = "defaults::attempt",
        rename = "attempt_timeout_ms",
        with = "duration_ms"
    )]
    attempt_timeout: Duration,
    #[serde(
        default = "defaults::store_wait",
        rename = "store_wait_ms",
        with = "duration_ms"
    )]
    store_wait: Duration,
    #[serde(default = "defaults::body_limit")]
    body_limit: usize,
    #[serde(default)]
    store_key: Option<String>,
    #[serde(default = "defaults::yes")]
    replay_on_401: bool,
}

mod defaults {
    use std::time::Duration;

    pub(super) fn margin() -> Duration {
        super::DEFAULT_REFRESH_MARGIN
    }
    pub(super) fn jitter() -> Duration {
        super::DEFAULT_REFRESH_JITTER
    }
    pub(super) fn lifetime() -> Duration {
        super::DEFAULT_LIFETIME
    }
    pub(super) fn deadline() -> Duration {
        super::DEFAULT_DEADLINE
    }
    pub(super) fn attempt() -> Duration {
        super::DEFAULT_ATTEMPT_TIMEOUT
    }
    pub(super) fn store_wait() -> Duration {
        super::DEFAULT_STORE_WAIT
    }
    pub(super) fn yes() -> bool {
        true
    }
    pub(super) fn body_limit() -> usize {
        super::DEFAULT_BODY_LIMIT
    }
}

impl OAuth2Config {
    /// Settings for `client_id`/`client_secret` at `token_url`, with the guide's defaults:
    /// refresh 10 minutes before expiry (jittered by up to 1 minute), 2 hours when the token
    /// endpoint sends no `expires_in`, 10 s to obtain a token (5 s per attempt), an 8 MiB
    /// request-body limit for 401 replays.
    pub fn new(
        token_url: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: impl Into<SecretString>,
    ) -> Self {
        Self {
            token_url: token_url.into(),
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            scope: None,
            audience: None,
            refresh_margin: DEFAULT_REFRESH_MARGIN,
            refresh_jitter: DEFAULT_REFRESH_JITTER,
            default_lifetime: DEFAULT_LIFETIME,
            deadline: DEFAULT_DEADLINE,
            attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT,
            store_wait: DEFAULT_STORE_WAIT,
            body_limit: DEFAULT_BODY_LIMIT,
            store_key: None,
            replay_on_401: true,
        }
    }

    /// The `scope` form parameter (default none).
    #[must_use]
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = Some(scope.into());
        self
    }

    /// The `audience` form parameter (default none).
    #[must_use]
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// How long before expiry a background refresh starts (default 10 minutes). When a token
    /// lives shorter than twice the margin, the refresh starts at half its life instead.
    #[must_use]
    pub fn refresh_margin(mut self, margin: Duration) -> Self {
        self.refresh_margin = margin;
        self
    }

    /// Up to this much earlier, chosen at random per token (default 1 minute; zero for none).
    #[must_use]
    pub fn refresh_jitter(mut self, jitter: Duration) -> Self {
        self.refresh_jitter = jitter;
        self
    }

    /// The token lifetime assumed when the answer has no `expires_in` (default 2 hours).
    #[must_use]
    pub fn default_lifetime(mut self, lifetime: Duration) -> Self {
        self.default_lifetime = lifetime;
        self
    }

    /// The bound on obtaining a token, retries and backoff included (default 10 s).
    #[must_use]
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// The bound on one request to the token endpoint (default 5 s).
    #[must_use]
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    /// How long to wait for another instance's fetch through a shared store before fetching
    /// here (default 3 s).
    #[must_use]
    pub fn store_wait(mut self, wait: Duration) -> Self {
        self.store_wait = wait;
        self
    }

    /// The largest request body kept for a replay after a 401 (default 8 MiB). A larger body
    /// is still sent, once, and a 401 to it goes back to the caller.
    #[must_use]
    pub fn body_limit(mut self, limit: usize) -> Self {
        self.body_limit = limit;
        self
    }

    /// Whether a request refused with a 401 is replayed once with a new token (default
    /// `true`). Replaying needs the body buffered and the request head copied, which is most
    /// of this layer's per-request cost (see the README's figures). With `false`, bodies stream
    /// through untouched and a 401 invalidates the token and goes back to the caller (a retry
    /// layer above may then send the request again with the next token).
    #[must_use]
    pub fn replay_on_401(mut self, replay: bool) -> Self {
        self.replay_on_401 = replay;
        self
    }

    /// The key under which the token is shared in a [`TokenStore`](crate::store::TokenStore)
    /// (default: the client id, scope and audience; never the secret).
    #[must_use]
    pub fn store_key(mut self, key: impl Into<String>) -> Self {
        self.store_key = Some(key.into());
        self
    }

    pub(crate) fn effective_store_key(&self) -> String {
        match &self.store_key {
            Some(k) => k.clone(),
            None => format!(
                "{}|{}|{}",
                self.client_id,
                self.scope.as_deref().unwrap_or(""),
                self.audience.as_deref().unwrap_or("")
            ),
        }
    }

    pub(crate) fn client_id(&self) -> &str {
        &self.client_id
    }
    pub(crate) fn client_secret(&self) -> &SecretString {
        &self.client_secret
    }
    pub(crate) fn scope_ref(&self) -> Option<&str> {
        self.scope.as_deref()
    }
    pub(crate) fn audience_ref(&self) -> Option<&str> {
        self.audience.as_deref()
    }
    pub(crate) fn margin(&self) -> Duration {
        self.refresh_margin
    }
    pub(crate) fn jitter(&self) -> Duration {
        self.refresh_jitter
    }
    pub(crate) fn lifetime(&self) -> Duration {
        self.default_lifetime
    }
    pub(crate) fn deadline_ref(&self) -> Duration {
        self.deadline
    }
    pub(crate) fn attempt(&self) -> Duration {
        self.attempt_timeout
    }
    pub(crate) fn wait(&self) -> Duration {
        self.store_wait
    }
    pub(crate) fn limit(&self) -> usize {
        self.body_limit
    }
    pub(crate) fn replay(&self) -> bool {
        self.replay_on_401
    }

    /// Checks every setting; [`OAuth2Layer`](super::OAuth2Layer)'s builder calls it.
    ///
    /// # Errors
    ///
    /// The first [`ConfigError`] found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.token_uri().map(drop)
    }

    pub(crate) fn token_uri(&self) -> Result<Uri, ConfigError> {
        const URL: &str = "must be an absolute http:// or https:// URL";
        let uri: Uri = self
            .token_url
            .parse()
            .map_err(|_| ConfigError::new("token_url", URL))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(ConfigError::new("token_url", URL));
        }
        if self.client_id.is_empty() {
            return Err(ConfigError::new("client_id", "must not be empty"));
        }
        if secrecy::ExposeSecret::expose_secret(&self.client_secret).is_empty() {
            return Err(ConfigError::new("client_secret", "must not be empty"));
        }
        for (name, d) in [
            ("default_lifetime_ms", self.default_lifetime),
            ("deadline_ms", self.deadline),
            ("attempt_timeout_ms", self.attempt_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError::new(name, "must be greater than zero"));
            }
        }
        if self.body_limit == 0 {
            return Err(ConfigError::new("body_limit", "must be greater than zero"));
        }
        if self.refresh_jitter > self.refresh_margin {
            return Err(ConfigError::new(
                "refresh_jitter_ms",
                "must not be larger than refresh_margin_ms",
            ));
        }
        if self.attempt_timeout > self.deadline {
            return Err(ConfigError::new(
                "attempt_timeout_ms",
                "must not be longer than deadline_ms",
            ));
        }
        Ok(uri)
    }
}

impl fmt::Debug for OAuth2Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuth2Config")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field("client_secret", &"[REDACTED]")
            .field("scope", &self.scope)
            .field("audience", &self.audience)
            .field("refresh_margin", &self.refresh_margin)
            .field("refresh_jitter", &self.refresh_jitter)
            .field("default_lifetime", &self.default_lifetime)
            .field("deadline", &self.deadline)
            .field("attempt_timeout", &self.attempt_timeout)
            .field("store_wait", &self.store_wait)
            .field("body_limit", &self.body_limit)
            .field("store_key", &self.store_key)
            .field("replay_on_401", &self.replay_on_401)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> OAuth2Config {
        OAuth2Config::new("https://auth.example/token", "id", "secret-xyz")
    }

    #[test]
    fn validation_names_the_bad_setting() {
        let field = |c: OAuth2Config| c.validate().unwrap_err().field().to_owned();
        assert!(base().validate().is_ok());
        assert_eq!(
            field(OAuth2Config::new("/relative", "id", "s")),
            "token_url"
        );
        assert_eq!(
            field(OAuth2Config::new("ftp://x/y", "id", "s")),
            "token_url"
        );
        assert_eq!(
            field(OAuth2Config::new("https://x/y", "", "s")),
            "client_id"
        );
        assert_eq!(
            field(OAuth2Config::new("https://x/y", "id", "")),
            "client_secret"
        );
        let zero = base().deadline(Duration::ZERO).validate().unwrap_err();
        assert_eq!(zero.field(), "deadline_ms");
        assert_eq!(zero.reason(), "must be greater than zero");
        assert_eq!(field(base().body_limit(0)), "body_limit");
        let jitter = base()
            .refresh_margin(Duration::from_secs(1))
            .validate()
            .unwrap_err();
        assert_eq!(jitter.field(), "refresh_jitter_ms");
        assert!(jitter.reason().contains("refresh_margin_ms"), "{jitter}");
        let attempt = base()
            .deadline(Duration::from_secs(1))
            .validate()
            .unwrap_err();
        assert_eq!(attempt.field(), "attempt_timeout_ms");
        assert!(attempt.reason().contains("deadline_ms"), "{attempt}");
        // The secret is never part of the error.
        let shown = format!("{zero} {zero:?} {jitter} {attempt}");
        assert!(!shown.contains("secret-xyz"), "{shown}");
    }

    #[test]
    fn deserializes_with_defaults_and_redacts() {
        let c: OAuth2Config = serde_json::from_str(
            r#"{"token_url":"https://a/t","client_id":"c","client_secret":"secret-xyz","deadline_ms":2500}"#,
        )
        .unwrap();
        assert_eq!(c.deadline_ref(), Duration::from_millis(2500));
        assert_eq!(c.margin(), DEFAULT_REFRESH_MARGIN);
        assert_eq!(c.lifetime(), DEFAULT_LIFETIME);
        assert_eq!(c.limit(), DEFAULT_BODY_LIMIT);
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("secret-xyz") && shown.contains("[REDACTED]"),
            "{shown}"
        );
        assert!(
            serde_json::from_str::<OAuth2Config>(
                r#"{"token_url":"x","client_id":"c","client_secret":"s","typo":1}"#
            )
            .is_err()
        );
    }
}
