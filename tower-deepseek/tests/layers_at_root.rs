//! Every layer of the workspace is reachable at the facade root as `tower_deepseek::<LayerName>`
//! (issue 16: one shape for every layer), and each can be built there and applied with its
//! `ServiceBuilderExt` method, named after it.

use std::convert::Infallible;

use tower::ServiceBuilder;
use tower_deepseek::ServiceBuilderExt;
use tower_deepseek::{
    AdaptiveConcurrencyLayer, AuditLayer, BaseUrlLayer, BearerAuthLayer, CacheLayer,
    CircuitBreakerLayer, ContentFilterLayer, CostLayer, FailoverLayer, KeyedCircuitBreakerLayer,
    OAuth2Layer, RateLimitLayer, RedactLayer, RequestMetadataLayer, RetryLayer, TimeoutLayer,
};

fn built<T: std::fmt::Debug>(layer: &T) -> String {
    format!("{layer:?}")
}

#[test]
fn every_layer_is_at_the_root_and_has_its_builder_method() {
    let audit = AuditLayer::builder()
        .hmac_key(b"layers-at-root-audit-key-0123".to_vec())
        .build()
        .unwrap();
    let filter = ContentFilterLayer::builder()
        .keywords(["forbidden"])
        .build()
        .unwrap();
    let keyed: KeyedCircuitBreakerLayer = CircuitBreakerLayer::builder().build_keyed().unwrap();
    let failover = FailoverLayer::builder()
        .endpoint(tower_deepseek::breaker::Endpoint::new(
            "http://127.0.0.1:9".parse().unwrap(),
        ))
        .build()
        .unwrap();
    let token_service = tower::service_fn(|_req: http::Request<_>| async {
        Ok::<_, Infallible>(http::Response::new(http_body_util::Full::new(
            bytes::Bytes::new(),
        )))
    });
    let oauth2 = OAuth2Layer::new(
        tower_deepseek::auth::oauth2::OAuth2Config::new(
            "http://127.0.0.1:9/token",
            "client",
            "secret-at-root",
        ),
        token_service,
    )
    .unwrap();
    let oauth2_debug = oauth2.clone();

    // Each one, by its root path, through its `ServiceBuilderExt` method.
    let _ = ServiceBuilder::new()
        .request_metadata_layer(RequestMetadataLayer::default())
        .audit_layer(audit.clone())
        .redact_layer(RedactLayer::new())
        .review_layer(
            tower_deepseek::ReviewLayer::builder()
                .sink(tower_deepseek::redact::audit::TracingSink)
                .build()
                .unwrap(),
        )
        .content_filter_layer(filter.clone())
        .cache_layer(CacheLayer::new())
        .cost_layer(
            CostLayer::builder(tower_deepseek::retry::PriceTable::new("USD"))
                .build()
                .unwrap(),
        )
        .rate_limit_layer(RateLimitLayer::builder().build().unwrap())
        .adaptive_concurrency_layer(AdaptiveConcurrencyLayer::builder().build().unwrap())
        .retry_layer(RetryLayer::builder().build().unwrap())
        .timeout_layer(TimeoutLayer::builder().build().unwrap())
        .circuit_breaker_layer(CircuitBreakerLayer::new())
        .keyed_circuit_breaker_layer(keyed.clone())
        .failover_layer(failover.clone())
        .bearer_auth_layer(BearerAuthLayer::new("sk-layers-at-root").unwrap())
        .oauth2_layer(oauth2.clone())
        .base_url_layer(BaseUrlLayer::new("https://api.deepseek.com").unwrap())
        .into_inner();

    // The layers that hold a secret never show it, whatever path they are named by.
    let bearer = BearerAuthLayer::new("sk-layers-at-root").unwrap();
    assert!(!built(&bearer).contains("sk-layers-at-root"), "{bearer:?}");
    assert!(
        !built(&audit).contains("layers-at-root-audit-key"),
        "{audit:?}"
    );
    assert!(!built(&oauth2_debug).contains("secret-at-root"));
}
