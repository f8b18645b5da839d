//! OAuth2Layer against the testkit's token endpoint and chat API, over real loopback HTTP.

mod support;

use std::time::{Duration, Instant};

use http::StatusCode;
use tower::{Layer, Service, ServiceExt};
use tower_deepseek_auth::{OAuth2Config, OAuth2Layer, TokenFetchErrorKind, TokenFetchFailed};
use tower_deepseek_testkit::{Fault, Match, MockServer, TOKEN_PATH};

use support::*;

async fn server() -> MockServer {
    MockServer::builder()
        .oauth_client(CLIENT, SECRET)
        .require_auth(true)
        .start()
        .await
}

fn config(server: &MockServer) -> OAuth2Config {
    OAuth2Config::new(server.token_url(), CLIENT, SECRET)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_requests_on_a_cold_start_cause_one_fetch() {
    let server = server().await;
    let layer = OAuth2Layer::new(config(&server), token_client()).unwrap();
    let svc = layer.layer(api_client());
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let svc = svc.clone();
        let uri = server.uri("/chat/completions");
        tasks.push(tokio::spawn(async move {
            svc.oneshot(chat_request(uri, &format!("hello {i}"))).await
        }));
    }
    for task in tasks {
        let resp = task.await.unwrap().unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }
    assert_eq!(server.token_fetches(), 1);
    assert_eq!(server.chat_count(), 1000);
    let tokens: std::collections::HashSet<String> = server
        .requests_to("/chat/completions")
        .iter()
        .map(|r| r.bearer().unwrap().to_owned())
        .collect();
    assert_eq!(tokens.len(), 1);
}

#[tokio::test]
async fn a_401_causes_one_refresh_and_one_replay() {
    let server = server().await;
    let layer = OAuth2Layer::new(config(&server), token_client()).unwrap();
    let mut svc = layer.layer(api_client());
    let first = svc
        .ready()
        .await
        .unwrap()
        .call(chat_request(server.uri("/chat/completions"), "one"))
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(server.token_fetches(), 1);

    server.revoke_tokens();
    let resp = svc
        .ready()
        .await
        .unwrap()
        .call(chat_request(server.uri("/chat/completions"), "two"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(body_string(resp).await.contains("Echo: two"));
    assert_eq!(server.token_fetches(), 2, "exactly one refresh");
    let chats = server.requests_to("/chat/completions");
    assert_eq!(
        chats.len(),
        3,
        "the first call, the refused one and one replay"
    );
    assert_eq!(
        chats[1].body, chats[2].body,
        "the replay carries the same body"
    );
    assert_eq!(chats[0].bearer(), chats[1].bearer());
    assert_ne!(chats[1].bearer(), chats[2].bearer());
    assert_eq!(
        chats[2].header("content-type"),
        Some("application/json"),
        "the replay keeps the caller's headers"
    );

    // The new token serves the next request without another fetch.
    let resp = svc
        .ready()
        .await
        .unwrap()
        .call(chat_request(server.uri("/chat/completions"), "three"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(server.token_fetches(), 2);
}

#[tokio::test]
async fn two_401s_in_a_row_reach_the_caller_after_one_refresh() {
    let server = server().await;
    let layer = OAuth2Layer::new(config(&server), token_client()).unwrap();
    let svc = layer.layer(api_client());
    server.enqueue_when(Match::chat(), Fault::status(401));
    server.enqueue_when(Match::chat(), Fault::status(401));
    let resp = svc
        .oneshot(chat_request(server.uri("/chat/completions"), "x"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(server.token_fetches(), 2, "the first token and one refresh");
    assert_eq!(server.chat_count(), 2, "one replay, no loop");
}

#[tokio::test]
async fn a_hanging_token_endpoint_yields_a_typed_timeout_within_the_deadline() {
    let server = server().await;
    server.always(Match::token(), Fault::hang());
    let deadline = Duration::from_millis(600);
    let cfg = config(&server)
        .deadline(deadline)
        .attempt_timeout(Duration::from_millis(200));
    let layer = OAuth2Layer::new(cfg, token_client()).unwrap();
    let svc = layer.layer(api_client());
    let started = Instant::now();
    let err = svc
        .oneshot(chat_request(server.uri("/chat/completions"), "x"))
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    let err = err.downcast_ref::<TokenFetchFailed>().expect("typed error");
    assert_eq!(err.kind(), TokenFetchErrorKind::Timeout);
    assert!(err.attempts() >= 2, "timeouts are retried: {err:?}");
    assert!(
        elapsed <= deadline + Duration::from_millis(400),
        "{elapsed:?}"
    );
    assert_eq!(server.chat_count(), 0, "nothing was sent without a token");
}

#[tokio::test]
async fn wrong_credentials_are_not_retried_and_shared_with_waiters() {
    let server = server().await;
    let cfg = OAuth2Config::new(server.token_url(), CLIENT, "wrong-secret-value");
    let layer = OAuth2Layer::new(cfg, token_client()).unwrap();
    let svc = layer.layer(api_client());
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let svc = svc.clone();
        let uri = server.uri("/chat/completions");
        tasks.push(tokio::spawn(async move {
            svc.oneshot(chat_request(uri, "x")).await
        }));
    }
    for task in tasks {
        let err = task.await.unwrap().unwrap_err();
        let err = err.downcast_ref::<TokenFetchFailed>().unwrap();
        assert_eq!(err.kind(), TokenFetchErrorKind::InvalidClient);
        assert_eq!(err.status(), Some(StatusCode::UNAUTHORIZED));
        assert!(!err.to_string().contains("wrong-secret"));
    }
    assert_eq!(
        server.token_fetches(),
        1,
        "not retried, one fetch for all waiters"
    );
}

#[tokio::test]
async fn transient_token_endpoint_errors_are_retried() {
    let server = server().await;
    server.enqueue_when(Match::token(), Fault::status(503));
    server.enqueue_when(Match::token(), Fault::status(500));
    let layer = OAuth2Layer::new(config(&server), token_client()).unwrap();
    let resp = layer
        .layer(api_client())
        .oneshot(chat_request(server.uri("/chat/completions"), "x"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(server.token_fetches(), 3);
}

#[tokio::test]
async fn a_dead_token_endpoint_is_a_typed_connect_error() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let server = server().await;
    let cfg = OAuth2Config::new(
        format!("http://127.0.0.1:{port}{TOKEN_PATH}"),
        CLIENT,
        SECRET,
    )
    .deadline(Duration::from_millis(500))
    .attempt_timeout(Duration::from_millis(200));
    let layer = OAuth2Layer::new(cfg, token_client()).unwrap();
    let err = layer
        .layer(api_client())
        .oneshot(chat_request(server.uri("/chat/completions"), "x"))
        .await
        .unwrap_err();
    let err = err.downcast_ref::<TokenFetchFailed>().unwrap();
    assert_eq!(err.kind(), TokenFetchErrorKind::Connect, "{err:?}");
    assert!(err.attempts() >= 2);
}

#[tokio::test]
async fn missing_expires_in_uses_the_default_lifetime() {
    let server = MockServer::builder()
        .oauth_client(CLIENT, SECRET)
        .require_auth(true)
        .omit_expires_in(true)
        .start()
        .await;
    let layer = OAuth2Layer::new(config(&server), token_client()).unwrap();
    layer.warm_up().await.unwrap();
    let shown = format!("{layer:?}");
    assert!(shown.contains("generation: 1"), "{shown}");
    let resp = layer
        .layer(api_client())
        .oneshot(chat_request(server.uri("/chat/completions"), "x"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(server.token_fetches(), 1);
}
