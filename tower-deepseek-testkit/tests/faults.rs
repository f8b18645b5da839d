//! Every fault kind, produced over real loopback HTTP.

mod common;

use std::time::Duration;

use http::{Method, StatusCode, header};
use serde_json::Value;
use tokio::time::Instant;
use tower_deepseek_testkit::{Fault, Match, MockServer};

use common::*;

const MS: Duration = Duration::from_millis(1);

#[tokio::test]
async fn status_with_retry_after_then_normal() {
    let server = MockServer::start().await;
    server.enqueue(Fault::status(429).header("retry-after", "2"));
    let client = client();

    let resp = send(
        &client,
        post_json(&server, "/chat/completions", &chat_body("hi")),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(resp.headers()[header::RETRY_AFTER], "2");
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
    assert_error_shape(&body_json(resp).await, "Rate Limit Reached");

    // The queued fault was consumed.
    let resp = send(
        &client,
        post_json(&server, "/chat/completions", &chat_body("hi")),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(server.chat_count(), 2);
}

#[tokio::test]
async fn status_default_messages_and_custom_body() {
    let server = MockServer::start().await;
    let client = client();
    for (code, message) in [
        (400, "Invalid Format"),
        (401, "Authentication Fails"),
        (402, "Insufficient Balance"),
        (422, "Invalid Parameters"),
        (500, "Server Error"),
        (502, "Bad Gateway"),
        (503, "Server Overloaded"),
        (504, "Gateway Timeout"),
    ] {
        server.enqueue(Fault::status(code));
        let resp = send(&client, get(&server, "/models")).await;
        assert_eq!(resp.status().as_u16(), code);
        assert_error_shape(&body_json(resp).await, message);
    }
    server.enqueue(Fault::status(500).body("upstream exploded"));
    let resp = send(&client, get(&server, "/models")).await;
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body_bytes(resp).await, "upstream exploded");
}

#[tokio::test]
async fn delay_before_headers() {
    let server = MockServer::start().await;
    server.enqueue(Fault::ok().delay(60 * MS));
    let client = client();
    let start = Instant::now();
    let resp = send(
        &client,
        post_json(&server, "/chat/completions", &chat_body("slow")),
    )
    .await;
    assert!(start.elapsed() >= 60 * MS);
    assert_eq!(resp.status(), StatusCode::OK);
    let v = body_json(resp).await;
    assert_eq!(v["choices"][0]["message"]["content"], "Echo: slow");
}

#[tokio::test]
async fn hang_blocks_no_other_connection_and_ends_on_shutdown() {
    let server = MockServer::start().await;
    server.enqueue_when(Match::path("/models"), Fault::hang());
    server.enqueue_when(Match::path("/user/balance"), Fault::ok().delay(10_000 * MS));

    let hanging = {
        let client = client();
        let req = get(&server, "/models");
        tokio::spawn(async move { client.request(req).await })
    };
    let delayed = {
        let client = client();
        let req = get(&server, "/user/balance");
        tokio::spawn(async move { client.request(req).await })
    };
    // Other connections are served meanwhile.
    let client = client();
    for _ in 0..3 {
        let resp = send(&client, get(&server, "/models")).await;
        assert_eq!(resp.status(), StatusCode::OK);
    }
    assert!(!hanging.is_finished());
    assert!(!delayed.is_finished());

    // Shutdown ends the hang (no response) and does not wait for the long delay forever.
    server.clone().shutdown().await;
    let result = tokio::time::timeout(Duration::from_secs(5), hanging)
        .await
        .expect("hang did not end on shutdown")
        .unwrap();
    assert!(result.is_err(), "a hang must not produce a response");
    let result = tokio::time::timeout(Duration::from_secs(5), delayed)
        .await
        .expect("delay did not end on shutdown")
        .unwrap();
    assert!(result.is_err());
}

#[tokio::test]
async fn blank_lines_then_json() {
    let server = MockServer::start().await;
    server.enqueue(Fault::blank_lines(3, 5 * MS));
    let resp = send(
        &client(),
        post_json(&server, "/chat/completions", &chat_body("queued")),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
    let (frames, err) = read_frames(resp).await;
    assert!(err.is_none());
    // The head and the first blank line arrive before the answer.
    assert_eq!(frames[0].1, "\n");
    let body = concat(&frames);
    assert!(body.starts_with("\n\n\n{"), "{body:?}");
    let v: Value = serde_json::from_str(body.trim_start()).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "Echo: queued");
}

#[tokio::test]
async fn blank_lines_then_empty() {
    let server = MockServer::start().await;
    server.enqueue(Fault::blank_lines(2, 2 * MS).then_empty());
    let resp = send(
        &client(),
        post_json(&server, "/chat/completions", &chat_body("x")),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(body_bytes(resp).await, "\n\n");
}

#[tokio::test]
async fn keepalive_comments_before_first_event() {
    let server = MockServer::start().await;
    server.enqueue(Fault::keepalive_comments(2, 5 * MS));
    let resp = send(
        &client(),
        post_json(&server, "/chat/completions", &stream_body("hello there")),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/event-stream");
    let (frames, err) = read_frames(resp).await;
    assert!(err.is_none());
    assert_eq!(frames[0].1, ": keep-alive\n\n");
    let body = concat(&frames);
    assert!(body.starts_with(": keep-alive\n\n: keep-alive\n\ndata: {"));
    assert!(body.ends_with("data: [DONE]\n\n"));
    assert_eq!(streamed_content(&sse_chunks(&body)), "Echo: hello there");

    // then_empty: the comments and nothing else.
    server.enqueue(Fault::keepalive_comments(1, MS).then_empty());
    let resp = send(
        &client(),
        post_json(&server, "/chat/completions", &stream_body("x")),
    )
    .await;
    assert_eq!(body_bytes(resp).await, ": keep-alive\n\n");
}

#[tokio::test]
async fn reset_before_headers_gives_no_response() {
    let server = MockServer::start().await;
    server.enqueue(Fault::reset_before_headers());
    let body = chat_body("reset me");
    let result = client()
        .request(post_json(&server, "/chat/completions", &body))
        .await;
    assert!(
        result.is_err(),
        "expected a transport error, got {result:?}"
    );
    // Recorded before the reset.
    let recorded = server.requests_to("/chat/completions");
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].json().unwrap(), body);
    // The server keeps serving.
    let resp = send(&client(), get(&server, "/models")).await;
    assert_eq!(resp.status(), StatusCode::OK);
}

#[cfg(unix)]
#[tokio::test]
async fn reset_before_headers_is_a_tcp_reset() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let server = MockServer::start().await;
    server.enqueue(Fault::reset_before_headers());
    let mut tcp = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    tcp.write_all(b"GET /models HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let err = tcp.read(&mut buf).await.expect_err("expected a reset");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
}

#[tokio::test]
async fn reset_before_headers_after_delay() {
    let server = MockServer::start().await;
    server.enqueue(Fault::reset_before_headers().delay(30 * MS));
    let start = Instant::now();
    let result = client().request(get(&server, "/models")).await;
    assert!(result.is_err());
    assert!(start.elapsed() >= 30 * MS);
}

#[tokio::test]
async fn reset_mid_stream_after_events() {
    let server = MockServer::start().await;
    server.enqueue(Fault::reset_mid_stream(2));
    let resp = send(
        &client(),
        post_json(
            &server,
            "/chat/completions",
            &stream_body("one two three four"),
        ),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let (frames, err) = read_frames(resp).await;
    assert!(err.is_some(), "the body must fail");
    let body = concat(&frames);
    assert_eq!(sse_data(&body).len(), 2, "{body:?}");
    assert!(!body.contains("[DONE]"));

    // Non-streaming: half of the JSON, then a body error.
    server.enqueue(Fault::reset_mid_stream(0));
    let resp = send(
        &client(),
        post_json(&server, "/chat/completions", &chat_body("x")),
    )
    .await;
    let (frames, err) = read_frames(resp).await;
    assert!(err.is_some());
    assert!(serde_json::from_str::<Value>(&concat(&frames)).is_err());
}

#[tokio::test]
async fn cut_without_done() {
    let server = MockServer::start().await;
    server.enqueue(Fault::cut_without_done(3));
    let resp = send(
        &client(),
        post_json(
            &server,
            "/chat/completions",
            &stream_body("one two three four"),
        ),
    )
    .await;
    let (frames, err) = read_frames(resp).await;
    assert!(err.is_none(), "the body must end cleanly");
    let body = concat(&frames);
    let data = sse_data(&body);
    assert_eq!(data.len(), 3);
    assert!(data.iter().all(|d| d != "[DONE]"));
    // What was sent is valid.
    assert_eq!(sse_chunks(&body).len(), 3);
}

#[tokio::test]
async fn empty_200() {
    let server = MockServer::start().await;
    server.enqueue(Fault::empty_200());
    let resp = send(
        &client(),
        post_json(&server, "/chat/completions", &chat_body("x")),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
    assert!(body_bytes(resp).await.is_empty());
}

#[tokio::test]
async fn slow_drip_spaces_events() {
    let interval = 20 * MS;
    let server = MockServer::start().await;
    server.enqueue(Fault::slow_drip(interval));
    let start = Instant::now();
    let resp = send(
        &client(),
        post_json(&server, "/chat/completions", &stream_body("a b c")),
    )
    .await;
    let (frames, err) = read_frames(resp).await;
    assert!(err.is_none());
    let body = concat(&frames);
    let events = sse_data(&body).len();
    // role, "Echo:", " a", " b", " c", finish, usage, [DONE]
    assert_eq!(events, 8);
    let last = frames.last().unwrap().0;
    let min = interval * u32::try_from(events - 1).unwrap();
    assert!(last - start >= min, "{:?} < {min:?}", last - start);
    assert!(frames.len() >= 2, "the events must arrive separately");

    // Non-streaming: the JSON arrives in several pieces.
    server.enqueue(Fault::slow_drip(5 * MS));
    let resp = send(
        &client(),
        post_json(&server, "/chat/completions", &chat_body("drip")),
    )
    .await;
    let (frames, _) = read_frames(resp).await;
    assert!(frames.len() >= 2);
    let v: Value = serde_json::from_str(&concat(&frames)).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "Echo: drip");
}

#[tokio::test]
async fn stream_chunk_delay_spaces_events() {
    let server = MockServer::builder()
        .stream_chunk_delay(10 * MS)
        .start()
        .await;
    let start = Instant::now();
    let resp = send(
        &client(),
        post_json(&server, "/chat/completions", &stream_body("x")),
    )
    .await;
    let (frames, _) = read_frames(resp).await;
    let events = sse_data(&concat(&frames)).len();
    let min = 10 * MS * u32::try_from(events - 1).unwrap();
    assert!(frames.last().unwrap().0 - start >= min);
}

#[tokio::test]
async fn malformed_json() {
    let server = MockServer::start().await;
    server.enqueue(Fault::malformed_json());
    let resp = send(
        &client(),
        post_json(&server, "/chat/completions", &chat_body("x")),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
    let body = body_bytes(resp).await;
    assert!(!body.is_empty());
    assert!(serde_json::from_slice::<Value>(&body).is_err());

    server.enqueue(Fault::malformed_json());
    let resp = send(
        &client(),
        post_json(&server, "/chat/completions", &stream_body("x")),
    )
    .await;
    let body = String::from_utf8(body_bytes(resp).await.to_vec()).unwrap();
    let data = sse_data(&body);
    let invalid = data
        .iter()
        .filter(|d| *d != "[DONE]" && serde_json::from_str::<Value>(d).is_err())
        .count();
    assert_eq!(invalid, 1, "{body}");
    assert_eq!(data.last().unwrap(), "[DONE]");
}

#[tokio::test]
async fn in_band_error() {
    let server = MockServer::start().await;
    server.enqueue(Fault::in_band_error());
    let resp = send(
        &client(),
        post_json(&server, "/chat/completions", &chat_body("x")),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let v = body_json(resp).await;
    assert!(v["error"]["message"].is_string());
    assert!(v.get("choices").is_none());

    server.enqueue(Fault::in_band_error());
    let resp = send(
        &client(),
        post_json(&server, "/chat/completions", &stream_body("a b c")),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body = String::from_utf8(body_bytes(resp).await.to_vec()).unwrap();
    let chunks = sse_chunks(&body);
    assert!(chunks.len() >= 2);
    assert!(chunks.last().unwrap()["error"].is_object());
    assert!(
        chunks[..chunks.len() - 1]
            .iter()
            .all(|c| c.get("error").is_none())
    );
    assert!(!body.contains("[DONE]"));
}

#[tokio::test]
async fn finish_reason() {
    let server = MockServer::start().await;
    server.enqueue(Fault::finish_reason("insufficient_system_resource"));
    let resp = send(
        &client(),
        post_json(&server, "/chat/completions", &chat_body("x")),
    )
    .await;
    let v = body_json(resp).await;
    assert_eq!(
        v["choices"][0]["finish_reason"],
        "insufficient_system_resource"
    );
    assert_eq!(v["choices"][0]["message"]["content"], "Echo: x");

    server.enqueue(Fault::finish_reason("content_filter"));
    let resp = send(
        &client(),
        post_json(&server, "/chat/completions", &stream_body("x")),
    )
    .await;
    let body = String::from_utf8(body_bytes(resp).await.to_vec()).unwrap();
    let reasons: Vec<Value> = sse_chunks(&body)
        .iter()
        .filter_map(|c| c["choices"].get(0).map(|ch| ch["finish_reason"].clone()))
        .filter(|r| !r.is_null())
        .collect();
    assert_eq!(reasons, vec![Value::from("content_filter")]);
}

#[tokio::test]
async fn fifo_and_per_request_rules() {
    let server = MockServer::start().await;
    let client = client();
    server.enqueue(Fault::status(500));
    server.enqueue(Fault::status(502));
    server.enqueue_when(Match::path("/models"), Fault::status(503));

    // The token endpoint never takes FIFO faults.
    let token = send(
        &client,
        request(
            &server,
            Method::POST,
            "/oauth2/token",
            "grant_type=client_credentials&client_id=test-client&client_secret=test-secret",
        ),
    )
    .await;
    assert_eq!(token.status(), StatusCode::OK);

    // The matching rule is checked first, and consumed.
    let statuses = [
        ("/models", 503),
        ("/models", 500),
        ("/user/balance", 502),
        ("/models", 200),
    ];
    for (path, expected) in statuses {
        let resp = send(&client, get(&server, path)).await;
        assert_eq!(resp.status().as_u16(), expected, "{path}");
        body_bytes(resp).await;
    }
}

#[tokio::test]
async fn always_rules_until_cleared() {
    let server = MockServer::start().await;
    let client = client();
    server.always(Match::chat(), Fault::status(503).header("retry-after", "1"));

    for path in ["/chat/completions", "/v1/chat/completions"] {
        let resp = send(&client, post_json(&server, path, &chat_body("x"))).await;
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
    }
    // Other endpoints are not affected.
    assert_eq!(
        send(&client, get(&server, "/models")).await.status(),
        StatusCode::OK
    );
    // A one-shot rule takes precedence once.
    server.enqueue_when(Match::chat(), Fault::ok());
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..2 {
            let resp = send(
                &client,
                post_json(&server, "/chat/completions", &chat_body("x")),
            )
            .await;
            v.push(resp.status().as_u16());
        }
        v
    };
    assert_eq!(statuses, [200, 503]);
    server.clear_faults();
    let resp = send(
        &client,
        post_json(&server, "/chat/completions", &chat_body("x")),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn faults_on_the_token_endpoint() {
    let server = MockServer::start().await;
    let client = client();
    server.enqueue_when(Match::token(), Fault::status(500));
    server.enqueue_when(Match::token(), Fault::ok().delay(20 * MS));
    let form = "grant_type=client_credentials&client_id=test-client&client_secret=test-secret";

    let resp = send(
        &client,
        request(&server, Method::POST, "/oauth2/token", form),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body_json(resp).await["error"], "server_error");

    let start = Instant::now();
    let resp = send(
        &client,
        request(&server, Method::POST, "/oauth2/token", form),
    )
    .await;
    assert!(start.elapsed() >= 20 * MS);
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(body_json(resp).await["access_token"].is_string());

    assert_eq!(server.token_fetches(), 2);
    assert_eq!(server.tokens_issued(), 1);
}

#[tokio::test]
async fn faults_over_http2() {
    let server = MockServer::start().await;
    let client = h2_client();
    let resp = send(
        &client,
        post_json(&server, "/chat/completions", &chat_body("h2")),
    )
    .await;
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(
        body_json(resp).await["choices"][0]["message"]["content"],
        "Echo: h2"
    );

    server.enqueue(Fault::reset_mid_stream(1));
    let resp = send(
        &client,
        post_json(&server, "/chat/completions", &stream_body("a b")),
    )
    .await;
    let (frames, err) = read_frames(resp).await;
    assert!(err.is_some());
    assert_eq!(sse_data(&concat(&frames)).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn works_with_paused_time() {
    let server = MockServer::start().await;
    let client = client();
    server.enqueue(Fault::ok().delay(Duration::from_secs(30)));
    server.enqueue(Fault::blank_lines(3, Duration::from_secs(10)));
    server.enqueue(Fault::slow_drip(Duration::from_secs(1)));

    let start = Instant::now();
    let resp = send(
        &client,
        post_json(&server, "/chat/completions", &chat_body("x")),
    )
    .await;
    assert!(start.elapsed() >= Duration::from_secs(30));
    body_json(resp).await;

    let start = Instant::now();
    let resp = send(
        &client,
        post_json(&server, "/chat/completions", &chat_body("x")),
    )
    .await;
    let body = body_bytes(resp).await;
    assert!(start.elapsed() >= Duration::from_secs(30));
    assert!(body.starts_with(b"\n\n\n{"));

    let start = Instant::now();
    let resp = send(
        &client,
        post_json(&server, "/chat/completions", &stream_body("a b")),
    )
    .await;
    let (frames, err) = read_frames(resp).await;
    assert!(err.is_none());
    let events = sse_data(&concat(&frames)).len();
    let spacing = Duration::from_secs(u64::try_from(events - 1).unwrap());
    assert!(frames.last().unwrap().0 - start >= spacing);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_mid_stream_on_a_multi_thread_runtime() {
    let server = MockServer::start().await;
    for n in [0, 1, 3] {
        server.enqueue(Fault::reset_mid_stream(n));
        let resp = send(
            &client(),
            post_json(&server, "/chat/completions", &stream_body("one two three")),
        )
        .await;
        let (frames, err) = read_frames(resp).await;
        assert!(err.is_some());
        assert_eq!(sse_data(&concat(&frames)).len(), n);
    }
}

#[tokio::test]
async fn fault_headers_replace_then_append() {
    let server = MockServer::start().await;
    server.enqueue(
        Fault::ok()
            .header("content-type", "text/plain")
            .header("x-extra", "1")
            .header("x-extra", "2"),
    );
    let resp = send(&client(), get(&server, "/models")).await;
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/plain");
    let extra: Vec<_> = resp.headers().get_all("x-extra").iter().collect();
    assert_eq!(extra, ["1", "2"]);
}

#[tokio::test]
async fn stream_matcher() {
    let server = MockServer::start().await;
    let client = client();
    server.always(Match::chat().and(Match::stream()), Fault::status(503));
    let resp = send(
        &client,
        post_json(&server, "/chat/completions", &chat_body("x")),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = send(
        &client,
        post_json(&server, "/chat/completions", &stream_body("x")),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
}
