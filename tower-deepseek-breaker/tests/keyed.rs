//! Per-key breakers and configuration from serde.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use tower::Layer;
use tower_deepseek_breaker::{
    CircuitBreakerConfig, CircuitBreakerLayer, ModelHint, RequestHead, State,
};
use tower_deepseek_core::meta::TenantId;

use support::{Answer, call, is_breaker_open};

fn to(authority: &str, answer: Answer, model: Option<&str>) -> Request<Full<Bytes>> {
    let mut r = support::request(answer);
    *r.uri_mut() = format!("http://{authority}/chat/completions")
        .parse()
        .unwrap();
    if let Some(m) = model {
        r.extensions_mut().insert(ModelHint::new(m));
    }
    r
}

#[tokio::test(start_paused = true)]
async fn each_upstream_and_model_has_its_own_breaker() {
    let layer = CircuitBreakerLayer::builder()
        .name("keyed")
        .count_based_window(2)
        .build_keyed()
        .unwrap();
    let mut svc = layer.layer(support::scripted());
    for _ in 0..2 {
        call(
            &mut svc,
            to("az1.test", Answer::Status(500), Some("deepseek-chat")),
        )
        .await
        .unwrap();
    }
    let err = call(&mut svc, to("az1.test", Answer::Ok, Some("deepseek-chat")))
        .await
        .unwrap_err();
    assert!(is_breaker_open(&err));
    // Same upstream, other model; other upstream: unaffected.
    call(
        &mut svc,
        to("az1.test", Answer::Ok, Some("deepseek-reasoner")),
    )
    .await
    .unwrap();
    call(&mut svc, to("az2.test", Answer::Ok, None))
        .await
        .unwrap();
    let h = layer
        .handle(&"az1.test/deepseek-chat".to_owned())
        .expect("created on first use");
    assert_eq!(h.state(), State::Open);
    assert_eq!(h.name(), "keyed/az1.test/deepseek-chat");
    assert_eq!(
        layer.handle(&"az2.test".to_owned()).unwrap().state(),
        State::Closed
    );
    assert!(layer.handle(&"az3.test".to_owned()).is_none());
    h.reset();
    call(&mut svc, to("az1.test", Answer::Ok, Some("deepseek-chat")))
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_custom_key_function_keys_by_tenant() {
    let layer = CircuitBreakerLayer::builder()
        .count_based_window(1)
        .build_keyed()
        .unwrap()
        .key_fn(|head: &RequestHead<'_>| {
            head.extensions
                .get::<TenantId>()
                .map_or_else(|| "anonymous".to_owned(), |t| t.as_str().to_owned())
        });
    let mut svc = layer.layer(support::scripted());
    let with_tenant = |t: &str, a: Answer| {
        let mut r = support::request(a);
        r.extensions_mut().insert(TenantId::new(t));
        r
    };
    call(&mut svc, with_tenant("acme", Answer::Status(502)))
        .await
        .unwrap();
    assert!(is_breaker_open(
        &call(&mut svc, with_tenant("acme", Answer::Ok))
            .await
            .unwrap_err()
    ));
    call(&mut svc, with_tenant("globex", Answer::Ok))
        .await
        .unwrap();
    assert_eq!(layer.handles().len(), 2);
}

#[test]
fn config_reads_from_json_with_defaults_and_is_validated() {
    let c: CircuitBreakerConfig = serde_json::from_str(
        r#"{"name":"zone-a","failure_rate_threshold":25,"sliding_window_type":"time_based",
            "sliding_window_size":60,"wait_duration_in_open_ms":45000,"max_wait_in_half_open_ms":10000}"#,
    )
    .unwrap();
    assert_eq!(c.failure_rate_threshold, 25.0);
    assert_eq!(c.wait_duration_in_open, Duration::from_secs(45));
    assert_eq!(c.max_wait_in_half_open, Some(Duration::from_secs(10)));
    assert_eq!(c.permitted_calls_in_half_open, 5, "default kept");
    let layer = CircuitBreakerLayer::from_config(c).unwrap();
    assert_eq!(layer.handle().name(), "zone-a");

    assert!(serde_json::from_str::<CircuitBreakerConfig>(r#"{"wait_s":1}"#).is_err());
    let bad: CircuitBreakerConfig =
        serde_json::from_str(r#"{"permitted_calls_in_half_open":0}"#).unwrap();
    assert_eq!(
        CircuitBreakerLayer::from_config(bad).unwrap_err().field(),
        "permitted_calls_in_half_open"
    );
}

#[tokio::test(start_paused = true)]
async fn a_half_open_that_never_decides_reopens_after_its_max_wait() {
    let layer = CircuitBreakerLayer::builder()
        .max_wait_in_half_open(Duration::from_secs(60))
        .build()
        .unwrap();
    let h = layer.handle();
    h.transition_to_half_open();
    tokio::time::advance(Duration::from_secs(60)).await;
    assert_eq!(h.state(), State::Open);
}
