//! [`ServiceBuilderExt`]: one method per tower-deepseek layer on tower's `ServiceBuilder`.
//!
//! Each method is `self.layer(that_layer)`; the names say what the layer does and stay clear of
//! `ServiceBuilder`'s own `retry`, `timeout` and `rate_limit`. The trait is sealed: only
//! `ServiceBuilder` implements it, so methods can be added without breaking anyone.
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use tower_deepseek::ServiceBuilderExt;
//! use tower_deepseek::auth::BearerAuthLayer;
//! use tower_deepseek::breaker::CircuitBreakerLayer;
//! use tower_deepseek::core::body::ReplayBody;
//! use tower_deepseek::retry::RetryLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_deepseek::BoxError> {
//! let mut svc = ServiceBuilder::new()
//!     .status_retry(RetryLayer::builder().build()?)
//!     .circuit_breaker(CircuitBreakerLayer::builder().name("deepseek").build()?)
//!     .bearer_auth(BearerAuthLayer::new("sk-example")?)
//!     .service_fn(|req: http::Request<ReplayBody<Full<Bytes>>>| async move {
//!         assert!(req.headers().contains_key("authorization"));
//!         let res = http::Response::builder()
//!             .header("content-type", "application/json")
//!             .body(Full::new(Bytes::from_static(br#"{"choices":[{"finish_reason":"stop"}]}"#)))?;
//!         Ok::<_, tower_deepseek::BoxError>(res)
//!     });
//! let req = http::Request::post("/chat/completions").body(Full::new(Bytes::from_static(b"{}")))?;
//! let res = svc.ready().await?.call(req).await?;
//! assert_eq!(res.status(), 200);
//! # Ok(()) }
//! ```

use tower::ServiceBuilder;
use tower::layer::util::Stack;

use crate::client::BaseUrlLayer;
use crate::meta::RequestMetadataLayer;

mod sealed {
    // Sealed on purpose: users can see the bound but cannot implement it.
    #[allow(unnameable_types)]
    pub trait Sealed<L> {}
    impl<L> Sealed<L> for tower::ServiceBuilder<L> {}
}

macro_rules! ext_methods {
    ($( $(#[$meta:meta])* $feature:literal => $name:ident($layer:ty); )*) => {
        /// Adds one method per tower-deepseek layer to `ServiceBuilder`. See the
        /// [module docs](self).
        pub trait ServiceBuilderExt<L>: sealed::Sealed<L> + Sized {
            $(
                $(#[$meta])*
                #[cfg(feature = $feature)]
                fn $name(self, layer: $layer) -> ServiceBuilder<Stack<$layer, L>>;
            )*

            /// Fills in request id and client IP ([`RequestMetadataLayer`]).
            fn request_metadata(
                self,
                layer: RequestMetadataLayer,
            ) -> ServiceBuilder<Stack<RequestMetadataLayer, L>>;

            /// Joins relative request URIs onto the upstream's base URL ([`BaseUrlLayer`]).
            fn base_url(self, layer: BaseUrlLayer) -> ServiceBuilder<Stack<BaseUrlLayer, L>>;
        }

        impl<L> ServiceBuilderExt<L> for ServiceBuilder<L> {
            $(
                #[cfg(feature = $feature)]
                fn $name(self, layer: $layer) -> ServiceBuilder<Stack<$layer, L>> {
                    self.layer(layer)
                }
            )*

            fn request_metadata(
                self,
                layer: RequestMetadataLayer,
            ) -> ServiceBuilder<Stack<RequestMetadataLayer, L>> {
                self.layer(layer)
            }

            fn base_url(self, layer: BaseUrlLayer) -> ServiceBuilder<Stack<BaseUrlLayer, L>> {
                self.layer(layer)
            }
        }
    };
}

ext_methods! {
    /// Writes one audit record per call (`tower_deepseek_redact::AuditLayer`).
    "redact" => audit(tower_deepseek_redact::AuditLayer);
    /// Masks PII in requests and restores it in answers (`tower_deepseek_redact::RedactLayer`).
    "redact" => redact(tower_deepseek_redact::RedactLayer);
    /// Filters model output (`tower_deepseek_redact::ContentFilterLayer`).
    "redact" => content_filter(tower_deepseek_redact::ContentFilterLayer);
    /// Two-level response cache (`tower_deepseek_cache::CacheLayer`).
    "cache" => cache(tower_deepseek_cache::CacheLayer);
    /// Requests and tokens per minute (`tower_deepseek_retry::rate_limit::RateLimitLayer`).
    "retry" => token_rate_limit(tower_deepseek_retry::rate_limit::RateLimitLayer);
    /// AIMD in-flight limit that backs off on 429 (`tower_deepseek_retry::concurrency::AdaptiveConcurrencyLayer`).
    "retry" => adaptive_concurrency(tower_deepseek_retry::concurrency::AdaptiveConcurrencyLayer);
    /// The guide's status-aware retries (`tower_deepseek_retry::RetryLayer`).
    "retry" => status_retry(tower_deepseek_retry::RetryLayer);
    /// Header, first-token and idle timeouts (`tower_deepseek_retry::timeout::TimeoutLayer`).
    "retry" => stream_timeout(tower_deepseek_retry::timeout::TimeoutLayer);
    /// Resilience4j-style circuit breaker (`tower_deepseek_breaker::CircuitBreakerLayer`).
    "breaker" => circuit_breaker(tower_deepseek_breaker::CircuitBreakerLayer);
    /// Weighted failover across endpoints, each behind a breaker (`tower_deepseek_breaker::FailoverLayer`).
    "breaker" => failover(tower_deepseek_breaker::FailoverLayer);
    /// Static API key (`tower_deepseek_auth::BearerAuthLayer`).
    "auth" => bearer_auth(tower_deepseek_auth::BearerAuthLayer);
}
