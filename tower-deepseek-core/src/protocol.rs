//! The protocol between layers: every extension and marker type that one layer writes for
//! another, in one place.
//!
//! Layers leave facts for each other in [`http::Extensions`], never in globals and never in
//! headers that would leak to the caller. Each type below has one writer (or the caller), the
//! readers named, and the invariants they rely on; a test pins each row (the crate tests named
//! in the last column). The layers' own crates re-export the types they write.
//!
//! # Request extensions
//!
//! | type | written by | read by | when | invariants | test |
//! |---|---|---|---|---|---|
//! | [`RequestId`] | [`MetadataConfig::apply`](crate::meta::MetadataConfig::apply) (`RequestMetadataLayer`, the gateway) | `AuditLayer` (record), the gateway (echo) | at the edge, before the stack | set once: only inserted when absent; 1 to 128 visible ASCII, else a fresh 128-bit hex id; also sent as `x-request-id` upstream | core `meta::tests::request_id_is_kept_or_generated` |
//! | [`PeerAddr`] | the server that accepted the connection | `MetadataConfig::client_ip` | on accept | a plain `SocketAddr` is accepted too | core `meta::tests::untrusted_peer_wins_over_header` |
//! | [`ClientIp`] | `MetadataConfig::apply` | `AuditLayer` | at the edge | the peer, or the right-most untrusted `x-forwarded-for` hop behind a trusted proxy | core `meta::tests::trusted_chain_is_walked_from_the_right` |
//! | [`TenantId`] | the caller, the gateway's key check | `CacheLayer` (key scope), `RateLimitLayer` (`KeyBy::Tenant`), `RedactLayer`, `AuditLayer` | before the stack | an identifier, never a credential (hash a key to derive it) | cache `key` tests, facade `stack` tests |
//! | [`CollectCallFacts`] | `AuditLayer` | `RetryLayer`, the breaker layers | on `call`, before the inner call | a marker: without it, the layers below skip the work (a stack without audit pays nothing) | retry `retry` tests, breaker `scenarios` |
//! | [`ShareVerdict`] | `RetryLayer`, `RateLimitLayer` (with a token quota), `CacheLayer` (on a miss) | the breaker layers | on `call`, before the inner call | a marker: the lowest classifying layer publishes its verdict ([`SharedOutcome`]) only when a layer above will read it; [`CollectCallFacts`] implies it | facade `tests/parse_once.rs` |
//! | [`ReplayOn401`] | `RetryLayer`, per attempt whose body it keeps | `OAuth2Layer` | per attempt | `Offered`: OAuth2 keeps no copy and marks a refreshed 401 [`CredentialRefreshed`]; `Replaying`: a 401 is final | auth `oauth2` tests |
//! | [`TimeoutScale`] | `RetryLayer`, on an attempt after a 504 or timeout | `TimeoutLayer` | per attempt | absent = 1.0; multiplies headers, first-token and idle timeouts | retry `timeout` tests |
//! | [`AttemptTimeout`] | the caller | `TimeoutLayer` | before the timeout layer | replaces the headers timeout only | retry `timeout` tests |
//! | [`ModelHint`] | the caller, a layer that parsed the body | `KeyedCircuitBreakerLayer`'s default key | before the breaker | the breaker never reads the body to learn the model | breaker `keyed` tests |
//! | [`CacheOptions`] | the caller | `CacheLayer` | before the cache | `bypass` as `Cache-Control: no-store`, `refresh` as `no-cache` | cache `loopback` tests |
//! | [`ChatView`] | the first layer that parses the request body (`RedactLayer`, else `CacheLayer`, else `RateLimitLayer`), through [`ChatView::get_or_parse`]; `RedactLayer` replaces it with the view of the masked body it sends, built as it writes it ([`ChatView::replace_strings`]) | `CacheLayer` (canonical key, temperature, stream), `RateLimitLayer` (model, `max_tokens`), `RedactLayer` (text fields), `KeyedCircuitBreakerLayer`'s default key (model, after [`ModelHint`]) | when the body is buffered | **never about other bytes**: a reader takes it only if [`ChatView::describes`] the body at hand (the same buffer: address and length, the view holding it), else parses that body and publishes its own view; so a layer in between that rewrites the body without knowing of views cannot change a cache key or an estimate. The keyed breaker holds no body to check: a stale view can only file the call under another model | core `view::tests`, facade `tests/request_parse_once.rs`, `tests/foreign_layer.rs` |
//! | [`ViewSlot`] | `AuditLayer` | every layer that publishes a [`ChatView`] ([`ChatView::publish`]) | on `call` | audit reads the model of a call whose answer names none from the last view published below, if it describes the body audit hashed; else it parses that body | facade `tests/request_parse_once.rs` |
//!
//! # Response extensions
//!
//! | type | written by | read by | when | invariants | test |
//! |---|---|---|---|---|---|
//! | [`SharedOutcome`] | the innermost classifying layer (the breaker layers) asked by [`ShareVerdict`] or [`CollectCallFacts`], if no slot is there yet | `RetryLayer`, `RateLimitLayer`, `CacheLayer`, `AuditLayer`, through [`EndJudge`](crate::classify::EndJudge) | empty slot with the head; filled when the body ends, before that end goes up | **never about other bytes**: the verdict names the frames it judged ([`FrameTrace`]), and a reader takes it only for the very same buffers; any layer in between that rewrites, cuts, splits or merges the body (ours or a user's) makes the readers judge what they saw. No layer needs to remove it | core `classify::shared::tests`, facade `tests/foreign_layer.rs` |
//! | [`Attempts`] | `RetryLayer`, always | the caller, `AuditLayer` (`retries`) | on the response it returns | count (the first attempt included), the class of each failed attempt, the [`StopReason`] | retry `retry` tests |
//! | [`BreakerStatus`] | the breaker layers, when asked for call facts | `AuditLayer` (`breaker`) | on the response head | the state after recording an outcome the head decides, else the state when the head arrived | breaker `scenarios` |
//! | [`CredentialRefreshed`] | `OAuth2Layer`, on a 401 it obtained a new token for | `RetryLayer` (replays once, at once, outside its budget) | on the 401 | only when the request carried [`ReplayOn401::Offered`] | retry and auth tests |
//! | [`CallCost`] | `CostLayer`, for a 2xx answer it priced | `AuditLayer` (`cost`), the caller | an empty slot with the head; filled when the body ends, before that end goes up | filled once, from the call's `usage` priced at the call's start; empty when the answer had no usage, its model has no price, or the body was dropped | retry `cost` tests, redact `audit` tests |
//!
//! The `x-cache` response header (`hit-l1`, `hit-l2`, `miss`, `bypass`) is meant for the caller
//! too, and so is not an extension; `AuditLayer` reads it for the record.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::{HeaderName, HeaderValue};

use crate::classify::FailureClass;
pub use crate::classify::{BodyOutcome, FrameTrace, SharedOutcome};
pub use crate::money::Money;
pub use crate::view::{ChatView, ViewSlot};

/// The standard request-id header.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The id of one call, kept from the caller's `x-request-id` or generated.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RequestId(Arc<str>);

impl RequestId {
    /// A fresh random id: 32 lowercase hex digits (128 random bits).
    pub fn generate() -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let v = fastrand::u128(..);
        // Hex by table into a stack buffer: one allocation (the `Arc<str>`), no formatter.
        let mut buf = [0u8; 32];
        for (i, b) in buf.iter_mut().enumerate() {
            *b = HEX[((v >> (124 - 4 * i)) & 0xf) as usize];
        }
        Self(std::str::from_utf8(&buf).expect("hex digits").into())
    }

    /// Takes a caller-supplied id if it is acceptable: 1 to 128 visible ASCII characters.
    pub fn parse(value: &str) -> Option<Self> {
        let ok =
            !value.is_empty() && value.len() <= 128 && value.bytes().all(|b| b.is_ascii_graphic());
        ok.then(|| Self(value.into()))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id as a header value.
    pub fn to_header_value(&self) -> HeaderValue {
        HeaderValue::from_str(&self.0).expect("ids are visible ASCII")
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RequestId").field(&&*self.0).finish()
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The address of the TCP peer, inserted by the server that accepted the connection.
///
/// axum users can copy it from `ConnectInfo<SocketAddr>`; a plain `SocketAddr` in the
/// extensions is accepted too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerAddr(pub SocketAddr);

/// The IP address of the client that made the call (after trusted proxies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientIp(pub IpAddr);

/// The tenant a call belongs to. Caches, limits and audit records are scoped by it.
///
/// It is an identifier, not a secret: derive it from a credential with a hash, never use the
/// credential itself.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(Arc<str>);

impl TenantId {
    /// A tenant id.
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        Self(id.into())
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TenantId").field(&&*self.0).finish()
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A request extension by which an outer layer (audit) asks the layers below for the facts
/// they can put on the response for it ([`BreakerStatus`], the [`SharedOutcome`] slot).
///
/// Without it, those layers skip that work: inserting a response extension costs an
/// allocation per call (tens of nanoseconds), which a stack without an audit layer should not
/// pay. `AuditLayer` inserts it; insert it yourself to read those facts in your own layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CollectCallFacts;

/// The state of the circuit breaker that let the call through (`closed`, `half_open`, ...).
///
/// Set on the response by the breaker layer when the request carries [`CollectCallFacts`];
/// read by outer layers (audit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BreakerStatus(pub &'static str);

/// A request extension by which a layer above says it judges the answer's end (retry, the
/// rate limiter's settle, the cache): the lowest layer that classifies the answer (the breaker)
/// then publishes its verdict in a [`SharedOutcome`], so that the answer is parsed once in the
/// stack. Without it (and without [`CollectCallFacts`], which implies it) nothing is published:
/// a layer alone pays nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ShareVerdict;

/// A request extension by which a layer above offers to send the request again after a 401
/// that a credential layer below answered with [`CredentialRefreshed`].
///
/// The retry layer sets it on each attempt whose body it keeps; `OAuth2Layer` then keeps no
/// copy of its own: after a 401 it obtains a new token, marks the 401 [`CredentialRefreshed`]
/// and lets the retry layer replay the request (once, at once, outside its budget). In the
/// recommended stack the request head is thus copied once per attempt, not twice. Layers that
/// see neither extension behave on their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ReplayOn401 {
    /// The layer above will replay this request once if its 401 is marked
    /// [`CredentialRefreshed`].
    Offered,
    /// This request is that replay: a 401 to it is final (nothing to invalidate, nothing to
    /// mark).
    Replaying,
}

/// A response extension on a 401: the credential layer below has replaced the credential the
/// upstream refused, so sending the request again would use a new one. Set only on a request
/// that carried [`ReplayOn401::Offered`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CredentialRefreshed;

/// Response extension: the attempts the retry layer made for this response, always set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempts {
    count: u32,
    classes: Vec<FailureClass>,
    stop: StopReason,
}

impl Attempts {
    /// `count` attempts (the first included), the class of each failed one in order, and why
    /// the retry layer stopped.
    pub fn new(count: u32, failures: Vec<FailureClass>, stop: StopReason) -> Self {
        Self {
            count,
            classes: failures,
            stop,
        }
    }

    /// Attempts made, the first included.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The class of each failed attempt, in order (empty when the first attempt succeeded).
    pub fn failures(&self) -> &[FailureClass] {
        &self.classes
    }

    /// Why no further attempt was made ([`StopReason::Success`] for a success).
    pub fn stop_reason(&self) -> StopReason {
        self.stop
    }
}

/// Why the retry layer stopped trying.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StopReason {
    /// The last attempt succeeded, or its stream started flowing to the caller (its first
    /// event was handed over; from then on nothing is retried, and a later failure ends the
    /// caller's body with an error).
    Success,
    /// The last outcome is never retried (a client error, a local rejection, a transport error
    /// after sending without `retry_after_send`).
    NotRetryable,
    /// `max_attempts`, or the outcome's own `max_retries`, was reached.
    MaxAttempts,
    /// The retry budget is spent: too many retries compared to requests lately.
    BudgetExhausted,
    /// The next attempt would start after the total deadline.
    Deadline,
    /// The upstream asked for a wait (`Retry-After`) longer than `max_retry_after`.
    RetryAfterTooLong,
    /// The request body was too large to buffer, so it could be sent only once.
    BodyNotReplayable,
    /// A circuit breaker below is open and `wait_for_open_breaker` is off: the caller fails
    /// fast with the breaker's error.
    BreakerOpen,
}

impl StopReason {
    /// A stable snake_case name, usable as a metric label.
    pub const fn as_str(&self) -> &'static str {
        match self {
            StopReason::Success => "success",
            StopReason::NotRetryable => "not_retryable",
            StopReason::MaxAttempts => "max_attempts",
            StopReason::BudgetExhausted => "budget_exhausted",
            StopReason::Deadline => "deadline",
            StopReason::RetryAfterTooLong => "retry_after_too_long",
            StopReason::BodyNotReplayable => "body_not_replayable",
            StopReason::BreakerOpen => "breaker_open",
        }
    }
}

/// Request extension set by the retry layer: multiply the attempt timeouts (headers, first
/// token, idle) by this factor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimeoutScale(pub f64);

/// Request extension: the response-headers timeout for this request, instead of the layer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptTimeout(pub Duration);

/// The model a request is for, when a layer or the caller already knows it.
///
/// The breaker never reads the request body (that would mean buffering it). Insert this
/// extension where the model is known (the caller, or a layer that parsed the body) to give the
/// keyed breaker's default key its model part:
///
/// ```
/// use tower_deepseek_core::protocol::ModelHint;
///
/// let mut req = http::Request::new(());
/// req.extensions_mut().insert(ModelHint::new("deepseek-chat"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModelHint(Arc<str>);

impl ModelHint {
    /// A hint for `model`.
    pub fn new(model: impl Into<Arc<str>>) -> Self {
        Self(model.into())
    }

    /// The model.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Per-request cache options: insert into the request's extensions.
///
/// ```
/// use tower_deepseek_core::protocol::CacheOptions;
///
/// let mut req = http::Request::new(());
/// req.extensions_mut().insert(CacheOptions::new().cache_nonzero_temperature(true));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheOptions {
    /// Neither read nor write the cache for this request (like `Cache-Control: no-store`).
    pub bypass: bool,
    /// Go upstream and replace the stored answer (like `Cache-Control: no-cache`).
    pub refresh: bool,
    /// Overrides the layer's `cache_nonzero_temperature` for this request.
    pub cache_nonzero_temperature: Option<bool>,
}

impl CacheOptions {
    /// No override.
    pub const fn new() -> Self {
        CacheOptions {
            bypass: false,
            refresh: false,
            cache_nonzero_temperature: None,
        }
    }

    /// Skip the cache for this request.
    #[must_use]
    pub const fn bypass(mut self, yes: bool) -> Self {
        self.bypass = yes;
        self
    }

    /// Go upstream and refresh the stored answer.
    #[must_use]
    pub const fn refresh(mut self, yes: bool) -> Self {
        self.refresh = yes;
        self
    }

    /// Cache this request's answer even though its temperature is not 0 (or the opposite).
    #[must_use]
    pub const fn cache_nonzero_temperature(mut self, yes: bool) -> Self {
        self.cache_nonzero_temperature = Some(yes);
        self
    }
}

/// What one call was charged: the amount, its currency, the price-table entry and time window used,
/// and the tokens priced. Read from a [`CallCost`] slot.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Charge {
    /// The exact amount.
    pub amount: Money,
    /// The currency of the amount (the price table's code, as `USD` or `CNY`).
    pub currency: Arc<str>,
    /// The price-table entry that priced the call (a model name).
    pub model: Arc<str>,
    /// The name of the time window whose prices applied, `None` for the model's base prices.
    pub window: Option<Arc<str>>,
    /// Input tokens served from the provider's cache.
    pub cache_hit_tokens: u64,
    /// Input tokens not served from the cache.
    pub cache_miss_tokens: u64,
    /// Output tokens (reasoning included).
    pub output_tokens: u64,
}

impl Charge {
    /// `amount` in `currency`, priced by the entry `model`, with no tokens noted.
    pub fn new(amount: Money, currency: impl Into<Arc<str>>, model: impl Into<Arc<str>>) -> Self {
        Charge {
            amount,
            currency: currency.into(),
            model: model.into(),
            window: None,
            cache_hit_tokens: 0,
            cache_miss_tokens: 0,
            output_tokens: 0,
        }
    }

    /// Notes the tokens priced: cache hits, cache misses and output.
    #[must_use]
    pub fn with_tokens(mut self, cache_hit: u64, cache_miss: u64, output: u64) -> Self {
        self.cache_hit_tokens = cache_hit;
        self.cache_miss_tokens = cache_miss;
        self.output_tokens = output;
        self
    }

    /// Notes the time window whose prices applied.
    #[must_use]
    pub fn with_window(mut self, window: impl Into<Arc<str>>) -> Self {
        self.window = Some(window.into());
        self
    }

    /// All the tokens priced.
    pub fn total_tokens(&self) -> u64 {
        self.cache_hit_tokens
            .saturating_add(self.cache_miss_tokens)
            .saturating_add(self.output_tokens)
    }
}

/// Response extension: the slot where `CostLayer` puts what the call cost, once its answer has
/// ended. Empty until then (and for good when the answer carried no usage, its model has no
/// price, or the caller dropped the body).
///
/// The layer inserts it with the response head and fills it when the body ends, before that end
/// goes up, so that an outer layer (audit) reads it in its own end-of-body callback; the
/// caller reads it after reading the body.
///
/// ```
/// use tower_deepseek_core::protocol::{CallCost, Charge, Money};
///
/// let slot = CallCost::new();
/// let seen_above = slot.clone();
/// assert!(seen_above.get().is_none());
/// slot.set(Charge::new("0.0042".parse::<Money>().unwrap(), "USD", "deepseek-chat"));
/// assert_eq!(seen_above.get().unwrap().amount.to_string(), "0.0042");
/// ```
#[derive(Clone, Default)]
pub struct CallCost(Arc<OnceLock<Charge>>);

impl CallCost {
    /// An empty slot.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fills the slot; `false` if it was already filled (the first cost stays).
    pub fn set(&self, cost: Charge) -> bool {
        self.0.set(cost).is_ok()
    }

    /// The cost, once the answer has ended and was priced.
    pub fn get(&self) -> Option<&Charge> {
        self.0.get()
    }
}

impl fmt::Debug for CallCost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CallCost").field(&self.get()).finish()
    }
}
