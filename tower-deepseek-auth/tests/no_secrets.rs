//! Captures every tracing line and every `Debug`/`Display` produced while running the
//! acceptance scenarios, and checks that none holds the client secret, the API key or a token.

mod support;

use std::time::Duration;

use base64::Engine as _;
use http::StatusCode;
use tower::{Layer, ServiceExt};
use tower_deepseek_auth::{BearerAuthLayer, OAuth2Config, OAuth2Layer};
use tower_deepseek_testkit::{Fault, Match, MockServer};
use tracing_subscriber::fmt::format::FmtSpan;

use support::*;

const API_KEY: &str = "sk-api-key-never-logged-9d2e";

#[tokio::test(flavor = "current_thread")]
async fn no_secret_key_or_token_in_logs_or_debug_output() {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_span_events(FmtSpan::FULL)
        .with_ansi(false)
        .with_writer(capture.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();
    let mut shown = Vec::<String>::new();

    // Static key.
    let server = MockServer::builder()
        .api_key(API_KEY)
        .oauth_client(CLIENT, SECRET)
        .token_lifetime(Duration::from_secs(2))
        .start()
        .await;
    let bearer = BearerAuthLayer::new(API_KEY).unwrap();
    shown.push(format!("{bearer:?}"));
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let svc = bearer.layer(http);
    shown.push(format!("{svc:?}"));
    let resp = svc
        .oneshot(chat_request(server.uri("/chat/completions"), "hi"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    // OAuth2: cold start, refresh ahead (2 s tokens refresh at 1 s), 401 replay, two 401s.
    let config = OAuth2Config::new(server.token_url(), CLIENT, SECRET)
        .refresh_jitter(Duration::ZERO)
        .deadline(Duration::from_millis(400))
        .attempt_timeout(Duration::from_millis(150));
    shown.push(format!("{config:?}"));
    // With Redis: one that is down (its URL even carries the secret as a password).
    #[cfg(feature = "redis")]
    let store = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!(
            "redis://:{SECRET}@127.0.0.1:{}",
            l.local_addr().unwrap().port()
        );
        tower_deepseek_auth::store::RedisTokenStore::open(&url).unwrap()
    };
    #[cfg(not(feature = "redis"))]
    let store = tower_deepseek_auth::store::MemoryTokenStore::new();
    shown.push(format!("{store:?}"));
    let builder = OAuth2Layer::builder(config.clone(), token_client()).store(store);
    shown.push(format!("{builder:?}"));
    let layer = builder.build().unwrap();
    let svc = layer.layer(api_client());
    for i in 0..5 {
        let resp = svc
            .clone()
            .oneshot(chat_request(
                server.uri("/chat/completions"),
                &format!("m{i}"),
            ))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }
    shown.push(format!("{layer:?}"));
    shown.push(format!("{svc:?}"));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let resp = svc
        .clone()
        .oneshot(chat_request(server.uri("/chat/completions"), "refresh"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    for _ in 0..50 {
        if server.token_fetches() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(server.token_fetches() >= 2, "the refresh ran");
    server.revoke_tokens();
    let resp = svc
        .clone()
        .oneshot(chat_request(server.uri("/chat/completions"), "replay"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    server.enqueue_when(Match::chat(), Fault::status(401));
    server.enqueue_when(Match::chat(), Fault::status(401));
    let resp = svc
        .clone()
        .oneshot(chat_request(server.uri("/chat/completions"), "twice"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    // A hanging token endpoint, then wrong credentials.
    server.always(Match::token(), Fault::hang());
    let hanging = OAuth2Layer::new(config.clone(), token_client()).unwrap();
    let err = hanging
        .layer(api_client())
        .oneshot(chat_request(server.uri("/chat/completions"), "x"))
        .await
        .unwrap_err();
    shown.push(format!("{err} {err:?}"));
    server.clear_faults();
    let wrong = OAuth2Config::new(server.token_url(), CLIENT, format!("{SECRET}-wrong"));
    shown.push(format!("{wrong:?}"));
    let err = OAuth2Layer::new(wrong, token_client())
        .unwrap()
        .layer(api_client())
        .oneshot(chat_request(server.uri("/chat/completions"), "x"))
        .await
        .unwrap_err();
    shown.push(format!("{err} {err:?}"));
    let source = std::error::Error::source(&*err).map(|s| format!("{s} {s:?}"));
    shown.push(source.unwrap_or_default());

    // Every token the server saw (and so every token issued to us).
    let tokens: Vec<String> = server
        .requests()
        .iter()
        .filter_map(|r| r.bearer().map(str::to_owned))
        .filter(|t| t != API_KEY)
        .collect();
    assert!(tokens.len() >= 3, "tokens seen: {}", tokens.len());
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT}:{SECRET}"));

    let logs = capture.text();
    assert!(logs.contains("tower_deepseek_auth"), "the layer logged");
    #[cfg(feature = "redis")]
    assert!(logs.contains("fail open"), "the store failure was logged");
    let all = format!("{logs}\n{}", shown.join("\n"));
    for needle in [SECRET, API_KEY, basic.as_str()]
        .into_iter()
        .chain(tokens.iter().map(String::as_str))
    {
        assert!(!all.contains(needle), "leaked a credential into:\n{all}");
    }
}
