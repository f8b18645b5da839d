//! What the parse-counting tests share.

use tower_deepseek::stack::StackBuilder;
use tower_deepseek::{
    BearerAuthLayer, CacheLayer, CircuitBreakerLayer, RateLimitLayer, RedactLayer, RetryLayer,
    TimeoutLayer,
};

/// The layers that read bodies, each on with its defaults (a token quota, so that the rate
/// limiter estimates from the request), the redactor only when `redact`.
pub(crate) fn reading_layers(b: StackBuilder, redact: bool) -> StackBuilder {
    let b = if redact {
        b.redact(RedactLayer::new())
    } else {
        b
    };
    b.cache(CacheLayer::new())
        .rate_limit(
            RateLimitLayer::builder()
                .tokens_per_minute(1_000_000)
                .build()
                .unwrap(),
        )
        .retry(RetryLayer::builder().build().unwrap())
        .circuit_breaker(CircuitBreakerLayer::new())
        .bearer_auth(BearerAuthLayer::new("sk-parse-once").unwrap())
        .timeout(TimeoutLayer::builder().build().unwrap())
}
