//! [`ServiceBuilderExt`]: one method per tower-deepseek layer on tower's `ServiceBuilder`.
//!
//! Each method is `self.layer(that_layer)` and is named after its layer, in snake case:
//! `RetryLayer` is `.retry_layer(…)`, `CircuitBreakerLayer` is `.circuit_breaker_layer(…)`. (The
//! `_layer` ending keeps them clear of `ServiceBuilder`'s own `retry`, `timeout` and
//! `rate_limit`, which would win over a trait method of the same name.) The trait is sealed: only
//! `ServiceBuilder` implements it, so methods can be added without breaking anyone.
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use tower_deepseek::ServiceBuilderExt;
//! use tower_deepseek::auth::BearerAuthLayer;
//! use tower_deepseek::breaker::CircuitBreakerLayer;
//! use tower_deepseek::RetryLayer;
//! use tower_deepseek::core::body::ReplayBody;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_deepseek::BoxError> {
//! let mut svc = ServiceBuilder::new()
//!     .retry_layer(RetryLayer::builder().build()?)
//!     .circuit_breaker_layer(CircuitBreakerLayer::builder().name("deepseek").build()?)
//!     .bearer_auth_layer(BearerAuthLayer::new("sk-example")?)
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
            fn request_metadata_layer(
                self,
                layer: RequestMetadataLayer,
            ) -> ServiceBuilder<Stack<RequestMetadataLayer, L>>;

            /// Joins relative request URIs onto the upstream's base URL ([`BaseUrlLayer`]).
            fn base_url_layer(self, layer: BaseUrlLayer) -> ServiceBuilder<Stack<BaseUrlLayer, L>>;

            /// OAuth2 client credentials (`tower_deepseek_auth::OAuth2Layer`).
            #[cfg(feature = "auth")]
            fn oauth2_layer<T>(
                self,
                layer: tower_deepseek_auth::OAuth2Layer<T>,
            ) -> ServiceBuilder<Stack<tower_deepseek_auth::OAuth2Layer<T>, L>>;

            /// One circuit breaker per key (`tower_deepseek_breaker::KeyedCircuitBreakerLayer`).
            #[cfg(feature = "breaker")]
            fn keyed_circuit_breaker_layer<M: tower_deepseek_breaker::MakeKey>(
                self,
                layer: tower_deepseek_breaker::KeyedCircuitBreakerLayer<M>,
            ) -> ServiceBuilder<Stack<tower_deepseek_breaker::KeyedCircuitBreakerLayer<M>, L>>;
        }

        impl<L> ServiceBuilderExt<L> for ServiceBuilder<L> {
            $(
                #[cfg(feature = $feature)]
                fn $name(self, layer: $layer) -> ServiceBuilder<Stack<$layer, L>> {
                    self.layer(layer)
                }
            )*

            fn request_metadata_layer(
                self,
                layer: RequestMetadataLayer,
            ) -> ServiceBuilder<Stack<RequestMetadataLayer, L>> {
                self.layer(layer)
            }

            fn base_url_layer(self, layer: BaseUrlLayer) -> ServiceBuilder<Stack<BaseUrlLayer, L>> {
                self.layer(layer)
            }

            #[cfg(feature = "auth")]
            fn oauth2_layer<T>(
                self,
                layer: tower_deepseek_auth::OAuth2Layer<T>,
            ) -> ServiceBuilder<Stack<tower_deepseek_auth::OAuth2Layer<T>, L>> {
                self.layer(layer)
            }

            #[cfg(feature = "breaker")]
            fn keyed_circuit_breaker_layer<M: tower_deepseek_breaker::MakeKey>(
                self,
                layer: tower_deepseek_breaker::KeyedCircuitBreakerLayer<M>,
            ) -> ServiceBuilder<Stack<tower_deepseek_breaker::KeyedCircuitBreakerLayer<M>, L>> {
                self.layer(layer)
            }
        }
    };
}

ext_methods! {
    /// Writes one audit record per call (`tower_deepseek_redact::AuditLayer`).
    "redact" => audit_layer(tower_deepseek_redact::AuditLayer);
    /// Masks PII in requests and restores it in answers (`tower_deepseek_redact::RedactLayer`).
    "redact" => redact_layer(tower_deepseek_redact::RedactLayer);
    /// Samples calls, masked, into a review sink; feedback and evaluations
    /// (`tower_deepseek_redact::ReviewLayer`).
    "redact" => review_layer(tower_deepseek_redact::ReviewLayer);
    /// Filters model output (`tower_deepseek_redact::ContentFilterLayer`).
    "redact" => content_filter_layer(tower_deepseek_redact::ContentFilterLayer);
    /// Two-level response cache (`tower_deepseek_cache::CacheLayer`).
    "cache" => cache_layer(tower_deepseek_cache::CacheLayer);
    /// Prices each call and enforces budgets (`tower_deepseek_retry::CostLayer`).
    "retry" => cost_layer(tower_deepseek_retry::CostLayer);
    /// Requests and tokens per minute (`tower_deepseek_retry::RateLimitLayer`).
    "retry" => rate_limit_layer(tower_deepseek_retry::RateLimitLayer);
    /// AIMD in-flight limit that backs off on 429 (`tower_deepseek_retry::AdaptiveConcurrencyLayer`).
    "retry" => adaptive_concurrency_layer(tower_deepseek_retry::AdaptiveConcurrencyLayer);
    /// The guide's status-aware retries (`tower_deepseek_retry::RetryLayer`).
    "retry" => retry_layer(tower_deepseek_retry::RetryLayer);
    /// Header, first-token and idle timeouts (`tower_deepseek_retry::TimeoutLayer`).
    "retry" => timeout_layer(tower_deepseek_retry::TimeoutLayer);
    /// Resilience4j-style circuit breaker (`tower_deepseek_breaker::CircuitBreakerLayer`).
    "breaker" => circuit_breaker_layer(tower_deepseek_breaker::CircuitBreakerLayer);
    /// Weighted failover across endpoints, each behind a breaker (`tower_deepseek_breaker::FailoverLayer`).
    "breaker" => failover_layer(tower_deepseek_breaker::FailoverLayer);
    /// Static API key (`tower_deepseek_auth::BearerAuthLayer`).
    "auth" => bearer_auth_layer(tower_deepseek_auth::BearerAuthLayer);
}
