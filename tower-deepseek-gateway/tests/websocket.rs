//! `GET /v1/chat/completions/ws` over loopback with a real WebSocket client (tokio-tungstenite),
//! against the gateway started in-process in front of the testkit's mock upstream.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};
use tower_deepseek_gateway::GatewayConfig;
use tower_deepseek_testkit::{Fault, MockServer};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const EMAIL: &str = "alice.liu@example.com";
const PHONE: &str = "13800138000";

fn ws_url(gw: &Running) -> String {
    format!("ws://{}/v1/chat/completions/ws", gw.addr)
}

/// A chat request tagged `id`.
fn ask(id: impl Into<Value>, content: &str, stream: bool) -> String {
    let mut body = json!({"id": id.into(), "model": "deepseek-chat",
        "messages": [{"role": "user", "content": content}]});
    if stream {
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
    }
    body.to_string()
}

async fn connect_with(gw: &Running, headers: &[(&str, &str)]) -> Result<Ws, WsError> {
    let mut req = ws_url(gw).into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    tokio::time::timeout(Duration::from_secs(10), connect_async(req))
        .await
        .expect("the handshake ends within 10 s")
        .map(|(ws, _)| ws)
}

async fn connect(gw: &Running) -> Ws {
    connect_with(gw, &[("authorization", &format!("Bearer {CLIENT_KEY}"))])
        .await
        .unwrap()
}

async fn send(ws: &mut Ws, text: String) {
    ws.send(Message::text(text)).await.unwrap();
}

/// The next frame (pings and pongs included), within 10 s.
async fn next_frame(ws: &mut Ws) -> Option<Message> {
    tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("a frame within 10 s")
        .map(|r| r.expect("no transport error"))
}

/// The next text message, as JSON (pings skipped); panics on a close.
async fn next_json(ws: &mut Ws) -> Value {
    loop {
        match next_frame(ws).await {
            Some(Message::Text(t)) => return serde_json::from_str(t.as_str()).unwrap(),
            Some(Message::Ping(_) | Message::Pong(_)) => continue,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

/// The close frame that ends the connection (texts and pings before it are skipped); the
/// closing handshake is then completed (the client's close frame goes back).
async fn close_frame(ws: &mut Ws) -> (u16, String) {
    let frame = loop {
        match next_frame(ws).await {
            Some(Message::Close(Some(f))) => break (u16::from(f.code), f.reason.to_string()),
            Some(Message::Close(None)) | None => panic!("closed without a close frame"),
            Some(_) => continue,
        }
    };
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {}
    frame
}

/// Closes from the client's side: the gateway answers with its close frame, then the stream
/// ends cleanly (no reset without a closing handshake).
async fn bye(mut ws: Ws) {
    ws.close(None).await.unwrap();
    let mut answered = false;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("the gateway answers the close")
        {
            Some(Ok(Message::Close(_))) => answered = true,
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("closing handshake failed: {e}"),
            None => break,
        }
    }
    assert!(answered, "the gateway sent its close frame back");
}

fn is_final(m: &Value) -> bool {
    m.get("done") == Some(&json!(true)) || m.get("error").is_some()
}

/// Reads until `n` requests have their final message: every message, in order.
async fn read_finals(ws: &mut Ws, n: usize) -> Vec<Value> {
    let mut all = Vec::new();
    let mut finals = 0;
    while finals < n {
        let m = next_json(ws).await;
        if is_final(&m) {
            finals += 1;
        }
        all.push(m);
    }
    all
}

/// The streamed text of the chunks tagged `id`.
fn content_of(msgs: &[Value], id: &Value) -> String {
    msgs.iter()
        .filter(|m| &m["id"] == id)
        .filter_map(|m| m["chunk"]["choices"][0]["delta"]["content"].as_str())
        .collect()
}

fn config(websocket: &str) -> GatewayConfig {
    config_with_keys(&format!("[websocket]\n{websocket}\n"))
}

fn temp_log() -> (std::path::PathBuf, std::path::PathBuf) {
    use std::hash::{BuildHasher, RandomState};
    let dir = std::env::temp_dir().join(format!(
        "deepseek-gateway-ws-{}-{}",
        std::process::id(),
        RandomState::new().hash_one(Instant::now())
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("audit.jsonl");
    (dir, log)
}

#[tokio::test]
async fn a_streamed_answer_comes_as_chunk_messages_then_done() {
    let upstream = MockServer::builder().api_key(UPSTREAM_KEY).start().await;
    let gw = start(&upstream.url(), config(""), None).await;
    let mut ws = connect(&gw).await;

    send(&mut ws, ask("a", "stream me please", true)).await;
    let msgs = read_finals(&mut ws, 1).await;
    let (last, chunks) = msgs.split_last().unwrap();
    assert!(chunks.len() > 2, "{msgs:?}");
    for m in chunks {
        assert_eq!(m["id"], "a");
        // The chunk as the SSE stream carries it, its own id included.
        assert_eq!(m["chunk"]["object"], "chat.completion.chunk", "{m}");
        assert!(
            m["chunk"]["id"].is_string() && m["chunk"]["id"] != "a",
            "{m}"
        );
    }
    assert_eq!(content_of(&msgs, &json!("a")), "Echo: stream me please");
    // include_usage: the last chunk carries the usage.
    assert!(chunks.last().unwrap()["chunk"]["usage"]["total_tokens"].is_u64());
    assert_eq!(last["id"], "a");
    assert_eq!(last["done"], true);
    assert!(last["request_id"].is_string());

    // The same objects as the SSE stream of the HTTP route carries for the same request (but
    // for the completion's own id and time, and the usage: the mock's prompt cache hits the
    // second time).
    let mut body: Value = serde_json::from_str(&ask("a", "stream me please", true)).unwrap();
    body.as_object_mut().unwrap().remove("id");
    let res = common::send(
        &client(),
        chat_request(&gw.url("/v1/chat/completions"), Some(CLIENT_KEY), body),
    )
    .await;
    let sse = body_string(res).await;
    let strip = |mut v: Value| {
        let o = v.as_object_mut().unwrap();
        o.remove("id");
        o.remove("created");
        if let Some(u) = o.get_mut("usage") {
            *u = json!("present");
        }
        v
    };
    let over_sse: Vec<Value> = sse
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| strip(serde_json::from_str(d).unwrap()))
        .collect();
    let over_ws: Vec<Value> = chunks.iter().map(|m| strip(m["chunk"].clone())).collect();
    assert_eq!(over_ws, over_sse);

    // The tag never reaches the upstream.
    let sent = upstream.requests_to("/chat/completions")[0].json().unwrap();
    assert!(sent.get("id").is_none(), "{sent}");
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["messages"][0]["content"], "stream me please");

    // Without `stream`: the completion as one message, then done; a number tags it.
    send(&mut ws, ask(7, "whole please", false)).await;
    let msgs = read_finals(&mut ws, 1).await;
    assert_eq!(msgs.len(), 2, "{msgs:?}");
    assert_eq!(msgs[0]["id"], 7);
    assert_eq!(msgs[0]["completion"]["object"], "chat.completion");
    assert_eq!(
        msgs[0]["completion"]["choices"][0]["message"]["content"],
        "Echo: whole please"
    );
    assert_eq!(
        msgs[1],
        json!({"id": 7, "done": true, "request_id": msgs[1]["request_id"]})
    );

    bye(ws).await;
    gw.stop().await.unwrap();
    upstream.shutdown().await;
}

#[tokio::test]
async fn two_requests_run_at_once_on_one_connection_each_tagged_and_whole() {
    let upstream = MockServer::builder()
        .api_key(UPSTREAM_KEY)
        .stream_chunk_delay(Duration::from_millis(25))
        .start()
        .await;
    let gw = start(&upstream.url(), config(""), None).await;
    let mut ws = connect(&gw).await;

    // x takes a dozen chunk delays longer than y needs to start.
    send(
        &mut ws,
        ask("x", "one two three four five six a b c d e f g h i j", true),
    )
    .await;
    send(
        &mut ws,
        ask("y", "seven eight nine ten eleven twelve", true),
    )
    .await;
    let msgs = read_finals(&mut ws, 2).await;
    assert_eq!(
        content_of(&msgs, &json!("x")),
        "Echo: one two three four five six a b c d e f g h i j"
    );
    assert_eq!(
        content_of(&msgs, &json!("y")),
        "Echo: seven eight nine ten eleven twelve"
    );
    for id in ["x", "y"] {
        let done: Vec<_> = msgs
            .iter()
            .filter(|m| m["id"] == id && is_final(m))
            .collect();
        assert_eq!(done.len(), 1);
        assert_eq!(done[0]["done"], true);
        // Nothing of a request after its final message.
        let last = msgs.iter().rposition(|m| m["id"] == id).unwrap();
        assert!(is_final(&msgs[last]));
    }
    // At once, not one after the other: the second answer began before the first ended.
    let first_y = msgs.iter().position(|m| m["id"] == "y").unwrap();
    let done_x = msgs
        .iter()
        .position(|m| m["id"] == "x" && is_final(m))
        .unwrap();
    assert!(first_y < done_x, "{msgs:?}");
    assert!(msgs.iter().all(|m| m["id"] == "x" || m["id"] == "y"));

    bye(ws).await;
    gw.stop().await.unwrap();
    upstream.shutdown().await;
}

#[tokio::test]
async fn pii_is_masked_upstream_restored_in_the_messages_and_each_request_audited() {
    let upstream = MockServer::builder().api_key(UPSTREAM_KEY).start().await;
    let (dir, log) = temp_log();
    // Behind a trusted proxy: the client IP of every request on the connection is the one the
    // upgrade request was forwarded for.
    let text = format!(
        "[server]\ntrusted_proxies = [\"127.0.0.1/32\"]\n[[keys]]\nsha256 = \"{}\"\ntenant = \"acme\"\n",
        sha256_hex(CLIENT_KEY)
    );
    let gw = start(
        &upstream.url(),
        GatewayConfig::from_toml(&text).unwrap(),
        Some(&log),
    )
    .await;
    let mut ws = connect_with(
        &gw,
        &[
            ("authorization", &format!("Bearer {CLIENT_KEY}")),
            ("x-forwarded-for", "203.0.113.7"),
        ],
    )
    .await
    .unwrap();

    let prompt = format!("mail {EMAIL} or call {PHONE}");
    send(&mut ws, ask("s", &prompt, true)).await;
    send(&mut ws, ask("w", &format!("whole: {prompt}"), false)).await;
    let msgs = read_finals(&mut ws, 2).await;
    assert_eq!(content_of(&msgs, &json!("s")), format!("Echo: {prompt}"));
    let whole = msgs
        .iter()
        .find(|m| m["id"] == "w" && m.get("completion").is_some());
    assert_eq!(
        whole.unwrap()["completion"]["choices"][0]["message"]["content"],
        format!("Echo: whole: {prompt}")
    );
    assert!(
        msgs.iter().filter(|m| m["done"] == true).count() == 2,
        "{msgs:?}"
    );

    let seen = upstream.requests_to("/chat/completions");
    assert_eq!(seen.len(), 2);
    for r in &seen {
        let body = String::from_utf8(r.body.to_vec()).unwrap();
        assert!(!body.contains(EMAIL) && !body.contains(PHONE), "{body}");
        assert!(
            body.contains("<EMAIL_1>") && body.contains("<CN_MOBILE_1>"),
            "{body}"
        );
        // The client's key never goes upstream; the upstream's does.
        assert_eq!(r.bearer(), Some(UPSTREAM_KEY));
    }
    bye(ws).await;
    gw.stop().await.unwrap();

    let audit = std::fs::read_to_string(&log).unwrap();
    let records: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 2, "{audit}");
    let ids: Vec<_> = msgs
        .iter()
        .filter(|m| m["done"] == true)
        .map(|m| m["request_id"].clone())
        .collect();
    for r in &records {
        assert_eq!(r["endpoint"], "/chat/completions");
        assert_eq!(r["status"], 200);
        assert_eq!(r["outcome"], "ok");
        assert!(r["pii"]["EMAIL"].as_u64() >= Some(1), "{r}");
        assert_eq!(r["client_ip"], "203.0.113.7");
        assert!(r["tenant"].is_string());
        // The record's request id is the one the done message gave.
        assert!(ids.contains(&r["request_id"]), "{r} {ids:?}");
    }
    for secret in [CLIENT_KEY, UPSTREAM_KEY, EMAIL, PHONE, "acme"] {
        assert!(!audit.contains(secret), "{secret} in {audit}");
    }
    let _ = std::fs::remove_dir_all(dir);
    upstream.shutdown().await;
}

#[tokio::test]
async fn a_refused_key_is_a_401_before_any_upgrade_in_both_forms() {
    let upstream = MockServer::builder().api_key(UPSTREAM_KEY).start().await;
    let gw = start(&upstream.url(), config(""), None).await;

    let refusals: [&[(&str, &str)]; 5] = [
        &[],
        &[("authorization", "Bearer sk-not-a-client")],
        &[("x-api-key", "sk-not-a-client")],
        &[(
            "sec-websocket-protocol",
            "deepseek-gateway, bearer.sk-not-a-client",
        )],
        // The header is the credential when both come: a wrong header is not saved by a good
        // subprotocol key.
        &[
            ("authorization", "Bearer sk-not-a-client"),
            (
                "sec-websocket-protocol",
                &format!("deepseek-gateway, bearer.{CLIENT_KEY}"),
            ),
        ],
    ];
    for headers in refusals {
        match connect_with(&gw, headers).await {
            Err(WsError::Http(res)) => {
                assert_eq!(res.status(), 401, "{headers:?}");
                assert!(res.headers().get("sec-websocket-accept").is_none());
                let v: Value = serde_json::from_slice(res.body().as_deref().unwrap()).unwrap();
                assert_eq!(v["error"]["type"], "authentication_error");
                assert_eq!(v["error"]["code"], "invalid_api_key");
                let text = v.to_string();
                assert!(!text.contains("sk-not-a-client") && !text.contains(CLIENT_KEY));
            }
            Err(e) => panic!("{headers:?}: {e}"),
            Ok(_) => panic!("{headers:?}: upgraded"),
        }
    }

    // The key as a subprotocol (browsers): upgraded, and only `deepseek-gateway` is echoed.
    let mut req = ws_url(&gw).into_client_request().unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        format!("deepseek-gateway, bearer.{CLIENT_KEY}")
            .parse()
            .unwrap(),
    );
    let (mut ws, res) = connect_async(req).await.unwrap();
    assert_eq!(res.status(), 101);
    assert_eq!(res.headers()["sec-websocket-protocol"], "deepseek-gateway");
    send(&mut ws, ask(1, "via subprotocol", true)).await;
    let msgs = read_finals(&mut ws, 1).await;
    assert_eq!(content_of(&msgs, &json!(1)), "Echo: via subprotocol");
    bye(ws).await;

    // A key as a subprotocol without `deepseek-gateway` beside it: a 400 that says so.
    match connect_with(
        &gw,
        &[("sec-websocket-protocol", &format!("bearer.{CLIENT_KEY}"))],
    )
    .await
    {
        Err(WsError::Http(res)) => {
            assert_eq!(res.status(), 400);
            let v: Value = serde_json::from_slice(res.body().as_deref().unwrap()).unwrap();
            assert_eq!(v["error"]["code"], "invalid_subprotocol");
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    // Only the one accepted request reached the upstream.
    assert_eq!(upstream.chat_count(), 1);
    let metrics = body_string(get(&client(), &gw.url("/metrics"), None).await).await;
    for line in [
        "deepseek_gateway_websocket_upgrades_total{outcome=\"unauthorized\"}",
        "deepseek_gateway_websocket_upgrades_total{outcome=\"invalid\"}",
        "deepseek_gateway_websocket_upgrades_total{outcome=\"accepted\"}",
        "deepseek_gateway_websocket_closed_total{code=\"peer\"}",
        "deepseek_gateway_websocket_connections",
    ] {
        assert!(metrics.contains(line), "{line} missing");
    }
    gw.stop().await.unwrap();
    upstream.shutdown().await;
}

#[tokio::test]
async fn an_idle_connection_closes_with_1000_but_never_during_an_answer() {
    let upstream = MockServer::builder()
        .api_key(UPSTREAM_KEY)
        .stream_chunk_delay(Duration::from_millis(40))
        .start()
        .await;
    let gw = start(&upstream.url(), config("idle_timeout_ms = 300"), None).await;
    let mut ws = connect(&gw).await;
    // The answer takes longer than the idle timeout (a dozen chunks, 40 ms apart).
    send(&mut ws, ask("slow", "a b c d e f g h i j k l", true)).await;
    let t = Instant::now();
    let msgs = read_finals(&mut ws, 1).await;
    assert!(t.elapsed() > Duration::from_millis(300));
    assert_eq!(msgs.last().unwrap()["done"], true);
    assert_eq!(
        content_of(&msgs, &json!("slow")),
        "Echo: a b c d e f g h i j k l"
    );
    // Then, with nothing in flight and nothing sent: closed, 1000, with the reason.
    let (code, reason) = close_frame(&mut ws).await;
    assert_eq!(code, 1000);
    assert!(reason.contains("idle"), "{reason}");
    gw.stop().await.unwrap();
    upstream.shutdown().await;
}

#[tokio::test]
async fn binary_messages_close_with_1003_oversized_ones_with_1009_and_bad_utf8_with_1007() {
    let upstream = MockServer::builder().api_key(UPSTREAM_KEY).start().await;
    let gw = start(&upstream.url(), config("max_message_bytes = 4096"), None).await;

    let mut ws = connect(&gw).await;
    ws.send(Message::binary(ask("b", "hi", false).into_bytes()))
        .await
        .unwrap();
    assert_eq!(close_frame(&mut ws).await.0, 1003);

    let mut ws = connect(&gw).await;
    send(&mut ws, ask("big", &"x".repeat(5000), false)).await;
    let (code, reason) = close_frame(&mut ws).await;
    assert_eq!(code, 1009);
    assert!(reason.contains("max_message_bytes"), "{reason}");

    // A text frame that is not UTF-8: 1007.
    let mut ws = connect(&gw).await;
    let frame = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    ws.send(Message::Frame(frame)).await.unwrap();
    assert_eq!(close_frame(&mut ws).await.0, 1007);

    // A message under the limit is answered.
    let mut ws = connect(&gw).await;
    send(&mut ws, ask("ok", &"x".repeat(3000), false)).await;
    assert_eq!(read_finals(&mut ws, 1).await.last().unwrap()["done"], true);
    assert_eq!(upstream.chat_count(), 1);
    bye(ws).await;
    gw.stop().await.unwrap();
    upstream.shutdown().await;
}

#[tokio::test]
async fn bad_messages_get_an_error_message_and_the_connection_stays_open() {
    let upstream = MockServer::builder()
        .api_key(UPSTREAM_KEY)
        .stream_chunk_delay(Duration::from_millis(25))
        .start()
        .await;
    let gw = start(&upstream.url(), config("max_concurrent_requests = 2"), None).await;
    let mut ws = connect(&gw).await;

    // Not JSON: untagged.
    send(&mut ws, "not json at all".to_owned()).await;
    let m = next_json(&mut ws).await;
    assert!(m.get("id").is_none(), "{m}");
    assert_eq!(m["error"]["code"], "invalid_json");
    assert_eq!(m["error"]["type"], "invalid_request_error");
    assert_eq!(m["status"], 400);
    // Malformed after its id: tagged.
    send(&mut ws, r#"{"id":"cut","messages":[{"role":"#.to_owned()).await;
    let m = next_json(&mut ws).await;
    assert_eq!(m["id"], "cut");
    assert_eq!(m["error"]["code"], "invalid_json");

    // Two in flight (the bound): a third is refused, so is a second use of a live id.
    send(&mut ws, ask("p", "a b c d e f g h", true)).await;
    send(&mut ws, ask("p", "again", true)).await;
    send(&mut ws, ask("q", "i j k l m n o p", true)).await;
    send(&mut ws, ask("r", "one too many", true)).await;
    let msgs = read_finals(&mut ws, 4).await;
    let errors: HashMap<String, &Value> = msgs
        .iter()
        .filter(|m| m.get("error").is_some())
        .map(|m| (m["error"]["code"].as_str().unwrap().to_owned(), m))
        .collect();
    assert_eq!(errors.len(), 2, "{msgs:?}");
    assert_eq!(errors["duplicate_id"]["id"], "p");
    assert_eq!(errors["too_many_concurrent_requests"]["id"], "r");
    assert_eq!(errors["too_many_concurrent_requests"]["status"], 429);
    assert_eq!(content_of(&msgs, &json!("p")), "Echo: a b c d e f g h");
    assert_eq!(content_of(&msgs, &json!("q")), "Echo: i j k l m n o p");

    // An upstream error: tagged, with the status the HTTP route would give; still open after.
    upstream.enqueue(Fault::status(402));
    send(&mut ws, ask("pay", "x", false)).await;
    let m = next_json(&mut ws).await;
    assert_eq!(m["id"], "pay");
    assert_eq!(m["status"], 402);
    assert!(m["error"]["message"].is_string());
    send(&mut ws, ask("after", "still here", false)).await;
    let msgs = read_finals(&mut ws, 1).await;
    assert_eq!(msgs.last().unwrap()["done"], true);
    bye(ws).await;
    gw.stop().await.unwrap();
    upstream.shutdown().await;
}

#[tokio::test]
async fn the_gateway_pings_and_drops_a_peer_that_never_answers() {
    let upstream = MockServer::builder().api_key(UPSTREAM_KEY).start().await;
    let gw = start(&upstream.url(), config("ping_interval_ms = 150"), None).await;

    // A client that reads answers every ping (tungstenite does): it stays connected.
    let mut ws = connect(&gw).await;
    let mut pings = 0;
    while pings < 3 {
        match next_frame(&mut ws).await {
            Some(Message::Ping(_)) => pings += 1,
            other => panic!("{other:?}"),
        }
    }
    send(&mut ws, ask("alive", "still", false)).await;
    assert_eq!(read_finals(&mut ws, 1).await.last().unwrap()["done"], true);

    // A client that reads nothing (so answers no ping) is closed with 1001 after two
    // intervals; it stays silent for four.
    let mut silent = connect(&gw).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (code, reason) = close_frame(&mut silent).await;
    assert_eq!(code, 1001);
    assert!(reason.contains("pong"), "{reason}");
    bye(ws).await;
    gw.stop().await.unwrap();
    upstream.shutdown().await;
}

#[tokio::test]
async fn shutdown_lets_the_answers_in_flight_finish_then_closes_with_1001() {
    let upstream = MockServer::builder()
        .api_key(UPSTREAM_KEY)
        .stream_chunk_delay(Duration::from_millis(40))
        .start()
        .await;
    let mut gw = start(&upstream.url(), config(""), None).await;
    let mut ws = connect(&gw).await;
    send(&mut ws, ask("long", "a b c d e f g h i j k l", true)).await;
    let first = next_json(&mut ws).await;
    assert_eq!(first["id"], "long");

    gw.trigger_shutdown();
    // A new request is refused, tagged, while the one in flight goes on.
    send(&mut ws, ask("late", "too late", true)).await;
    let msgs = read_finals(&mut ws, 2).await;
    let late = msgs.iter().find(|m| m["id"] == "late").unwrap();
    assert_eq!(late["error"]["code"], "shutting_down");
    let last = msgs.iter().rfind(|m| m["id"] == "long").unwrap();
    assert_eq!(last["done"], true);
    let mut all = vec![first];
    all.extend(msgs.iter().cloned());
    assert_eq!(
        content_of(&all, &json!("long")),
        "Echo: a b c d e f g h i j k l"
    );
    let (code, _) = close_frame(&mut ws).await;
    assert_eq!(code, 1001);
    let task = gw.task.take().unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("serve returns once the socket closed")
        .unwrap()
        .unwrap();
    assert_eq!(upstream.chat_count(), 1);
    upstream.shutdown().await;
}

#[tokio::test]
async fn past_the_drain_deadline_answers_end_with_an_error_and_1001() {
    let upstream = MockServer::builder()
        .api_key(UPSTREAM_KEY)
        .stream_chunk_delay(Duration::from_millis(300))
        .start()
        .await;
    let text = format!(
        "[server]\ndrain_timeout_ms = 200\n[[keys]]\nsha256 = \"{}\"\n",
        sha256_hex(CLIENT_KEY)
    );
    let mut gw = start(
        &upstream.url(),
        GatewayConfig::from_toml(&text).unwrap(),
        None,
    )
    .await;
    let mut ws = connect(&gw).await;
    send(&mut ws, ask("slow", "a b c d e f g h i j k l", true)).await;
    assert_eq!(next_json(&mut ws).await["id"], "slow");
    gw.trigger_shutdown();
    let t = Instant::now();
    let msgs = read_finals(&mut ws, 1).await;
    let last = msgs.last().unwrap();
    assert_eq!(last["id"], "slow");
    assert_eq!(last["error"]["code"], "shutting_down");
    assert_eq!(close_frame(&mut ws).await.0, 1001);
    let task = gw.task.take().unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the drain deadline ends serve")
        .unwrap()
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(3));
    upstream.shutdown().await;
}

#[tokio::test]
async fn the_route_is_off_when_disabled_and_bounded_in_connections() {
    let upstream = MockServer::builder().api_key(UPSTREAM_KEY).start().await;
    let gw = start(&upstream.url(), config("enabled = false"), None).await;
    match connect_with(&gw, &[("authorization", &format!("Bearer {CLIENT_KEY}"))]).await {
        Err(WsError::Http(res)) => assert_eq!(res.status(), 404),
        other => panic!("{:?}", other.map(|_| ())),
    }
    gw.stop().await.unwrap();

    let gw = start(&upstream.url(), config("max_connections = 1"), None).await;
    let mut first = connect(&gw).await;
    match connect_with(&gw, &[("authorization", &format!("Bearer {CLIENT_KEY}"))]).await {
        Err(WsError::Http(res)) => {
            assert_eq!(res.status(), 503);
            let v: Value = serde_json::from_slice(res.body().as_deref().unwrap()).unwrap();
            assert_eq!(v["error"]["code"], "too_many_connections");
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    // A plain GET (no upgrade) with a good key: a 4xx in the OpenAI shape.
    let res = get(
        &client(),
        &gw.url("/v1/chat/completions/ws"),
        Some(CLIENT_KEY),
    )
    .await;
    assert!(res.status().is_client_error(), "{}", res.status());
    let v: Value = serde_json::from_str(&body_string(res).await).unwrap();
    assert_eq!(v["error"]["code"], "websocket_upgrade_required");
    // The place frees once the first connection is closed.
    first.close(None).await.unwrap();
    while first.next().await.is_some() {}
    let mut again = None;
    for _ in 0..50 {
        if let Ok(ws) =
            connect_with(&gw, &[("authorization", &format!("Bearer {CLIENT_KEY}"))]).await
        {
            again = Some(ws);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bye(again.expect("the connection's place was given back")).await;
    gw.stop().await.unwrap();
    upstream.shutdown().await;
}

#[tokio::test]
async fn the_cache_and_the_per_key_limits_apply_as_on_the_http_route() {
    let upstream = MockServer::builder().api_key(UPSTREAM_KEY).start().await;
    let text = format!(
        "[[keys]]\nsha256 = \"{}\"\ntenant = \"tiny\"\nrequests_per_minute = 1\n\
         [[keys]]\nsha256 = \"{}\"\n[rate_limit]\nmax_wait_ms = 50\n",
        sha256_hex(CLIENT_KEY),
        sha256_hex(OTHER_KEY)
    );
    let gw = start(
        &upstream.url(),
        GatewayConfig::from_toml(&text).unwrap(),
        None,
    )
    .await;

    // The key's own limit: one request a minute, then 429 with its Retry-After.
    let mut tiny = connect(&gw).await;
    send(&mut tiny, ask(1, "limit", false)).await;
    assert_eq!(
        read_finals(&mut tiny, 1).await.last().unwrap()["done"],
        true
    );
    send(&mut tiny, ask(2, "limit again", false)).await;
    let m = next_json(&mut tiny).await;
    assert_eq!(m["id"], 2);
    assert_eq!(m["status"], 429);
    assert_eq!(m["error"]["type"], "rate_limit_error");
    assert!(m["retry_after"].as_u64() >= Some(1), "{m}");
    bye(tiny).await;

    // The cache: a deterministic request asked twice over the socket, then over HTTP by the
    // same key, reaches the upstream once.
    let other = [("authorization", format!("Bearer {OTHER_KEY}"))];
    let other: Vec<(&str, &str)> = other.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut ws = connect_with(&gw, &other).await.unwrap();
    let mut body: Value = serde_json::from_str(&ask("c1", "cache me", false)).unwrap();
    body["temperature"] = json!(0);
    send(&mut ws, body.to_string()).await;
    let mut msgs = read_finals(&mut ws, 1).await;
    body["id"] = json!("c2");
    send(&mut ws, body.to_string()).await;
    msgs.extend(read_finals(&mut ws, 1).await);
    let answers: Vec<_> = msgs
        .iter()
        .filter_map(|m| m["completion"]["choices"][0]["message"]["content"].as_str())
        .collect();
    assert_eq!(answers, ["Echo: cache me", "Echo: cache me"], "{msgs:?}");
    body.as_object_mut().unwrap().remove("id");
    let res = common::send(
        &client(),
        chat_request(&gw.url("/v1/chat/completions"), Some(OTHER_KEY), body),
    )
    .await;
    assert_eq!(res.headers()["x-cache"], "hit-l1");
    assert_eq!(
        upstream.chat_count(),
        2,
        "tiny's one call, and one for the cached answer"
    );
    bye(ws).await;
    gw.stop().await.unwrap();
    upstream.shutdown().await;
}
