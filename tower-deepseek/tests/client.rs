//! The facade's upstream client and base-URL rewriting, over loopback against the testkit.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tower::{ServiceBuilder, ServiceExt};
use tower_deepseek::client::{BaseUrlLayer, ClientConfig, upstream_client};
use tower_deepseek_testkit::MockServer;

#[tokio::test]
async fn relative_requests_reach_the_upstream_with_its_host() {
    let server = MockServer::start().await;
    let svc = ServiceBuilder::new()
        .layer(BaseUrlLayer::new(&format!("{}/v1", server.url())).unwrap())
        .service(upstream_client::<Full<Bytes>>(&ClientConfig::default()));

    let req = http::Request::get("/models")
        .header("host", "gateway.example")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = svc.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["object"], "list");

    let recorded = server.requests();
    assert_eq!(recorded[0].path, "/v1/models");
    let host = recorded[0].header("host").unwrap();
    assert_eq!(
        host,
        server.addr().to_string(),
        "the caller's Host is not forwarded"
    );

    // A second call reuses the pooled connection.
    let req = http::Request::get("/models")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(svc.oneshot(req).await.unwrap().status(), 200);
    assert_eq!(server.connections(), 1);
}

#[tokio::test]
async fn connect_errors_map_to_bad_gateway() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let svc = ServiceBuilder::new()
        .layer(BaseUrlLayer::new(&format!("http://127.0.0.1:{port}")).unwrap())
        .service(upstream_client::<Full<Bytes>>(&ClientConfig::default()));
    let err = svc
        .oneshot(
            http::Request::get("/models")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap_err();
    let res = tower_deepseek::error::error_response(&*err);
    assert_eq!(res.status(), 502);
}
