//! The redactor's request path (its JSON field scanner): arbitrary bytes as a chat request body.
//! Never panics; a body that is not JSON is refused, never forwarded raw; what is forwarded is
//! valid JSON, and no detector matches in the user text it carries.
#![no_main]

use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tower::{ServiceExt, service_fn};
use tower_deepseek_core::BoxError;
use tower_deepseek_core::body::BufferedBody;
use tower_deepseek_redact::{Detectors, NonJsonPolicy, RedactLayer};
use tower_layer::Layer;

fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    })
}

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

fuzz_target!(|data: &[u8]| {
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
    let res = rt().block_on(svc.oneshot(req));
    let forwarded = sent.lock().unwrap().take();
    // JSON's grammar has no bound on numbers; serde_json refuses those beyond f64 (`1e11111`,
    // found by this target): such a body is JSON to the scanner and is forwarded.
    let input_json = match serde_json::from_slice::<Value>(data) {
        Ok(v) => Some(Some(v)),
        Err(e) if e.to_string().starts_with("number out of range") => Some(None),
        Err(_) => None,
    };
    match (res, forwarded) {
        (Err(_), None) => {}
        (Err(e), Some(_)) => panic!("forwarded and failed: {e}"),
        (Ok(_), None) => panic!("answered without forwarding"),
        (Ok(_), Some(fwd)) => {
            if data.is_empty() {
                assert!(fwd.is_empty());
                return;
            }
            assert!(
                input_json.is_some(),
                "a body serde_json refuses was forwarded"
            );
            if input_json == Some(None) {
                // Not readable here; the scanner accepted it as JSON.
                return;
            }
            let out: Value = serde_json::from_slice(&fwd).expect("forwarded body is valid JSON");
            let mut texts = Vec::new();
            user_texts(&out, &mut texts);
            for t in texts {
                let left = Detectors::all().detect(&t);
                assert!(left.is_empty(), "{left:?} left in the forwarded text");
            }
        }
    }
});
