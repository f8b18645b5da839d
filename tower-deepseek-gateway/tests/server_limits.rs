//! The server's own bounds, with real slow peers over loopback: the header-read timeout
//! (slowloris), the body-read timeout, idle keep-alive connections, and the connection cap
//! (with `/healthz` still answering).

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower_deepseek_testkit::MockServer;

fn short_header_read() -> tower_deepseek_gateway::GatewayConfig {
    let mut cfg = config_with_keys("");
    cfg.server.header_read_timeout_ms = 500;
    cfg
}

/// Reads until the peer closes the connection (or fails it); returns what was read.
async fn read_to_close(s: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the gateway closes the connection in time");
    out
}

#[tokio::test]
async fn a_slowloris_client_is_cut_at_the_header_read_timeout() {
    let upstream = MockServer::builder().api_key(UPSTREAM_KEY).start().await;
    let gw = start(&upstream.url(), short_header_read(), None).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let (mut rd, mut wr) = s.split();
    let head =
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n";
    let started = Instant::now();
    // One byte every 100 ms: the head would take seconds to arrive.
    let drip = async {
        for b in head {
            if wr.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let closed = async {
        let mut buf = [0u8; 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    };
    tokio::select! {
        () = closed => {}
        () = drip => panic!("the whole head was dripped without the gateway cutting it"),
    }
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(400), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_eq!(upstream.chat_count(), 0);
    gw.stop().await.unwrap();
    upstream.shutdown().await;
}

#[tokio::test]
async fn a_socket_that_never_sends_a_byte_is_closed() {
    let upstream = MockServer::builder().api_key(UPSTREAM_KEY).start().await;
    let gw = start(&upstream.url(), short_header_read(), None).await;
    let started = Instant::now();
    let mut silent = TcpStream::connect(gw.addr).await.unwrap();
    // Half an HTTP/2 preface, then nothing: the protocol is never chosen.
    let mut half = TcpStream::connect(gw.addr).await.unwrap();
    half.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    assert!(
        read_to_close(&mut silent, Duration::from_secs(3))
            .await
            .is_empty()
    );
    assert!(
        read_to_close(&mut half, Duration::from_secs(3))
            .await
            .is_empty()
    );
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(400), "{took:?}");
    gw.stop().await.unwrap();
    upstream.shutdown().await;
}

#[tokio::test]
async fn idle_http2_connections_are_closed_and_busy_ones_are_not() {
    let upstream = MockServer::builder()
        .api_key(UPSTREAM_KEY)
        .stream_chunk_delay(Duration::from_millis(150))
        .start()
        .await;
    let mut cfg = config_with_keys("");
    cfg.server.idle_timeout_ms = 400;
    let gw = start(&upstream.url(), cfg, None).await;

    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    let started = Instant::now();
    let closed = tokio::spawn(async move {
        let _ = conn.await;
        Instant::now()
    });

    // A stream longer than the idle timeout (events 150 ms apart) is not cut.
    let body = json!({"model": "deepseek-chat", "stream": true,
                      "messages": [{"role": "user", "content": "one two three four five six"}]});
    let req = http::Request::post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {CLIENT_KEY}"))
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_string(),
        )))
        .unwrap();
    let res = send.send_request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let text = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert!(text.ends_with(b"data: [DONE]\n\n"));
    let busy = started.elapsed();
    assert!(
        busy > Duration::from_millis(400),
        "the stream outlived the idle timeout: {busy:?}"
    );

    // Then, idle: closed after about the idle timeout.
    let ended = Instant::now();
    let at = tokio::time::timeout(Duration::from_secs(5), closed)
        .await
        .expect("the idle connection is closed")
        .unwrap();
    let idle = at - ended;
    assert!(idle < Duration::from_secs(3), "{idle:?}");
    gw.stop().await.unwrap();
    upstream.shutdown().await;
}

#[tokio::test]
async fn a_client_trickling_its_body_gets_a_408() {
    let upstream = MockServer::builder().api_key(UPSTREAM_KEY).start().await;
    let mut cfg = config_with_keys("");
    cfg.server.body_read_timeout_ms = 500;
    let gw = start(&upstream.url(), cfg, None).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let body = json!({"model": "deepseek-chat", "messages": [{"role": "user", "content": "slow"}]})
        .to_string();
    s.write_all(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {CLIENT_KEY}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let started = Instant::now();
    let (mut rd, mut wr) = s.split();
    // One byte every 100 ms: the body would take seconds to arrive.
    let drip = async {
        for b in body.as_bytes() {
            if wr.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        std::future::pending::<()>().await;
    };
    let answer = async {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&out).contains("request_timeout") {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8(out).unwrap()
    };
    let text = tokio::select! {
        t = answer => t,
        () = drip => unreachable!(),
    };
    let took = started.elapsed();
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(upstream.chat_count(), 0);
    gw.stop().await.unwrap();
    upstream.shutdown().await;
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    let upstream = MockServer::builder().api_key(UPSTREAM_KEY).start().await;
    let gw = start(&upstream.url(), short_header_read(), None).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    // The answer, then the close of the idle connection.
    let got = read_to_close(&mut s, Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains(r#"{"status":"ok"}"#), "{text}");
    assert!(started.elapsed() < Duration::from_secs(3));
    gw.stop().await.unwrap();
    upstream.shutdown().await;
}

#[tokio::test]
async fn beyond_the_connection_cap_healthz_answers_and_the_rest_is_refused() {
    let upstream = MockServer::builder().api_key(UPSTREAM_KEY).start().await;
    let gw = start(
        &upstream.url(),
        {
            let mut cfg = config_with_keys("");
            cfg.server.max_connections = 2;
            cfg
        },
        None,
    )
    .await;
    // Two kept-alive connections hold the two places (each answered once, so surely accepted).
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        held.push(s);
    }

    // A third connection: the health check still answers...
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let text = String::from_utf8(read_to_close(&mut s, Duration::from_secs(8)).await).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");

    // ... and chat is refused cleanly, in the OpenAI shape, with the connection closed.
    let body = json!({"model": "deepseek-chat", "messages": [{"role": "user", "content": "x"}]})
        .to_string();
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {CLIENT_KEY}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let text = String::from_utf8(read_to_close(&mut s, Duration::from_secs(8)).await).unwrap();
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("retry-after: 1"),
        "{text}"
    );
    assert!(text.contains("too_many_connections"), "{text}");
    assert_eq!(upstream.chat_count(), 0);

    // A place freed: chat is served again.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let res = send(
            &client(),
            chat_request(
                &gw.url("/v1/chat/completions"),
                Some(CLIENT_KEY),
                json!({"model": "deepseek-chat", "messages": [{"role": "user", "content": "y"}]}),
            ),
        )
        .await;
        let status = res.status();
        body_string(res).await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 503);
        assert!(
            Instant::now() < deadline,
            "the freed place was never reused"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(held);
    gw.stop().await.unwrap();
    upstream.shutdown().await;
}
