//! The fault matrix: scripted upstream faults of many kinds, mixed at concurrency with
//! streaming and non-streaming calls through the real gateway over loopback.
//!
//! For every call: a complete answer with exactly the expected text (nothing duplicated or
//! spliced) or a clean error (an OpenAI-shaped JSON error, or for a stream whose head was sent,
//! a final `data: {"error":…}` event and a clean end of the body); upstream attempts within the
//! schedule; a bounded time; and one audit record whose outcome agrees with what the caller got.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use futures_util::future::join_all;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tower_deepseek_gateway::GatewayConfig;
use tower_deepseek_testkit::{Fault, Match, MockServer};

/// What a case must end with.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// The whole answer, exactly.
    Answer,
    /// A clean error.
    Error,
    /// Either, but nothing else (a fault whose outcome depends on the kind of call).
    Either,
}

struct Case {
    name: &'static str,
    fault: Fault,
    /// Every attempt gets the fault (`true`), or only the first.
    always: bool,
    expect: Expect,
}

fn case(name: &'static str, fault: Fault, always: bool, expect: Expect) -> Case {
    Case {
        name,
        fault,
        always,
        expect,
    }
}

fn cases() -> Vec<Case> {
    use Expect::*;
    let ms = Duration::from_millis;
    vec![
        case("ok", Fault::ok(), false, Answer),
        case("500 once", Fault::status(500), false, Answer),
        case("500 always", Fault::status(500), true, Error),
        case("502 once", Fault::status(502), false, Answer),
        case("502 always", Fault::status(502), true, Error),
        case(
            "503 once with Retry-After",
            Fault::status(503).header("retry-after", "1"),
            false,
            Answer,
        ),
        case("503 always", Fault::status(503), true, Error),
        case(
            "429 once with Retry-After",
            Fault::status(429).header("retry-after", "1"),
            false,
            Answer,
        ),
        case("429 always", Fault::status(429), true, Error),
        case("504 once", Fault::status(504), false, Answer),
        case("408 once", Fault::status(408), false, Answer),
        case("400", Fault::status(400), true, Error),
        case("401 upstream", Fault::status(401), true, Error),
        case("402 balance", Fault::status(402), true, Error),
        case("422", Fault::status(422), true, Error),
        case(
            "500 HTML page",
            Fault::status(500)
                .header("content-type", "text/html")
                .body("<html><body>oops</body></html>"),
            true,
            Error,
        ),
        // The request may have reached the upstream (and be billed): not retried by default.
        case(
            "reset before headers once",
            Fault::reset_before_headers(),
            false,
            Error,
        ),
        case(
            "reset before headers always",
            Fault::reset_before_headers(),
            true,
            Error,
        ),
        case(
            "reset mid-stream after 1",
            Fault::reset_mid_stream(1),
            false,
            Either,
        ),
        case(
            "reset mid-stream after 3",
            Fault::reset_mid_stream(3),
            false,
            Either,
        ),
        case(
            "cut without [DONE] after 1",
            Fault::cut_without_done(1),
            false,
            Either,
        ),
        case(
            "cut without [DONE] after 2 always",
            Fault::cut_without_done(2),
            true,
            Either,
        ),
        case("empty 200 once", Fault::empty_200(), false, Answer),
        case("empty 200 always", Fault::empty_200(), true, Error),
        case(
            "blank lines then the answer",
            Fault::blank_lines(3, ms(20)),
            false,
            Answer,
        ),
        case(
            "keep-alives then the answer",
            Fault::keepalive_comments(5, ms(20)),
            false,
            Answer,
        ),
        case(
            "keep-alive flood",
            Fault::keepalive_comments(300, ms(1)),
            false,
            Answer,
        ),
        case(
            "blank lines then nothing",
            Fault::blank_lines(3, ms(20)).then_empty(),
            false,
            Answer,
        ),
        case(
            "keep-alives then nothing, always",
            Fault::keepalive_comments(3, ms(20)).then_empty(),
            true,
            Error,
        ),
        case(
            "malformed JSON once",
            Fault::malformed_json(),
            false,
            Either,
        ),
        case("in-band error once", Fault::in_band_error(), false, Either),
        case("in-band error always", Fault::in_band_error(), true, Either),
        case("slow drip", Fault::slow_drip(ms(15)), false, Answer),
        case("hang once", Fault::hang(), false, Answer),
        case(
            "late head",
            Fault::ok().delay(Duration::from_millis(300)),
            false,
            Answer,
        ),
        case(
            "insufficient resources once",
            Fault::finish_reason("insufficient_system_resource"),
            false,
            Either,
        ),
    ]
}

const MAX_ATTEMPTS: usize = 3;
/// The bound on any one call: the retry deadline, plus one attempt cut by its timeouts (first
/// token 1.5 s, scaled ×2 per timeout retry), plus slack for a loaded 2-core machine.
const CALL_BOUND: Duration = Duration::from_secs(20);

fn config() -> GatewayConfig {
    let fixed = r#"{ backoff = { kind = "fixed", delay_ms = 50 } }"#;
    let text = format!(
        r#"
[server]
drain_timeout_ms = 5000

[[keys]]
sha256 = "{key}"
tenant = "acme"

[timeout]
headers_ms = 1500
first_token_ms = 1500
idle_ms = 1000
total_ms = 8000

[retry]
max_attempts = {MAX_ATTEMPTS}
total_deadline_ms = 6000
max_retry_after_ms = 2000

[retry.budget]
enabled = false

[retry.schedules]
rate_limited = {fixed}
bad_gateway = {fixed}
overloaded = {fixed}
timeout = {fixed}
server = {fixed}
body = {fixed}
connect = {fixed}

# The breaker stays closed here: its own tests cover opening.
[breaker]
sliding_window_size = 10000
minimum_number_of_calls = 10000

[rate_limit]
requests_per_minute = 100000
tokens_per_minute = 1000000000
"#,
        key = sha256_hex(CLIENT_KEY),
    );
    GatewayConfig::from_toml(&text).unwrap()
}

/// What the caller got.
#[derive(Debug)]
enum Got {
    /// A whole answer with this text.
    Answer(String),
    /// A clean error: the status and the error's `code`/`type`.
    Error(u16, String),
    /// Anything else: the problem.
    Broken(String),
}

fn parse_json_answer(status: u16, body: &[u8]) -> Got {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return Got::Broken(format!(
            "status {status}, body is not JSON: {:?}",
            String::from_utf8_lossy(body)
        ));
    };
    if status >= 400 {
        return match v["error"]["message"].as_str() {
            Some(_) => Got::Error(status, v["error"]["code"].to_string()),
            None => Got::Broken(format!("status {status} without an OpenAI error: {v}")),
        };
    }
    match v["choices"][0]["message"]["content"].as_str() {
        Some(text) => Got::Answer(text.to_owned()),
        None => Got::Broken(format!("status {status} without content: {v}")),
    }
}

/// A stream is whole when its events are JSON and end with `[DONE]`; it ended with a clean error
/// when its last event is an OpenAI error (a garbled event before it is then acceptable: the
/// SDKs raise on it, and the caller is told the answer is broken either way).
fn parse_stream(body: &[u8]) -> Got {
    let text = String::from_utf8_lossy(body);
    let mut content = String::new();
    let mut done = false;
    let mut garbled = None;
    let mut error = None;
    for event in text.split("\n\n") {
        for line in event.lines() {
            let Some(data) = line.strip_prefix("data:") else {
                continue; // comments (`: keep-alive`), blank lines
            };
            let data = data.trim();
            if done {
                return Got::Broken(format!("data after [DONE]: {text:?}"));
            }
            if error.is_some() {
                return Got::Broken(format!("data after an error event: {text:?}"));
            }
            if data == "[DONE]" {
                done = true;
                continue;
            }
            let Ok(v) = serde_json::from_str::<Value>(data) else {
                garbled.get_or_insert_with(|| data.to_owned());
                continue;
            };
            if v.get("error").is_some() {
                if !v["error"]["message"].is_string() {
                    return Got::Broken(format!("an error event without a message: {text:?}"));
                }
                error = Some(v["error"]["code"].to_string());
                continue;
            }
            if let Some(s) = v["choices"][0]["delta"]["content"].as_str() {
                content.push_str(s);
            }
        }
    }
    match (error, garbled, done) {
        (Some(code), _, _) => Got::Error(200, code),
        (None, Some(g), _) => Got::Broken(format!(
            "a garbled event without a final error event: {g:?}"
        )),
        (None, None, true) => Got::Answer(content),
        (None, None, false) => Got::Broken(format!(
            "a stream that ended without [DONE] or an error: {text:?}"
        )),
    }
}

struct Outcome {
    got: Got,
    request_id: Option<String>,
    elapsed: Duration,
}

async fn call(client: &TestClient, url: &str, prompt: &str, stream: bool) -> Outcome {
    let start = Instant::now();
    let mut body = json!({"model": "deepseek-chat",
                          "messages": [{"role": "user", "content": prompt}]});
    if stream {
        body["stream"] = json!(true);
    }
    let req = chat_request(url, Some(CLIENT_KEY), body);
    let res = match tokio::time::timeout(CALL_BOUND, client.request(req)).await {
        Err(_) => {
            return Outcome {
                got: Got::Broken("no head within the bound".into()),
                request_id: None,
                elapsed: start.elapsed(),
            };
        }
        Ok(Err(e)) => {
            return Outcome {
                got: Got::Broken(format!("transport error before the head: {e}")),
                request_id: None,
                elapsed: start.elapsed(),
            };
        }
        Ok(Ok(res)) => res,
    };
    let status = res.status().as_u16();
    let request_id = res
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let is_sse = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let left = CALL_BOUND.saturating_sub(start.elapsed());
    let got = match tokio::time::timeout(left, res.into_body().collect()).await {
        Err(_) => Got::Broken("the body did not end within the bound".into()),
        Ok(Err(e)) => Got::Broken(format!("the body broke off (status {status}): {e}")),
        Ok(Ok(b)) => {
            let b: Bytes = b.to_bytes();
            if is_sse && status == 200 {
                parse_stream(&b)
            } else {
                parse_json_answer(status, &b)
            }
        }
    };
    Outcome {
        got,
        request_id,
        elapsed: start.elapsed(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_ends_whole_or_with_a_clean_error_under_mixed_faults() {
    let upstream = MockServer::start().await;
    let dir = std::env::temp_dir().join(format!(
        "deepseek-gateway-fault-matrix-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("audit.jsonl");
    let gw = start(&upstream.url(), config(), Some(&log)).await;
    let client = client();
    let url = gw.url("/v1/chat/completions");

    let cases = cases();
    assert!(cases.len() >= 30, "at least 30 kinds of fault");
    // Script every fault first: each call's prompt carries its own tag.
    let mut calls = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        for stream in [false, true] {
            let tag = format!("fault-case-{i:02}-{}", if stream { "s" } else { "j" });
            let m = Match::body_contains(tag.clone());
            if c.always {
                upstream.always(m, c.fault.clone());
            } else {
                upstream.enqueue_when(m, c.fault.clone());
            }
            calls.push((i, stream, tag));
        }
    }
    // Mixed at concurrency: 12 calls in flight at a time, in an interleaved order.
    let limit = Arc::new(Semaphore::new(12));
    let outcomes = join_all(calls.iter().map(|(i, stream, tag)| {
        let limit = limit.clone();
        let client = client.clone();
        let url = url.clone();
        async move {
            let _permit = limit.acquire().await.unwrap();
            let prompt = format!("please answer {tag}");
            (
                *i,
                *stream,
                tag.clone(),
                call(&client, &url, &prompt, *stream).await,
            )
        }
    }))
    .await;

    // Wait until every call has its audit record, then stop the gateway.
    let deadline = Instant::now() + Duration::from_secs(15);
    let records: HashMap<String, Value> = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let records: HashMap<String, Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|r| Some((r["request_id"].as_str()?.to_owned(), r)))
            .collect();
        if records.len() >= calls.len() || Instant::now() > deadline {
            break records;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    gw.stop().await.unwrap();

    let mut problems = Vec::new();
    for (i, stream, tag, out) in &outcomes {
        let c = &cases[*i];
        let what = format!("[{} / {}]", c.name, if *stream { "stream" } else { "json" });
        let expected = format!("Echo: please answer {tag}");
        match (&out.got, c.expect) {
            (Got::Broken(why), _) => problems.push(format!("{what} broken: {why}")),
            (Got::Answer(text), Expect::Answer | Expect::Either) => {
                if *text != expected {
                    problems.push(format!(
                        "{what} text differs (duplicated or spliced?): {text:?}"
                    ));
                }
            }
            (Got::Error(status, code), Expect::Error | Expect::Either) => {
                // A JSON call's error is an HTTP error; a stream's may come after its 200 head.
                if (!*stream && *status < 400) || code == "null" {
                    problems.push(format!("{what} unclean error: {status} {code}"));
                }
            }
            (got, expect) => problems.push(format!("{what} expected {expect:?}, got {got:?}")),
        }
        if out.elapsed > CALL_BOUND {
            problems.push(format!("{what} took {:?}", out.elapsed));
        }
        let attempts = upstream
            .requests_to("/chat/completions")
            .iter()
            .filter(|r| String::from_utf8_lossy(&r.body).contains(tag.as_str()))
            .count();
        if attempts == 0 || attempts > MAX_ATTEMPTS {
            problems.push(format!("{what} made {attempts} upstream attempts"));
        }
        match out.request_id.as_ref().and_then(|id| records.get(id)) {
            None => problems.push(format!("{what} has no audit record")),
            Some(r) => {
                let outcome = r["outcome"].as_str().unwrap_or_default();
                let answered = matches!(out.got, Got::Answer(_));
                if answered != (outcome == "ok") {
                    problems.push(format!(
                        "{what} audit outcome {outcome:?} but the caller got {:?}",
                        out.got
                    ));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{} of {} calls went wrong:\n{}",
        problems.len(),
        outcomes.len(),
        problems.join("\n")
    );
    let _ = std::fs::remove_dir_all(dir);
}
