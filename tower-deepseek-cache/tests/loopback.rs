//! The cache over real loopback HTTP against the testkit's DeepSeek mock.

mod common;

use std::time::Duration;

use common::*;
use http::Request;
use serde_json::{Value, json};
use tower::{Layer, ServiceExt};
use tower_deepseek_cache::{CacheLayer, CacheOptions};
use tower_deepseek_core::body::BufferedBody;
use tower_deepseek_core::error::BodyTooLarge;
use tower_deepseek_core::meta::TenantId;
use tower_deepseek_testkit::{Fault, MockServer};

#[tokio::test]
async fn json_miss_then_l1_hit_with_the_same_answer() {
    let server = MockServer::start().await;
    let svc = CacheLayer::new().layer(upstream(&server));
    let body = chat_body("hello there", json!({}));

    let (xc, first) = call(&svc, post(&body)).await;
    assert_eq!(xc, "miss");
    let (xc, second) = call(&svc, post(&body)).await;
    assert_eq!(xc, "hit-l1");
    assert_eq!(server.chat_count(), 1);
    let (a, b) = (json_answer(&first), json_answer(&second));
    assert_eq!(a.content, "Echo: hello there");
    assert!(same_answer(&a, &b), "{a:?} != {b:?}");

    // Field order and whitespace do not matter.
    let reordered = format!(
        "{{ \"messages\" : {} , \"temperature\": 0.0, \"model\":\"deepseek-chat\" }}",
        body["messages"]
    );
    let req = Request::post("/chat/completions")
        .body(BufferedBody::from(reordered))
        .unwrap();
    let (xc, _) = call(&svc, req).await;
    assert_eq!(xc, "hit-l1");
    assert_eq!(server.chat_count(), 1);
}

#[tokio::test]
async fn stream_is_recorded_and_replays_as_sse_and_as_json() {
    let server = MockServer::start().await;
    let svc = CacheLayer::new().layer(upstream(&server));
    // Thinking mode and a tool: reasoning_content, tool_calls, finish_reason, usage.
    let extra = json!({
        "model": "deepseek-reasoner",
        "stream": true,
        "stream_options": {"include_usage": true},
        "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {}}}],
    });
    let body = chat_body("the weather in Paris", extra);

    let resp = svc.clone().oneshot(post(&body)).await.unwrap();
    assert_eq!(x_cache(&resp), "miss");
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let live = sse_answer(&read_all(resp.into_body()).await.unwrap());
    assert!(live.done);
    assert_eq!(live.reasoning, "Thinking about: the weather in Paris");
    assert_eq!(live.finish_reason.as_deref(), Some("tool_calls"));
    assert_eq!(live.tool_calls.len(), 1);
    assert!(live.usage.is_some());

    let resp = svc.clone().oneshot(post(&body)).await.unwrap();
    assert_eq!(x_cache(&resp), "hit-l1");
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let replayed = sse_answer(&read_all(resp.into_body()).await.unwrap());
    assert!(replayed.done);
    assert!(same_answer(&live, &replayed), "{live:?}\n!=\n{replayed:?}");

    // The same request without `stream` is the same key: served as a JSON completion.
    let mut plain = body.clone();
    plain.as_object_mut().unwrap().remove("stream");
    plain.as_object_mut().unwrap().remove("stream_options");
    let resp = svc.clone().oneshot(post(&plain)).await.unwrap();
    assert_eq!(x_cache(&resp), "hit-l1");
    assert_eq!(resp.headers()["content-type"], "application/json");
    let as_json = json_answer(&read_all(resp.into_body()).await.unwrap());
    assert!(same_answer(&live, &as_json), "{live:?}\n!=\n{as_json:?}");

    // Without include_usage, no usage chunk.
    let mut no_usage = body.clone();
    no_usage.as_object_mut().unwrap().remove("stream_options");
    let (xc, bytes) = call(&svc, post(&no_usage)).await;
    assert_eq!(xc, "hit-l1");
    assert!(sse_answer(&bytes).usage.is_none());
    assert_eq!(server.chat_count(), 1);
}

#[tokio::test]
async fn stored_json_answer_replays_as_a_stream() {
    let server = MockServer::start().await;
    let svc = CacheLayer::new().layer(upstream(&server));
    let body = chat_body("json first", json!({"model": "deepseek-reasoner"}));
    let (xc, bytes) = call(&svc, post(&body)).await;
    assert_eq!(xc, "miss");
    let original = json_answer(&bytes);
    assert!(!original.reasoning.is_empty());

    let mut streaming = body.clone();
    streaming["stream"] = json!(true);
    streaming["stream_options"] = json!({"include_usage": true});
    let (xc, bytes) = call(&svc, post(&streaming)).await;
    assert_eq!(xc, "hit-l1");
    let replay = sse_answer(&bytes);
    assert!(replay.done);
    assert!(
        same_answer(&original, &replay),
        "{original:?}\n!=\n{replay:?}"
    );
    assert_eq!(server.chat_count(), 1);
}

#[tokio::test]
async fn cut_streams_errors_and_in_band_errors_are_never_served_from_cache() {
    let server = MockServer::start().await;
    let svc = CacheLayer::new().layer(upstream(&server));
    let body = chat_body("cut me off", json!({"stream": true}));

    server.enqueue(Fault::cut_without_done(2));
    let resp = svc.clone().oneshot(post(&body)).await.unwrap();
    assert_eq!(x_cache(&resp), "miss");
    let _ = read_all(resp.into_body()).await; // ends early, maybe with an error
    let (xc, bytes) = call(&svc, post(&body)).await;
    assert_eq!(xc, "miss", "a cut stream must not be stored");
    assert!(sse_answer(&bytes).done);
    assert_eq!(server.chat_count(), 2);

    let body = chat_body("errors", json!({}));
    server.enqueue(Fault::status(500));
    let resp = svc.clone().oneshot(post(&body)).await.unwrap();
    assert_eq!(resp.status(), 500);
    let _ = read_all(resp.into_body()).await;
    server.enqueue(Fault::in_band_error());
    let (xc, _) = call(&svc, post(&body)).await;
    assert_eq!(xc, "miss");
    server.enqueue(Fault::finish_reason("insufficient_system_resource"));
    let (xc, _) = call(&svc, post(&body)).await;
    assert_eq!(xc, "miss");
    let (xc, _) = call(&svc, post(&body)).await;
    assert_eq!(xc, "miss", "only now a good answer arrives");
    let (xc, _) = call(&svc, post(&body)).await;
    assert_eq!(xc, "hit-l1");
    assert_eq!(server.chat_count(), 2 + 4);

    // A reset mid-stream is not stored either.
    let body = chat_body("reset me please now", json!({"stream": true}));
    server.enqueue(Fault::reset_mid_stream(2));
    let resp = svc.clone().oneshot(post(&body)).await.unwrap();
    assert!(read_all(resp.into_body()).await.is_err());
    let (xc, _) = call(&svc, post(&body)).await;
    assert_eq!(xc, "miss");
}

#[tokio::test]
async fn temperature_cache_control_and_options() {
    let server = MockServer::start().await;
    let svc = CacheLayer::new().layer(upstream(&server));

    // Non-zero (or absent) temperature: bypass by default.
    let warm = chat_body("warm", json!({"temperature": 0.7}));
    assert_eq!(call(&svc, post(&warm)).await.0, "bypass");
    assert_eq!(call(&svc, post(&warm)).await.0, "bypass");
    let mut absent = chat_body("absent", json!({}));
    absent.as_object_mut().unwrap().remove("temperature");
    assert_eq!(call(&svc, post(&absent)).await.0, "bypass");

    // Per-request opt-in.
    let opt_in = || {
        let mut r = post(&warm);
        r.extensions_mut()
            .insert(CacheOptions::new().cache_nonzero_temperature(true));
        r
    };
    assert_eq!(call(&svc, opt_in()).await.0, "miss");
    assert_eq!(call(&svc, opt_in()).await.0, "hit-l1");

    // Per-config opt-in.
    let all = CacheLayer::builder()
        .cache_nonzero_temperature(true)
        .build()
        .unwrap()
        .layer(upstream(&server));
    assert_eq!(call(&all, post(&warm)).await.0, "miss");
    assert_eq!(call(&all, post(&warm)).await.0, "hit-l1");

    // no-store bypasses; no-cache refreshes.
    let cold = chat_body("cold", json!({}));
    assert_eq!(call(&svc, post(&cold)).await.0, "miss");
    let before = server.chat_count();
    let mut r = post(&cold);
    r.headers_mut()
        .insert("cache-control", "no-store".parse().unwrap());
    assert_eq!(call(&svc, r).await.0, "bypass");
    let mut r = post(&cold);
    r.headers_mut()
        .insert("cache-control", "max-age=0, No-Cache".parse().unwrap());
    assert_eq!(call(&svc, r).await.0, "miss");
    assert_eq!(server.chat_count(), before + 2);
    assert_eq!(call(&svc, post(&cold)).await.0, "hit-l1");
    let mut r = post(&cold);
    r.extensions_mut().insert(CacheOptions::new().bypass(true));
    assert_eq!(call(&svc, r).await.0, "bypass");

    // Not JSON, other endpoints, other methods: bypass.
    let r = Request::post("/chat/completions")
        .header("content-type", "text/plain")
        .body(BufferedBody::from("hello"))
        .unwrap();
    assert_eq!(
        svc.clone().oneshot(r).await.unwrap().headers()["x-cache"],
        "bypass"
    );
    let r = Request::get("/models").body(BufferedBody::empty()).unwrap();
    let (xc, bytes) = call(&svc, r).await;
    assert_eq!(xc, "bypass");
    assert!(String::from_utf8_lossy(&bytes).contains("deepseek-chat"));
}

#[tokio::test]
async fn tenants_never_share_answers() {
    let server = MockServer::start().await;
    let svc = CacheLayer::new().layer(upstream(&server));
    let body = chat_body("secret plans", json!({}));
    let as_tenant = |t: &str| {
        let mut r = post(&body);
        r.extensions_mut().insert(TenantId::new(t));
        r
    };
    assert_eq!(call(&svc, as_tenant("a")).await.0, "miss");
    assert_eq!(call(&svc, as_tenant("a")).await.0, "hit-l1");
    assert_eq!(call(&svc, as_tenant("b")).await.0, "miss");
    assert_eq!(
        call(&svc, post(&body)).await.0,
        "miss",
        "anonymous is its own scope"
    );

    let with_key = |k: &str| {
        let mut r = post(&body);
        r.headers_mut()
            .insert("authorization", format!("Bearer {k}").parse().unwrap());
        r
    };
    assert_eq!(call(&svc, with_key("sk-one")).await.0, "miss");
    assert_eq!(call(&svc, with_key("sk-two")).await.0, "miss");
    assert_eq!(call(&svc, with_key("sk-one")).await.0, "hit-l1");
    assert_eq!(server.chat_count(), 5);
}

#[tokio::test]
async fn oversized_request_is_a_typed_error_and_not_sent() {
    let server = MockServer::start().await;
    let svc = CacheLayer::builder()
        .max_request_bytes(64)
        .build()
        .unwrap()
        .layer(upstream(&server));
    let body = chat_body(&"x".repeat(100), json!({}));
    let err = svc.oneshot(post(&body)).await.unwrap_err();
    assert!(err.downcast_ref::<BodyTooLarge>().is_some(), "{err}");
    assert_eq!(server.chat_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_identical_requests_make_one_upstream_call() {
    let server = MockServer::builder()
        .stream_chunk_delay(Duration::from_millis(5))
        .start()
        .await;
    let svc = CacheLayer::new().layer(upstream(&server));
    let body = chat_body("one for all and all for one", json!({"stream": true}));

    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let svc = svc.clone();
        let req = post(&body);
        tasks.push(tokio::spawn(async move {
            let resp = svc.oneshot(req).await.unwrap();
            let xc = x_cache(&resp);
            (xc, read_all(resp.into_body()).await.unwrap())
        }));
    }
    let mut misses = 0;
    for t in tasks {
        let (xc, bytes) = t.await.unwrap();
        let a = sse_answer(&bytes);
        assert!(a.done);
        assert_eq!(a.content, "Echo: one for all and all for one");
        if xc == "miss" {
            misses += 1;
        }
    }
    assert_eq!(server.chat_count(), 1);
    assert!(misses >= 1);
}

#[tokio::test]
async fn leaders_caller_dropped_mid_stream_followers_still_get_complete_answers() {
    let server = MockServer::builder()
        .stream_chunk_delay(Duration::from_millis(10))
        .start()
        .await;
    let svc = CacheLayer::new().layer(upstream(&server));
    let body = chat_body("a b c d e f g h", json!({"stream": true}));

    let leader = svc.clone().oneshot(post(&body)).await.unwrap();
    assert_eq!(x_cache(&leader), "miss");
    let mut leader_body = leader.into_body();
    use http_body_util::BodyExt;
    let first = leader_body.frame().await.unwrap().unwrap();
    assert!(first.is_data());

    // Followers join the flight (their heads arrive at once), then the leader's caller leaves.
    let mut followers = Vec::new();
    for _ in 0..5 {
        followers.push(svc.clone().oneshot(post(&body)).await.unwrap());
    }
    drop(leader_body);
    for f in followers {
        assert_eq!(x_cache(&f), "miss");
        let a = sse_answer(&read_all(f.into_body()).await.unwrap());
        assert!(a.done, "a follower got a cut stream");
        assert_eq!(a.content, "Echo: a b c d e f g h");
    }
    assert_eq!(server.chat_count(), 1);
    // The background task also stored the answer.
    assert_eq!(call(&svc, post(&body)).await.0, "hit-l1");
    assert_eq!(server.chat_count(), 1);
}

#[tokio::test]
async fn fim_completions_are_cached_too() {
    let server = MockServer::start().await;
    let svc = CacheLayer::new().layer(upstream(&server));
    let body = json!({"model": "deepseek-chat", "prompt": "fn main() {", "temperature": 0});
    let req = || {
        Request::post("/beta/completions")
            .body(BufferedBody::from(body.to_string()))
            .unwrap()
    };
    let (xc, first) = call(&svc, req()).await;
    assert_eq!(xc, "miss");
    let (xc, second) = call(&svc, req()).await;
    assert_eq!(xc, "hit-l1");
    let (a, b): (Value, Value) = (
        serde_json::from_slice(&first).unwrap(),
        serde_json::from_slice(&second).unwrap(),
    );
    assert_eq!(a["choices"][0]["text"], b["choices"][0]["text"]);
    assert_eq!(b["object"], "text_completion");
    assert_eq!(server.request_count("/beta/completions"), 1);
}
