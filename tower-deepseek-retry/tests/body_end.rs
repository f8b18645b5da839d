//! The end of a handed-over answer is judged when the body reaches its declared end, not on a
//! final poll that a server never makes (hyper stops polling once it has written the
//! `Content-Length` it announced).

mod support;

use http_body::Body;
use http_body_util::BodyExt;
use support::*;
use tower::{Layer, Service, ServiceExt};
use tower_deepseek_core::error::IncompleteResponse;
use tower_deepseek_retry::RetryLayer;

async fn call(script: &Script) -> tower_deepseek_retry::ResponseBody<TestBody> {
    let mut svc = RetryLayer::builder()
        .no_budget()
        .build()
        .unwrap()
        .layer(script.clone());
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(req(r#"{"model":"m","stream":true,"messages":[]}"#))
        .await
        .unwrap();
    res.into_body()
}

#[tokio::test(start_paused = true)]
async fn a_watched_stream_read_to_its_end_reports_it_without_another_poll() {
    let script = Script::new([sse(TestBody::chunks([
        "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n",
        "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n",
    ]))]);
    let mut body = call(&script).await;
    let mut seen = String::new();
    while !body.is_end_stream() {
        let frame = body.frame().await.expect("a frame before the end").unwrap();
        seen.push_str(std::str::from_utf8(frame.data_ref().unwrap()).unwrap());
    }
    assert!(seen.ends_with("data: [DONE]\n\n"), "{seen}");
}

#[tokio::test(start_paused = true)]
async fn a_watched_stream_cut_at_its_declared_end_errors_on_the_next_poll() {
    let script = Script::new([sse(TestBody::chunks([
        "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\" there\"}}]}\n\n",
    ]))]);
    let mut body = call(&script).await;
    let mut errors = 0;
    while let Some(frame) = body.frame().await {
        if let Err(e) = frame {
            assert!(e.downcast_ref::<IncompleteResponse>().is_some(), "{e}");
            errors += 1;
        }
    }
    assert_eq!(errors, 1);
    assert!(body.is_end_stream());
}
