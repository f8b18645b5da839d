//! The whole stack (Audit → Redact → hyper client) against the testkit over loopback HTTP, with
//! every tracing line, audit record and error message captured: no PII value or secret leaks.
//! And every route of personal data (each field, each content type, bodies that cannot be
//! parsed, too deep, too large): the upstream never receives a raw value.

mod routes;

use std::io;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Service, ServiceExt};
use tower_deepseek_core::body::BufferedBody;
use tower_deepseek_core::sse::SseParser;
use tower_deepseek_redact::audit::{AuditLayer, TracingSink, WriterSink, verify_chain};
use tower_deepseek_redact::{EntityType, Mode, NonJsonPolicy, RedactLayer, Redactor};
use tower_deepseek_testkit::MockServer;
use tower_layer::Layer;

/// A `MakeWriter` into a shared buffer.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

const PII: &[&str] = &[
    "13800138000",
    "１３９００１３９０００",
    "11010519491231002X",
    "4111 1111 1111 1111",
    "zhang.san@example.com",
    "123-45-6789",
    "E12345678",
    "010-12345678",
    "192.168.10.20",
];
const SECRETS: &[&str] = &[
    "sk-4f8e2a9c1b3d5e7f9a0b2c4d6e8f0a1b",
    "AKIAIOSFODNN7EXAMPLE",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7",
];

fn user_text() -> String {
    format!(
        "我叫张三，手机{}，另一个{}，身份证{}，卡号{}，邮箱{}，SSN {}，护照{}，座机{}，服务器{}。key {} aws {} token {} pem -----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----",
        PII[0],
        PII[1],
        PII[2],
        PII[3],
        PII[4],
        PII[5],
        PII[6],
        PII[7],
        PII[8],
        SECRETS[0],
        SECRETS[1],
        SECRETS[2],
        SECRETS[3]
    )
}

fn assert_clean(what: &str, text: &str) {
    for v in PII.iter().chain(SECRETS) {
        assert!(!text.contains(v), "{what} leaks {v:?}:\n{text}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn nothing_leaks_through_the_whole_stack() {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(capture.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let server = MockServer::start().await;
    let client = Client::builder(TokioExecutor::new()).build_http::<BufferedBody>();
    let log = WriterSink::new(Vec::new());
    let audit = AuditLayer::builder()
        .hmac_key(b"audit-key-0123456789".to_vec())
        .sink(log.clone())
        .sink(TracingSink)
        .hash_chain(true)
        .build()
        .unwrap();
    let handle = audit.handle();
    let redact = RedactLayer::with_redactor(
        Redactor::builder()
            .mode(EntityType::US_SSN, Mode::Placeholder)
            .build()
            .unwrap(),
    )
    .non_json(NonJsonPolicy::Reject);
    let mut svc = audit.layer(redact.layer(client.clone()));
    let text = user_text();
    let mut errors = Vec::new();

    // 1. Non-streaming chat: the echo comes back with the values restored.
    let body = serde_json::json!({"model": "deepseek-chat", "messages": [{"role": "user", "content": text}]});
    let req = Request::post(server.uri("/chat/completions"))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {}", SECRETS[0]))
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let res = ServiceExt::<Request<Full<Bytes>>>::ready(&mut svc)
        .await
        .unwrap()
        .call(req)
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let answer = res.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    for p in PII {
        assert!(content.contains(p), "{p} restored in {content}");
    }
    // Secrets are never sent and never restored.
    for s in SECRETS {
        assert!(!content.contains(s));
    }

    // 2. Streaming with a tool call: arguments arrive in 16-byte pieces, placeholders split
    //    across events, and are restored.
    let body = serde_json::json!({"model": "deepseek-chat", "stream": true, "stream_options": {"include_usage": true},
        "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}],
        "messages": [{"role": "user", "content": text}]});
    let req = Request::post(server.uri("/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let res = ServiceExt::<Request<Full<Bytes>>>::ready(&mut svc)
        .await
        .unwrap()
        .call(req)
        .await
        .unwrap();
    let wire = res.into_body().collect().await.unwrap().to_bytes();
    let mut args = String::new();
    let mut done = false;
    SseParser::new()
        .push(&wire, |e| {
            if e.is_done() {
                done = true;
                return;
            }
            let v: serde_json::Value = serde_json::from_slice(e.data()).unwrap();
            if let Some(a) =
                v["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str()
            {
                args.push_str(a);
            }
        })
        .unwrap();
    assert!(done);
    let parsed: serde_json::Value = serde_json::from_str(&args).unwrap();
    let input = parsed["input"].as_str().unwrap();
    for p in PII {
        assert!(input.contains(p), "{p} restored in tool arguments {input}");
    }

    // 3. Streaming chat content.
    let body = serde_json::json!({"model": "deepseek-reasoner", "stream": true, "messages": [{"role": "user", "content": text}]});
    let req = Request::post(server.uri("/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let res = ServiceExt::<Request<Full<Bytes>>>::ready(&mut svc)
        .await
        .unwrap()
        .call(req)
        .await
        .unwrap();
    let wire =
        String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(wire.contains(PII[0]), "restored in the stream");

    // 4. A blocked request and a non-JSON request: their errors name no value.
    let strict = RedactLayer::with_redactor(
        Redactor::builder()
            .mode(EntityType::CN_ID_CARD, Mode::Block)
            .build()
            .unwrap(),
    );
    let mut strict_svc = audit.layer(strict.layer(client.clone()));
    let body = serde_json::json!({"model": "deepseek-chat", "messages": [{"role": "user", "content": text}]});
    let req = Request::post(server.uri("/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let err = ServiceExt::<Request<Full<Bytes>>>::ready(&mut strict_svc)
        .await
        .unwrap()
        .call(req)
        .await
        .unwrap_err();
    errors.push(format!("{err} {err:?}"));
    let req = Request::post(server.uri("/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(format!("not json {text}"))))
        .unwrap();
    let err = ServiceExt::<Request<Full<Bytes>>>::ready(&mut svc)
        .await
        .unwrap()
        .call(req)
        .await
        .unwrap_err();
    errors.push(format!("{err} {err:?}"));

    // 5. Upstream errors (a 429 and a reset) are audited too.
    server.enqueue(tower_deepseek_testkit::Fault::status(429));
    let req = Request::post(server.uri("/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let res = ServiceExt::<Request<Full<Bytes>>>::ready(&mut svc)
        .await
        .unwrap()
        .call(req)
        .await
        .unwrap();
    assert_eq!(res.status(), 429);
    res.into_body().collect().await.unwrap();

    handle.flush().unwrap();
    // What the upstream saw.
    let seen = server.requests();
    assert_eq!(seen.len(), 4);
    for r in &seen {
        assert_clean("upstream request", &String::from_utf8_lossy(&r.body));
    }
    assert!(String::from_utf8_lossy(&seen[0].body).contains("<CN_MOBILE_1>"));
    // Audit records.
    let records = log.with_inner(|v| String::from_utf8(v.clone()).unwrap());
    assert_eq!(records.lines().count(), 6, "{records}");
    assert_eq!(verify_chain(io::BufReader::new(records.as_bytes())), Ok(6));
    assert_clean("audit records", &records);
    assert!(records.contains("\"CN_MOBILE\":2"));
    // Errors.
    for e in &errors {
        assert_clean("error message", e);
    }
    // Every tracing line (audit tracing sink included).
    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("deepseek_audit"),
        "the tracing sink wrote records"
    );
    assert_clean("tracing output", &logs);
    server.shutdown().await;
}

const LABELS: [Option<&str>; 4] = [
    Some("application/json"),
    Some("text/plain"),
    Some("application/x-www-form-urlencoded"),
    None,
];

fn request(uri: http::Uri, label: Option<&str>, body: Bytes) -> Request<Full<Bytes>> {
    let mut b = Request::post(uri);
    if let Some(l) = label {
        b = b.header("content-type", l);
    }
    b.body(Full::new(body)).unwrap()
}

#[tokio::test(flavor = "current_thread")]
async fn every_route_of_pii_over_loopback() {
    use routes::*;
    let server = MockServer::start().await;
    let client = Client::builder(TokioExecutor::new()).build_http::<BufferedBody>();
    let log = WriterSink::new(Vec::new());
    let audit = AuditLayer::builder()
        .hmac_key(b"audit-key-0123456789".to_vec())
        .sink(log.clone())
        .build()
        .unwrap();
    let handle = audit.handle();
    // The defaults: fail closed.
    let svc = audit.layer(RedactLayer::new().layer(client));
    let call = |req: Request<Full<Bytes>>| {
        let svc = svc.clone();
        async move {
            let res = svc.oneshot(req).await?;
            let status = res.status();
            let body = res.into_body().collect().await?.to_bytes();
            Ok::<_, tower_deepseek_core::BoxError>((status, body))
        }
    };

    // 1. Every field, under every label: masked upstream, restored in the answer.
    let mut calls = 0;
    for label in LABELS {
        for (what, body) in field_cases() {
            let path = if body.get("prompt").is_some() {
                "/beta/completions"
            } else {
                "/chat/completions"
            };
            let (status, answer) = call(request(
                server.uri(path),
                label,
                Bytes::from(body.to_string()),
            ))
            .await
            .unwrap_or_else(|e| panic!("{what} {label:?}: {e}"));
            calls += 1;
            let got = server.requests();
            assert_eq!(got.len(), calls, "{what}");
            assert_no_raw_value(what, &got[calls - 1].body);
            let answer = String::from_utf8(answer.to_vec()).unwrap();
            // No placeholder is left for the caller: each one was restored.
            for ph in ["<CN_MOBILE_", "<EMAIL_", "<CN_ID_CARD_"] {
                assert!(!answer.contains(ph), "{what} {label:?}: {answer}");
            }
            if what.starts_with("messages[].content") {
                assert_eq!(status, 200, "{what}");
                assert!(
                    answer.contains("Echo: call 13800138000") || answer.contains(MAIL),
                    "{what}: {answer}"
                );
            }
            if what == "FIM prompt" {
                assert_eq!(status, 200, "{what}: {answer}");
            }
        }
    }

    // 2. Bodies that cannot be parsed, under every label: refused, nothing sent.
    for label in LABELS {
        for (what, body, reason) in unparseable_bodies() {
            let err = call(request(server.uri("/chat/completions"), label, body))
                .await
                .unwrap_err();
            let e = err
                .downcast_ref::<tower_deepseek_redact::InvalidJsonBody>()
                .unwrap_or_else(|| panic!("{what}: {err}"));
            assert_eq!(e.reason().as_str(), reason, "{what}");
            assert_no_raw_value(what, format!("{err} {err:?}").as_bytes());
        }
    }
    // 3. Over the limit (8 MiB by default): refused, nothing sent.
    let big = format!(
        r#"{{"messages":[{{"role":"user","content":"{PHONE} {}"}}]}}"#,
        "x".repeat(8 << 20)
    );
    let err = call(request(
        server.uri("/chat/completions"),
        Some("text/plain"),
        Bytes::from(big),
    ))
    .await
    .unwrap_err();
    assert!(
        err.is::<tower_deepseek_core::error::BodyTooLarge>(),
        "{err}"
    );
    assert_eq!(
        server.requests().len(),
        calls,
        "nothing more reached the upstream"
    );

    // The audit records count what was masked, whatever the label.
    handle.flush().unwrap();
    let records = log.with_inner(|v| String::from_utf8(v.clone()).unwrap());
    let text_plain_content = records
        .lines()
        .nth(field_cases().len())
        .expect("the first text/plain record");
    assert!(
        text_plain_content.contains("\"CN_MOBILE\":1"),
        "{text_plain_content}"
    );
    assert_no_raw_value("audit records", records.as_bytes());
    server.shutdown().await;
}
