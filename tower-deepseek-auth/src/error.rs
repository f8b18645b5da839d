//! Small public error types to downcast a [`BoxError`](tower_deepseek_core::BoxError) to.
//!
//! No error here ever carries a credential: not the API key, the client secret, nor a token.
//! The token endpoint's `error_description` is not kept either (servers sometimes echo what
//! they were sent); only its RFC 6749 `error` code, when it is one of the registered codes.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

/// An API key could not be used. Names the environment variable, never the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError {
    kind: KeyErrorKind,
    var: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyErrorKind {
    Unset,
    Empty,
    Invalid,
}

impl KeyError {
    pub(crate) fn unset(var: &str) -> Self {
        Self {
            kind: KeyErrorKind::Unset,
            var: Some(var.to_owned()),
        }
    }

    pub(crate) fn empty(var: Option<&str>) -> Self {
        Self {
            kind: KeyErrorKind::Empty,
            var: var.map(str::to_owned),
        }
    }

    pub(crate) fn invalid(var: Option<&str>) -> Self {
        Self {
            kind: KeyErrorKind::Invalid,
            var: var.map(str::to_owned),
        }
    }

    /// The environment variable is not set.
    pub fn is_unset(&self) -> bool {
        self.kind == KeyErrorKind::Unset
    }

    /// The key (or the variable) is empty.
    pub fn is_empty(&self) -> bool {
        self.kind == KeyErrorKind::Empty
    }

    /// The key cannot be sent in an HTTP header (control characters or non-ASCII).
    pub fn is_invalid(&self) -> bool {
        self.kind == KeyErrorKind::Invalid
    }

    /// The environment variable the key was read from, if any.
    pub fn var(&self) -> Option<&str> {
        self.var.as_deref()
    }
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match &self.var {
            Some(var) => format!("environment variable {var}"),
            None => "the API key".to_owned(),
        };
        match self.kind {
            KeyErrorKind::Unset => write!(f, "{what} is not set; set it to your API key"),
            KeyErrorKind::Empty => write!(f, "{what} is empty; set it to your API key"),
            KeyErrorKind::Invalid => write!(
                f,
                "{what} cannot be sent in an HTTP header (it holds control or non-ASCII characters); check for stray quotes or line breaks"
            ),
        }
    }
}

impl std::error::Error for KeyError {}

/// A configuration value was refused when a layer or store was built: core's one
/// configuration error, naming the field (as the serde config spells it) and the reason.
pub use tower_deepseek_core::config::ConfigError;

/// Why a token could not be obtained. See [`TokenFetchFailed::kind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TokenFetchErrorKind {
    /// `invalid_client`: wrong client id or secret. Not retried.
    InvalidClient,
    /// `invalid_grant`. Not retried.
    InvalidGrant,
    /// `unauthorized_client`: the client may not use this grant. Not retried.
    UnauthorizedClient,
    /// `invalid_scope`. Not retried.
    InvalidScope,
    /// Another 4xx answer from the token endpoint. Not retried.
    Rejected,
    /// 429 from the token endpoint. Retried within the deadline.
    RateLimited,
    /// A 5xx answer. Retried within the deadline.
    Server,
    /// No answer within the per-attempt timeout, or the whole deadline passed. Retried within
    /// the deadline.
    Timeout,
    /// The connection to the token endpoint could not be made. Retried within the deadline.
    Connect,
    /// The connection broke while talking to the token endpoint. Retried within the deadline.
    Transport,
    /// A 2xx answer without a usable token (not JSON, no `access_token`, a `token_type` other
    /// than `Bearer`). Not retried.
    InvalidResponse,
}

impl TokenFetchErrorKind {
    /// Whether a fetch that failed this way is tried again (within the deadline).
    pub const fn is_retryable(&self) -> bool {
        matches!(
            self,
            TokenFetchErrorKind::RateLimited
                | TokenFetchErrorKind::Server
                | TokenFetchErrorKind::Timeout
                | TokenFetchErrorKind::Connect
                | TokenFetchErrorKind::Transport
        )
    }

    /// A stable name, usable as a metric label.
    pub const fn as_str(&self) -> &'static str {
        match self {
            TokenFetchErrorKind::InvalidClient => "invalid_client",
            TokenFetchErrorKind::InvalidGrant => "invalid_grant",
            TokenFetchErrorKind::UnauthorizedClient => "unauthorized_client",
            TokenFetchErrorKind::InvalidScope => "invalid_scope",
            TokenFetchErrorKind::Rejected => "rejected",
            TokenFetchErrorKind::RateLimited => "rate_limited",
            TokenFetchErrorKind::Server => "server_error",
            TokenFetchErrorKind::Timeout => "timeout",
            TokenFetchErrorKind::Connect => "connect",
            TokenFetchErrorKind::Transport => "transport",
            TokenFetchErrorKind::InvalidResponse => "invalid_response",
        }
    }
}

/// The OAuth2 layer could not obtain an access token; the request was not sent.
///
/// Cheap to clone: requests that waited on the same failed fetch each get a copy.
#[derive(Clone)]
pub struct TokenFetchFailed {
    kind: TokenFetchErrorKind,
    status: Option<StatusCode>,
    attempts: u32,
    elapsed: Duration,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl TokenFetchFailed {
    pub(crate) fn new(kind: TokenFetchErrorKind) -> Self {
        Self {
            kind,
            status: None,
            attempts: 1,
            elapsed: Duration::ZERO,
            source: None,
        }
    }

    pub(crate) fn with_status(mut self, status: StatusCode) -> Self {
        self.status = Some(status);
        self
    }

    pub(crate) fn with_source(mut self, source: tower_deepseek_core::BoxError) -> Self {
        self.source = Some(Arc::from(source));
        self
    }

    pub(crate) fn finished(mut self, attempts: u32, elapsed: Duration) -> Self {
        self.attempts = attempts;
        self.elapsed = elapsed;
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> TokenFetchErrorKind {
        self.kind
    }

    /// The token endpoint's HTTP status, when it answered.
    pub fn status(&self) -> Option<StatusCode> {
        self.status
    }

    /// How many requests were sent to the token endpoint.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// How long the fetch took, all attempts included.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// Whether the failure was a timeout (per attempt or of the whole deadline).
    pub fn is_timeout(&self) -> bool {
        self.kind == TokenFetchErrorKind::Timeout
    }
}

impl fmt::Debug for TokenFetchFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenFetchFailed")
            .field("kind", &self.kind)
            .field("status", &self.status)
            .field("attempts", &self.attempts)
            .field("elapsed", &self.elapsed)
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for TokenFetchFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("could not obtain an OAuth2 access token, the request was not sent: ")?;
        let advice = match self.kind {
            TokenFetchErrorKind::InvalidClient => {
                "the token endpoint refused the client credentials (invalid_client); check client_id and client_secret"
            }
            TokenFetchErrorKind::InvalidGrant => {
                "the token endpoint refused the grant (invalid_grant)"
            }
            TokenFetchErrorKind::UnauthorizedClient => {
                "the client may not use the client-credentials grant (unauthorized_client)"
            }
            TokenFetchErrorKind::InvalidScope => {
                "the token endpoint refused the requested scope (invalid_scope)"
            }
            TokenFetchErrorKind::Rejected => "the token endpoint refused the request",
            TokenFetchErrorKind::RateLimited => "the token endpoint is rate limiting this client",
            TokenFetchErrorKind::Server => "the token endpoint failed (server error)",
            TokenFetchErrorKind::Timeout => "the token endpoint did not answer in time",
            TokenFetchErrorKind::Connect => "could not connect to the token endpoint",
            TokenFetchErrorKind::Transport => "the connection to the token endpoint broke",
            TokenFetchErrorKind::InvalidResponse => {
                "the token endpoint's answer holds no usable bearer token"
            }
        };
        f.write_str(advice)?;
        if let Some(status) = self.status {
            write!(f, " (HTTP {})", status.as_u16())?;
        }
        write!(
            f,
            " after {} attempt{} in {:?}",
            self.attempts,
            if self.attempts == 1 { "" } else { "s" },
            self.elapsed
        )
    }
}

impl std::error::Error for TokenFetchFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}
