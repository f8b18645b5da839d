//! BearerAuthLayer against the testkit over loopback HTTP.

mod support;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Layer, ServiceExt};
use tower_deepseek_auth::BearerAuthLayer;
use tower_deepseek_testkit::MockServer;

use support::chat_request;

#[tokio::test]
async fn the_key_is_accepted_and_a_wrong_one_is_not_replaced_by_default() {
    let server = MockServer::builder().api_key("sk-loopback-1").start().await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let svc = BearerAuthLayer::new("sk-loopback-1").unwrap().layer(client);
    let resp = svc
        .clone()
        .oneshot(chat_request(server.uri("/chat/completions"), "hi"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(server.requests()[0].bearer(), Some("sk-loopback-1"));

    // A request that brings its own credential keeps it (and is refused here).
    let mut req = chat_request(server.uri("/chat/completions"), "hi");
    req.headers_mut()
        .insert("authorization", "Bearer sk-other".parse().unwrap());
    let resp = svc.oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}
