//! Property equivalents of the `fuzz/` targets for this crate, run by `cargo test`:
//!
//! - the request path (the JSON field scanner): any body bytes, random or a chat body with PII
//!   truncated and mutated, never panic; a body that `serde_json` refuses is never forwarded
//!   (with `NonJsonPolicy::Reject`); a forwarded body is valid JSON and no detector matches in
//!   the user text it carries;
//! - the audit log readers: `verify_chain` over any bytes never panics, and `JsonlFileSink`
//!   opening a file of any bytes cuts only a torn tail and appends whole lines after it.

use std::io::Cursor;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use proptest::prelude::*;
use serde_json::Value;
use tower::{ServiceExt, service_fn};
use tower_deepseek_core::BoxError;
use tower_deepseek_core::body::BufferedBody;
use tower_deepseek_redact::audit::{AuditSink, JsonlFileSink, verify_chain};
use tower_deepseek_redact::{Detectors, NonJsonPolicy, RedactLayer};
use tower_layer::Layer;

fn user_texts(v: &Value, out: &mut Vec<String>) {
    if let Some(msgs) = v.get("messages").and_then(Value::as_array) {
        for m in msgs {
            match m.get("content") {
                Some(Value::String(s)) => out.push(s.clone()),
                Some(Value::Array(parts)) => {
                    // Text parts: `type` "text" or none (other parts are not user text).
                    for p in parts {
                        let text_part = p.get("type").is_none_or(|t| t == "text");
                        if let (true, Some(Value::String(s))) = (text_part, p.get("text")) {
                            out.push(s.clone());
                        }
                    }
                }
                _ => {}
            }
        }
    }
    if let Some(Value::String(s)) = v.get("prompt") {
        out.push(s.clone());
    }
}

/// Sends `data` as a chat request body; checks the properties; returns whether it was
/// forwarded.
fn check_request(data: &[u8]) -> Result<bool, TestCaseError> {
    let sent: Arc<Mutex<Option<Bytes>>> = Arc::default();
    let s2 = sent.clone();
    let svc = RedactLayer::new()
        .non_json(NonJsonPolicy::Reject)
        .layer(service_fn(move |req: Request<BufferedBody>| {
            *s2.lock().unwrap() = Some(req.body().bytes().clone());
            async move { Ok::<_, BoxError>(Response::new(Full::new(Bytes::new()))) }
        }));
    let req = Request::post("/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::copy_from_slice(data)))
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let res = rt.block_on(svc.oneshot(req));
    let forwarded = sent.lock().unwrap().take();
    match (res, forwarded) {
        (Err(_), None) => Ok(false),
        (Err(e), Some(_)) => Err(TestCaseError::fail(format!("forwarded and failed: {e}"))),
        (Ok(_), None) => Err(TestCaseError::fail("answered without forwarding")),
        (Ok(_), Some(fwd)) => {
            if data.is_empty() {
                prop_assert!(fwd.is_empty());
                return Ok(true);
            }
            // JSON's grammar has no bound on numbers; serde_json refuses those beyond f64
            // (`1e11111`, found by the fuzz target): the scanner reads them as JSON.
            if let Err(e) = serde_json::from_slice::<Value>(data) {
                prop_assert!(
                    e.to_string().starts_with("number out of range"),
                    "a body serde_json refuses was forwarded: {:?}",
                    String::from_utf8_lossy(data)
                );
                return Ok(true);
            }
            let out: Value = serde_json::from_slice(&fwd)
                .map_err(|e| TestCaseError::fail(format!("forwarded body is not JSON: {e}")))?;
            let mut texts = Vec::new();
            user_texts(&out, &mut texts);
            for t in texts {
                let left = Detectors::all().detect(&t);
                prop_assert!(
                    left.is_empty(),
                    "{:?} left in {:?} of {:?}",
                    left,
                    t,
                    String::from_utf8_lossy(data)
                );
            }
            Ok(true)
        }
    }
}

const PII: &[&str] = &[
    "13800138000",
    "a.b@example.com",
    "11010519491231002X",
    "4111 1111 1111 1111",
    "sk-0123456789abcdef0123456789abcdef",
];

/// A chat body with PII in its user text, written with escapes, then damaged: truncated, a
/// byte replaced, a JSON metacharacter inserted.
fn near_json() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(
            ("[a-z \\\\\"<>\u{4e00}-\u{4e10}]{0,12}", 0..PII.len()),
            1..4,
        ),
        any::<bool>(),
        prop::collection::vec(
            (0usize..400, 0u8..5, prop::sample::select(b"\"\\{}[],:u0\xff\n".to_vec())),
            0..3,
        ),
    )
        .prop_map(|(parts, array, edits)| {
            let text: String = parts
                .into_iter()
                // Values end with one space: two grouped card numbers then read as one
                // 32-digit run, and both must still be found.
                .map(|(f, k)| format!("{f}{} ", PII[k]))
                .collect();
            let content = if array {
                serde_json::json!([{"type": "text", "text": text}])
            } else {
                Value::String(text)
            };
            let mut b = serde_json::to_vec(&serde_json::json!({
                "model": "deepseek-chat",
                "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": content}],
                "temperature": 0.5,
            }))
            .unwrap();
            for (at, op, byte) in edits {
                let at = at % (b.len() + 1);
                match op {
                    0 => b.truncate(at),
                    1 if at < b.len() => b[at] = byte,
                    _ => b.insert(at, byte),
                }
            }
            b
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, .. ProptestConfig::default() })]

    #[test]
    fn request_path_on_random_bytes(data in prop::collection::vec(any::<u8>(), 0..200)) {
        check_request(&data)?;
    }

    #[test]
    fn request_path_on_damaged_chat_bodies(data in near_json()) {
        check_request(&data)?;
    }

    #[test]
    fn verify_chain_on_random_lines(lines in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..80), 0..6)) {
        let data = lines.join(&b'\n');
        if let Ok(n) = verify_chain(Cursor::new(&data)) {
            prop_assert!(n <= lines.len());
        }
    }

    #[test]
    fn file_sink_opens_any_file(data in prop::collection::vec(prop::sample::select(b"{}\"ab:\n\r\\ ".to_vec()), 0..120)) {
        let dir = std::env::temp_dir().join(format!("td-audit-props-{}-{:016x}", std::process::id(), rand_u64()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.jsonl");
        std::fs::write(&path, &data).unwrap();
        let sink = JsonlFileSink::builder(&path)
            .fsync_interval(std::time::Duration::ZERO)
            .open()
            .unwrap();
        let _ = sink.chain_tail();
        let repaired = std::fs::read(&path).unwrap();
        prop_assert!(repaired.is_empty() || repaired.ends_with(b"\n"));
        prop_assert!(data.starts_with(&repaired));
        sink.write(b"{\"k\":1}").unwrap();
        drop(sink);
        let after = std::fs::read(&path).unwrap();
        prop_assert_eq!(&after[repaired.len()..], b"{\"k\":1}\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::Instant::now())
}

/// Valid bodies with PII are forwarded, masked.
#[test]
fn a_valid_body_with_pii_is_forwarded_masked() {
    let body = serde_json::json!({"messages": [{"role": "user", "content": "call 13800138000"}]});
    assert!(check_request(body.to_string().as_bytes()).unwrap());
}

/// Broken JSON is refused, never forwarded raw.
#[test]
fn broken_json_is_refused() {
    for b in [
        &b"{\"messages\": [{\"role\": \"user\", \"content\": \"call 13800138000"[..],
        b"{\"a\":1} trailing",
        b"\xff\xfe",
        b"{\"a\":\"\\x\"}",
        // Found by the property above: invalid UTF-8 in a string the scanner does not decode.
        b"{\"messages\":[{\"role\":\"\xffuser\",\"content\":\"hi\"}]}",
    ] {
        assert!(
            !check_request(b).unwrap(),
            "{:?}",
            String::from_utf8_lossy(b)
        );
    }
}

/// Found by the fuzz target: a number beyond f64 is JSON (the grammar has no bound), so the
/// body is forwarded, not refused.
#[test]
fn numbers_beyond_f64_are_json() {
    assert!(check_request(b"1e11111").unwrap());
    let body = br#"{"n": 1e11111, "messages": [{"role": "user", "content": "call 13800138000"}]}"#;
    assert!(check_request(body).unwrap());
}
