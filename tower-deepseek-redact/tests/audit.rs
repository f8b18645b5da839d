//! AuditLayer: schema, outcomes, cancellation, sink failure policies, rotation, hash chain.

use std::convert::Infallible;
use std::io::{self, BufReader, Write as _};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use sha2::Sha256;
use tower::{ServiceExt, service_fn};
use tower_deepseek_core::BoxError;
use tower_deepseek_core::body::BufferedBody;
use tower_deepseek_core::meta::{ClientIp, RequestId, TenantId};
use tower_deepseek_redact::RedactLayer;
use tower_deepseek_redact::audit::{
    AuditLayer, AuditRecord, AuditSink, AuditUnavailable, JsonlFileSink, SinkFailurePolicy,
    VerifyFilesError, WriterSink, verify_chain, verify_chain_files,
};
use tower_layer::Layer;

const KEY: &[u8] = b"audit-key-0123456789";

fn sse_body() -> String {
    [
        r#"data: {"id":"1","model":"deepseek-v4-flash","choices":[{"index":0,"delta":{"content":"Echo: <CN_MOBILE_1>"},"finish_reason":null}]}"#,
        r#"data: {"id":"1","model":"deepseek-v4-flash","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
        r#"data: {"id":"1","model":"deepseek-v4-flash","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17,"prompt_cache_hit_tokens":8,"prompt_cache_miss_tokens":4}}"#,
        "data: [DONE]",
        "",
    ]
    .join("\n\n")
}

fn chat(content: &str) -> Request<Full<Bytes>> {
    let body = serde_json::json!({"model": "deepseek-v4-flash", "stream": true, "messages": [{"role": "user", "content": content}]});
    Request::post("/chat/completions?secret=1")
        .header("content-type", "application/json")
        .header(
            "authorization",
            "Bearer sk-4f8e2a9c1b3d5e7f9a0b2c4d6e8f0a1b",
        )
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// An audit layer with the test key, writing its records to memory.
fn audit_to_memory() -> (AuditLayer, WriterSink<Vec<u8>>) {
    let log = WriterSink::new(Vec::new());
    let audit = AuditLayer::builder()
        .hmac_key(KEY.to_vec())
        .sink(log.clone())
        .build()
        .unwrap();
    (audit, log)
}

fn records(log: &WriterSink<Vec<u8>>) -> Vec<String> {
    let text = log.with_inner(|v| String::from_utf8(v.clone()).unwrap());
    text.lines().map(str::to_owned).collect()
}

#[tokio::test]
async fn schema_has_every_field() {
    let (audit, log) = audit_to_memory();
    let upstream_body = Arc::new(Mutex::new(Bytes::new()));
    let ub = upstream_body.clone();
    let svc = audit.layer(RedactLayer::new().layer(service_fn(
        move |req: Request<BufferedBody>| {
            *ub.lock().unwrap() = req.body().bytes().clone();
            async move {
                // The facts of the layers below, in core's protocol types (headers such as
                // an upstream gateway's `x-retry-attempts` are not read).
                Ok::<_, Infallible>(
                    Response::builder()
                        .header("content-type", "text/event-stream")
                        .header("x-cache", "MISS")
                        .header("x-retry-attempts", "9")
                        .header("x-breaker-state", "open")
                        .extension(tower_deepseek_core::protocol::Attempts::new(
                            3,
                            Vec::new(),
                            tower_deepseek_core::protocol::StopReason::Success,
                        ))
                        .extension(tower_deepseek_core::protocol::BreakerStatus("closed"))
                        .body(Full::new(Bytes::from(sse_body())))
                        .unwrap(),
                )
            }
        },
    )));
    let mut req = chat("my phone 13800138000");
    req.extensions_mut()
        .insert(RequestId::parse("req-42").unwrap());
    req.extensions_mut()
        .insert(ClientIp("203.0.113.9".parse().unwrap()));
    req.extensions_mut().insert(TenantId::new("acme"));
    let res = svc.oneshot(req).await.unwrap();
    assert!(
        records(&log).is_empty(),
        "written when the stream ends, not before"
    );
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("13800138000"));
    let lines = records(&log);
    assert_eq!(lines.len(), 1);
    let v: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    let mut expected = vec![
        "timestamp",
        "request_id",
        "client_ip",
        "tenant",
        "key_id",
        "method",
        "endpoint",
        "model",
        "prompt_hash",
        "status",
        "outcome",
        "latency_ms",
        "prompt_tokens",
        "completion_tokens",
        "cache_hit_tokens",
        "pii",
        "cache",
        "retries",
        "breaker",
    ];
    expected.sort_unstable();
    let mut got = keys.clone();
    got.sort_unstable();
    assert_eq!(got, expected);
    let r: AuditRecord = serde_json::from_str(&lines[0]).unwrap();
    assert!(
        r.timestamp.ends_with('Z') && r.timestamp.len() == 24,
        "{}",
        r.timestamp
    );
    assert_eq!(r.request_id.as_deref(), Some("req-42"));
    assert_eq!(r.client_ip.as_deref(), Some("203.0.113.9"));
    assert_eq!(r.tenant.as_ref().unwrap().len(), 16);
    assert_ne!(r.tenant.as_deref(), Some("acme"));
    assert_eq!(r.key_id.as_ref().unwrap().len(), 16);
    assert_eq!(r.method, "POST");
    assert_eq!(r.endpoint, "/chat/completions");
    assert_eq!(r.model.as_deref(), Some("deepseek-v4-flash"));
    let mut mac = Hmac::<Sha256>::new_from_slice(KEY).unwrap();
    mac.update(&upstream_body.lock().unwrap());
    assert_eq!(
        r.prompt_hash.as_deref(),
        Some(hex::encode(mac.finalize().into_bytes()).as_str())
    );
    assert_eq!(r.status, Some(200));
    assert_eq!(r.outcome, "ok");
    assert_eq!(r.prompt_tokens, Some(12));
    assert_eq!(r.completion_tokens, Some(5));
    assert_eq!(r.cache_hit_tokens, Some(8));
    assert_eq!(r.pii.get("CN_MOBILE"), Some(&1));
    assert_eq!(r.cache.as_deref(), Some("miss"));
    assert_eq!(r.retries, Some(2));
    assert_eq!(r.breaker.as_deref(), Some("closed"));
    assert!(
        !lines[0].contains("13800138000")
            && !lines[0].contains("sk-4f8e")
            && !lines[0].contains("secret=1")
    );
}

#[tokio::test]
async fn outcomes_errors_and_cancellation() {
    let (audit, log) = audit_to_memory();
    // 429 JSON error.
    let svc = audit.layer(service_fn(
        |req: Request<tower_deepseek_redact::audit::AuditRequestBody<Full<Bytes>>>| async {
            // Like a client: the body is sent (read) before the answer comes.
            req.into_body().collect().await.unwrap();
            Ok::<_, Infallible>(
                Response::builder()
                    .status(StatusCode::TOO_MANY_REQUESTS)
                    .body(Full::new(Bytes::from_static(
                        b"{\"error\":{\"message\":\"slow down\"}}",
                    )))
                    .unwrap(),
            )
        },
    ));
    let res = svc.clone().oneshot(chat("hi")).await.unwrap();
    res.into_body().collect().await.unwrap();
    // Inner error.
    let failing = audit.layer(service_fn(|_req: Request<_>| async {
        Err::<Response<Full<Bytes>>, BoxError>(Box::new(io::Error::new(
            io::ErrorKind::ConnectionReset,
            "reset",
        )))
    }));
    assert!(failing.oneshot(chat("hi")).await.is_err());
    // Stream dropped mid-way.
    let streaming = audit.layer(service_fn(|_req: Request<_>| async {
        Ok::<_, Infallible>(
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(Full::new(Bytes::from(sse_body())))
                .unwrap(),
        )
    }));
    let res = streaming.clone().oneshot(chat("hi")).await.unwrap();
    drop(res);
    // Future dropped before the answer.
    let hanging = audit.layer(service_fn(|_req: Request<_>| async {
        std::future::pending::<Result<Response<Full<Bytes>>, Infallible>>().await
    }));
    let fut = hanging.oneshot(chat("hi"));
    let _ = tokio::time::timeout(std::time::Duration::from_millis(1), fut).await;
    // Stream cut without [DONE].
    let cut = audit.layer(service_fn(|_req: Request<_>| async {
        Ok::<_, Infallible>(
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(Full::new(Bytes::from_static(b"data: {\"choices\":[]}\n\n")))
                .unwrap(),
        )
    }));
    cut.oneshot(chat("hi"))
        .await
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap();
    let recs: Vec<AuditRecord> = records(&log)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let outcomes: Vec<(&str, Option<u16>)> = recs
        .iter()
        .map(|r| (r.outcome.as_str(), r.status))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("rate_limited", Some(429)),
            ("transport_error", None),
            ("cancelled", Some(200)),
            ("cancelled", None),
            ("incomplete", Some(200)),
        ]
    );
    assert_eq!(
        recs[1].prompt_hash, None,
        "a body never read was never sent"
    );
    // Without RedactLayer below, the prompt hash is the HMAC of the body as this layer saw it.
    let mut mac = Hmac::<Sha256>::new_from_slice(KEY).unwrap();
    mac.update(&chat("hi").into_body().collect().await.unwrap().to_bytes());
    assert_eq!(
        recs[0].prompt_hash.as_deref(),
        Some(hex::encode(mac.finalize().into_bytes()).as_str())
    );
    assert_eq!(
        recs[0].model.as_deref(),
        Some("deepseek-v4-flash"),
        "from the request"
    );
}

/// A sink that fails while `broken` is set.
#[derive(Clone, Default)]
struct Flaky {
    broken: Arc<AtomicBool>,
    lines: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl AuditSink for Flaky {
    fn write(&self, record: &[u8]) -> io::Result<()> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(io::Error::other("disk full"));
        }
        self.lines.lock().unwrap().push(record.to_vec());
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        if self.broken.load(Ordering::SeqCst) {
            Err(io::Error::other("disk full"))
        } else {
            Ok(())
        }
    }
}

fn ok_service() -> impl tower::Service<
    Request<tower_deepseek_redact::audit::AuditRequestBody<Full<Bytes>>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    service_fn(|_req| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
    })
}

#[tokio::test]
async fn fail_closed_refuses_until_the_sink_recovers() {
    let sink = Flaky::default();
    let audit = AuditLayer::builder()
        .hmac_key(KEY.to_vec())
        .sink(sink.clone())
        .build()
        .unwrap();
    let handle = audit.handle();
    let svc = audit.layer(ok_service());
    sink.broken.store(true, Ordering::SeqCst);
    // This call's record cannot be written: its answer is not completed (the body ends with
    // the error in place of its last frame), and the policy trips.
    let res = svc.clone().oneshot(chat("a")).await.unwrap();
    let err = res.into_body().collect().await.unwrap_err();
    assert!(err.is::<AuditUnavailable>(), "{err}");
    assert_eq!(handle.failed_writes(), 1);
    let err = svc.clone().oneshot(chat("b")).await.unwrap_err();
    assert!(err.is::<AuditUnavailable>(), "{err}");
    assert_eq!(
        AuditUnavailable::default().retry_after(),
        std::time::Duration::from_secs(5)
    );
    sink.broken.store(false, Ordering::SeqCst);
    let res = svc.clone().oneshot(chat("c")).await.unwrap();
    res.into_body().collect().await.unwrap();
    assert_eq!(sink.lines.lock().unwrap().len(), 1);
}

/// A sink whose writes fail while `broken` is set, and whose flush always succeeds (as a file
/// sink's after a refused write: nothing new to sync); its probe fails while broken.
#[derive(Clone, Default)]
struct WriteFails {
    broken: Arc<AtomicBool>,
}

impl AuditSink for WriteFails {
    fn write(&self, _record: &[u8]) -> io::Result<()> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(io::Error::other("disk full"));
        }
        Ok(())
    }
    fn probe(&self) -> io::Result<()> {
        self.write(b"")
    }
}

#[tokio::test]
async fn check_says_whether_the_sinks_take_records_now() {
    let sink = WriteFails::default();
    let audit = AuditLayer::builder()
        .hmac_key(KEY.to_vec())
        .sink(sink.clone())
        .build()
        .unwrap();
    let handle = audit.handle();
    let svc = audit.layer(ok_service());
    handle.check().unwrap();
    sink.broken.store(true, Ordering::SeqCst);
    let res = svc.clone().oneshot(chat("a")).await.unwrap();
    assert!(res.into_body().collect().await.is_err());
    // A flush alone would succeed: the failed write is what counts, through a probe.
    handle.flush().unwrap();
    assert!(handle.check().is_err());
    sink.broken.store(false, Ordering::SeqCst);
    handle.check().unwrap();
    // The probe that passed brought the sink back for the layer too.
    let res = svc.clone().oneshot(chat("b")).await.unwrap();
    res.into_body().collect().await.unwrap();
}

/// A body whose one frame is its last (`is_end_stream` after it), as a body with a
/// `Content-Length` is for hyper's server.
struct Sized(Option<Bytes>);

impl http_body::Body for Sized {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        std::task::Poll::Ready(self.0.take().map(|b| Ok(http_body::Frame::data(b))))
    }
    fn is_end_stream(&self) -> bool {
        self.0.is_none()
    }
    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.0.as_ref().map_or(0, |b| b.len() as u64))
    }
}

#[tokio::test]
async fn fail_closed_never_hands_on_the_last_frame_of_an_unrecorded_answer() {
    let sink = Flaky::default();
    let audit = AuditLayer::builder()
        .hmac_key(KEY.to_vec())
        .sink(sink.clone())
        .build()
        .unwrap();
    let svc = audit.layer(service_fn(
        |_req: Request<tower_deepseek_redact::audit::AuditRequestBody<Full<Bytes>>>| async {
            Ok::<_, Infallible>(Response::new(Sized(Some(Bytes::from_static(
                b"{\"answer\":1}",
            )))))
        },
    ));
    sink.broken.store(true, Ordering::SeqCst);
    let res = svc.clone().oneshot(chat("a")).await.unwrap();
    let mut body = res.into_body();
    // The one frame is the last: it is replaced by the error, no byte of it goes on.
    let first = body.frame().await.unwrap();
    assert!(first.unwrap_err().is::<AuditUnavailable>());
    // With a working sink, the same answer goes through whole.
    sink.broken.store(false, Ordering::SeqCst);
    let res = svc.clone().oneshot(chat("b")).await.unwrap();
    let text = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&text[..], b"{\"answer\":1}");
    assert_eq!(sink.lines.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn fail_closed_turns_an_error_before_the_head_into_audit_unavailable() {
    let sink = Flaky::default();
    let audit = AuditLayer::builder()
        .hmac_key(KEY.to_vec())
        .sink(sink.clone())
        .build()
        .unwrap();
    let svc = audit.layer(service_fn(
        |_req: Request<tower_deepseek_redact::audit::AuditRequestBody<Full<Bytes>>>| async {
            Err::<Response<Full<Bytes>>, _>(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "refused",
            ))
        },
    ));
    // A working sink: the layer's error goes through.
    let err = svc.clone().oneshot(chat("a")).await.unwrap_err();
    assert!(err.is::<io::Error>(), "{err}");
    sink.broken.store(true, Ordering::SeqCst);
    let err = svc.clone().oneshot(chat("b")).await.unwrap_err();
    assert!(err.is::<AuditUnavailable>(), "{err}");
    assert_eq!(sink.lines.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn fail_open_serves_and_counts() {
    let sink = Flaky::default();
    let audit = AuditLayer::builder()
        .hmac_key(KEY.to_vec())
        .sink(sink.clone())
        .on_sink_failure(SinkFailurePolicy::FailOpen)
        .build()
        .unwrap();
    let handle = audit.handle();
    let svc = audit.layer(ok_service());
    sink.broken.store(true, Ordering::SeqCst);
    for _ in 0..3 {
        let res = svc.clone().oneshot(chat("a")).await.unwrap();
        res.into_body().collect().await.unwrap();
    }
    assert!(sink.lines.lock().unwrap().is_empty());
    assert_eq!(handle.failed_writes(), 3, "every lost record is counted");
}

#[test]
fn builder_validates() {
    assert_eq!(
        AuditLayer::builder().build().unwrap_err().field(),
        "hmac_key"
    );
    assert_eq!(
        AuditLayer::builder()
            .hmac_key(b"short".to_vec())
            .build()
            .unwrap_err()
            .field(),
        "hmac_key"
    );
}

#[tokio::test]
async fn hash_chain_verifies_and_detects_the_edited_line() {
    let log = WriterSink::new(Vec::new());
    let audit = AuditLayer::builder()
        .hmac_key(KEY.to_vec())
        .sink(log.clone())
        .hash_chain(true)
        .build()
        .unwrap();
    let svc = audit.layer(ok_service());
    for i in 0..6 {
        let res = svc.clone().oneshot(chat(&format!("m{i}"))).await.unwrap();
        res.into_body().collect().await.unwrap();
    }
    let lines = records(&log);
    let text = lines.join("\n");
    assert_eq!(verify_chain(BufReader::new(text.as_bytes())), Ok(6));
    // Edit line 3 (a status).
    let mut edited = lines.clone();
    edited[2] = edited[2].replace("\"status\":200", "\"status\":201");
    assert_ne!(edited[2], lines[2]);
    let e = verify_chain(BufReader::new(edited.join("\n").as_bytes())).unwrap_err();
    assert_eq!(e.line, 3);
    // Re-hashing the edited line does not help: the next one no longer links.
    // Remove line 4.
    let mut removed = lines.clone();
    removed.remove(3);
    assert_eq!(
        verify_chain(BufReader::new(removed.join("\n").as_bytes()))
            .unwrap_err()
            .line,
        4
    );
    // Swap lines 5 and 6.
    let mut swapped = lines.clone();
    swapped.swap(4, 5);
    assert_eq!(
        verify_chain(BufReader::new(swapped.join("\n").as_bytes()))
            .unwrap_err()
            .line,
        5
    );
}

#[tokio::test]
async fn jsonl_file_rotates_and_the_chain_spans_files() {
    let dir = std::env::temp_dir().join(format!(
        "redact-audit-{}-{}",
        std::process::id(),
        fastrand_like()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("audit.jsonl");
    let sink = JsonlFileSink::open(&path, 1500, 3).unwrap();
    let audit = AuditLayer::builder()
        .hmac_key(KEY.to_vec())
        .sink(sink)
        .hash_chain(true)
        .build()
        .unwrap();
    let handle = audit.handle();
    let svc = audit.layer(ok_service());
    for i in 0..10 {
        let res = svc.clone().oneshot(chat(&format!("m{i}"))).await.unwrap();
        res.into_body().collect().await.unwrap();
    }
    handle.shutdown().unwrap();
    let mut all = String::new();
    for n in (1..=3).rev() {
        let p = dir.join(format!("audit.jsonl.{n}"));
        if let Ok(s) = std::fs::read_to_string(&p) {
            assert!(s.len() <= 1500, "rotated at the size limit");
            all.push_str(&s);
        }
    }
    assert!(dir.join("audit.jsonl.1").exists());
    all.push_str(&std::fs::read_to_string(&path).unwrap());
    let n = verify_chain(BufReader::new(all.as_bytes())).unwrap();
    assert!((4..=10).contains(&n), "{n}");
    // The same, file by file, oldest first: each file links to the one before it.
    let files: Vec<_> = (1..=3)
        .rev()
        .map(|n| dir.join(format!("audit.jsonl.{n}")))
        .filter(|p| p.exists())
        .chain([path.clone()])
        .collect();
    assert_eq!(verify_chain_files(&files).unwrap(), n);
    // Files out of order: the break is named by file and line.
    let mut swapped = files.clone();
    swapped.swap(0, 1);
    match verify_chain_files(&swapped).unwrap_err() {
        VerifyFilesError::Broken(e) => {
            assert_eq!(e.file.as_deref(), Some(files[0].as_path()));
            assert_eq!(e.line, 1);
            let at = format!("{}:1", files[0].display());
            assert!(e.to_string().contains(&at), "{e}");
        }
        other => panic!("{other}"),
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

fn fastrand_like() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[tokio::test]
async fn facts_from_inner_layers_and_a_generated_request_id() {
    use tower_deepseek_core::classify::FailureClass;
    use tower_deepseek_core::protocol::{Attempts, BreakerStatus, StopReason};

    let (audit, log) = audit_to_memory();
    let seen_id = Arc::new(Mutex::new(None::<String>));
    let seen = seen_id.clone();
    // What the retry and breaker layers below leave on the response.
    let inner = service_fn(
        move |req: Request<tower_deepseek_redact::audit::AuditRequestBody<Full<Bytes>>>| {
            *seen.lock().unwrap() = req
                .headers()
                .get("x-request-id")
                .map(|v| v.to_str().unwrap().to_owned());
            async {
                let mut res = Response::new(Full::new(Bytes::from_static(b"{}")));
                res.extensions_mut().insert(Attempts::new(
                    3,
                    vec![FailureClass::BadGateway, FailureClass::BadGateway],
                    StopReason::Success,
                ));
                res.extensions_mut().insert(BreakerStatus("half_open"));
                Ok::<_, Infallible>(res)
            }
        },
    );
    let req = Request::post("/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            b"{\"model\":\"m\",\"messages\":[]}",
        )))
        .unwrap();
    let res = audit.layer(inner).oneshot(req).await.unwrap();
    let _ = res.into_body().collect().await.unwrap();
    let lines = records(&log);
    let record: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(record["retries"], 2, "3 attempts are 2 retries");
    assert_eq!(record["breaker"], "half_open");
    let id = record["request_id"]
        .as_str()
        .expect("an id even without a caller's");
    assert_eq!(id.len(), 32);
    assert_eq!(
        seen_id.lock().unwrap().as_deref(),
        Some(id),
        "the upstream sees the same id"
    );
}

#[test]
fn refusals_classify_as_local_rejections() {
    use tower_deepseek_core::classify::{Classifier, FailureClass};
    use tower_deepseek_redact::{EntityType, Mode, RedactContext, Redactor};

    let blocked = Redactor::builder()
        .mode(EntityType::CN_MOBILE, Mode::Block)
        .build()
        .unwrap()
        .redact("call 138-0013-8000", &mut RedactContext::new(None))
        .unwrap_err();
    let c = Classifier::new();
    assert_eq!(c.classify_error(&blocked), FailureClass::Rejected);
    assert_eq!(
        c.classify_error(&AuditUnavailable::default()),
        FailureClass::Rejected
    );
}

#[tokio::test]
async fn a_request_body_read_in_several_chunks_is_hashed_whole() {
    // Without RedactLayer below, the chunks the inner service read are hashed in order (no
    // copy), and the model fallback reads them joined: the `model` member is cut across chunks.
    let body = br#"{"model":"deepseek-v4-flash","messages":[{"role":"user","content":"hi"}]}"#;
    let cuts = [0usize, 5, 14, 15, 40, body.len()];
    let (audit, log) = audit_to_memory();
    let svc = audit.layer(service_fn(
        |req: Request<tower_deepseek_redact::audit::AuditRequestBody<_>>| async {
            req.into_body().collect().await.unwrap();
            // A JSON answer without `model`, so that the model comes from the request.
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
        },
    ));
    let chunks: std::collections::VecDeque<Bytes> = cuts
        .windows(2)
        .map(|w| Bytes::copy_from_slice(&body[w[0]..w[1]]))
        .collect();
    let req = Request::post("/chat/completions")
        .header("content-type", "application/json")
        .body(Chunks(chunks))
        .unwrap();
    svc.oneshot(req)
        .await
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap();
    let rec: AuditRecord = serde_json::from_str(&records(&log)[0]).unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(KEY).unwrap();
    mac.update(body);
    assert_eq!(
        rec.prompt_hash.as_deref(),
        Some(hex::encode(mac.finalize().into_bytes()).as_str())
    );
    assert_eq!(rec.model.as_deref(), Some("deepseek-v4-flash"));
}

/// A request body in the given chunks.
struct Chunks(std::collections::VecDeque<Bytes>);

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|b| Ok(http_body::Frame::data(b))))
    }
}

/// A layer below that classified the body (the breaker, asked for call facts) shares its
/// outcome: the audit record takes verdict, usage and model from it instead of parsing the
/// body again. (The body here says otherwise on purpose: it is not read for the record.)
#[tokio::test]
async fn an_outcome_shared_from_below_is_used_instead_of_parsing_again() {
    use tower_deepseek_core::chat::Usage;
    use tower_deepseek_core::classify::{FailureClass, FrameTrace, ResponseSummary, SharedOutcome};
    use tower_deepseek_core::protocol::CollectCallFacts;

    let (audit, log) = audit_to_memory();
    let inner = service_fn(
        |req: Request<tower_deepseek_redact::audit::AuditRequestBody<Full<Bytes>>>| async move {
            assert!(
                req.extensions().get::<CollectCallFacts>().is_some(),
                "audit asks the layers below for their facts"
            );
            let answer = Bytes::from_static(
                br#"{"model":"from-body","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#,
            );
            // The verdict below is about the very frame audit will see.
            let mut frames = FrameTrace::new();
            frames.record(&answer);
            let mut res = Response::builder()
                .header("content-type", "application/json")
                .body(Full::new(answer))
                .unwrap();
            let slot = SharedOutcome::new();
            let mut summary = ResponseSummary::default();
            summary.usage = Some(Usage {
                prompt_tokens: 42,
                completion_tokens: 7,
                ..Default::default()
            });
            summary.model = Some("from-below".into());
            slot.publish(Err(FailureClass::InBandError), summary, frames);
            res.extensions_mut().insert(slot);
            Ok::<_, Infallible>(res)
        },
    );
    let res = audit.layer(inner).oneshot(chat("hi")).await.unwrap();
    let _ = res.into_body().collect().await.unwrap();
    let lines = records(&log);
    let record: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(record["outcome"], "in_band_error", "{record}");
    assert_eq!(record["prompt_tokens"], 42, "{record}");
    assert_eq!(record["completion_tokens"], 7, "{record}");
    assert_eq!(record["model"], "from-below", "{record}");
}

/// A layer between that rewrites the answer (the content filter blocking it) makes the
/// outcome shared from below about other bytes than audit sees, so the record says what the
/// caller got: the blocked stream (an error event, no `[DONE]`) and the blocked JSON answer
/// (a 400), not the upstream's clean verdict. (The filter leaves the slot alone: the frames
/// tell.)
#[tokio::test]
async fn a_filter_between_hides_the_shared_outcome_from_audit() {
    use tower_deepseek_core::classify::{FrameTrace, ResponseSummary, SharedOutcome};
    use tower_deepseek_redact::{ContentFilterLayer, FilterAction};

    for stream in [true, false] {
        let (audit, log) = audit_to_memory();
        let filter = ContentFilterLayer::builder()
            .keywords(["forbidden"])
            .action(FilterAction::Block)
            .build()
            .unwrap();
        let inner = service_fn(move |_req: Request<_>| async move {
            let (ct, body) = if stream {
                (
                    "text/event-stream",
                    "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a forbidden word\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n",
                )
            } else {
                (
                    "application/json",
                    r#"{"choices":[{"index":0,"message":{"role":"assistant","content":"a forbidden word"},"finish_reason":"stop"}]}"#,
                )
            };
            let answer = Bytes::from_static(body.as_bytes());
            let mut frames = FrameTrace::new();
            frames.record(&answer);
            let mut res = Response::builder()
                .header("content-type", ct)
                .body(Full::new(answer))
                .unwrap();
            // The layer below judged the upstream's answer clean.
            let slot = SharedOutcome::new();
            slot.publish(Ok(()), ResponseSummary::default(), frames);
            res.extensions_mut().insert(slot);
            Ok::<_, Infallible>(res)
        });
        let svc = audit.layer(filter.layer(inner));
        let res = svc.oneshot(chat("hi")).await.unwrap();
        let _ = res.into_body().collect().await;
        let lines = records(&log);
        let record: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert_ne!(record["outcome"], "ok", "stream: {stream}: {record}");
    }
}

/// A fresh directory under the system's temp dir, removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "redact-{name}-{}-{}",
            std::process::id(),
            fastrand_like()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Sends `n` calls through an audit layer with `sink`, hash-chained.
async fn calls_through(sink: JsonlFileSink, n: usize) {
    let audit = AuditLayer::builder()
        .hmac_key(KEY.to_vec())
        .sink(sink)
        .hash_chain(true)
        .build()
        .unwrap();
    let svc = audit.layer(ok_service());
    for i in 0..n {
        let res = svc.clone().oneshot(chat(&format!("m{i}"))).await.unwrap();
        res.into_body().collect().await.unwrap();
    }
}

fn file_lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn file_records_reach_the_os_at_once_and_the_disk_within_the_interval() {
    let dir = TempDir::new("durable");
    let path = dir.0.join("audit.jsonl");
    let sink = JsonlFileSink::builder(&path)
        .fsync_interval(std::time::Duration::from_millis(20))
        .open()
        .unwrap();
    calls_through(sink.clone(), 5).await;
    // No flush, no further call: every record is in the file, whole.
    let lines = file_lines(&path);
    assert_eq!(lines.len(), 5);
    assert!(std::fs::read(&path).unwrap().ends_with(b"\n"));
    assert_eq!(sink.written_records(), 5);
    // The background thread syncs them without being asked.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while sink.synced_records() < 5 {
        assert!(
            std::time::Instant::now() < deadline,
            "not synced: {}",
            sink.synced_records()
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn fsync_interval_zero_syncs_every_record_before_the_call_ends() {
    let dir = TempDir::new("sync-each");
    let path = dir.0.join("audit.jsonl");
    let sink = JsonlFileSink::builder(&path)
        .fsync_interval(std::time::Duration::ZERO)
        .open()
        .unwrap();
    calls_through(sink.clone(), 3).await;
    assert_eq!(sink.synced_records(), 3);
}

#[test]
fn writer_sink_writes_each_record_whole_and_at_once() {
    /// Records every `write` call.
    #[derive(Clone, Default)]
    struct Calls(Arc<Mutex<Vec<Vec<u8>>>>);
    impl io::Write for Calls {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let calls = Calls::default();
    let sink = WriterSink::new(calls.clone());
    sink.write(br#"{"a":1}"#).unwrap();
    assert_eq!(*calls.0.lock().unwrap(), vec![b"{\"a\":1}\n".to_vec()]);
}

#[tokio::test]
async fn the_chain_goes_on_across_two_sinks_on_the_same_file() {
    let dir = TempDir::new("restart");
    let path = dir.0.join("audit.jsonl");
    calls_through(JsonlFileSink::open(&path, 1 << 20, 3).unwrap(), 3).await;
    // A new process (a new sink) on the same file.
    calls_through(JsonlFileSink::open(&path, 1 << 20, 3).unwrap(), 3).await;
    let lines = file_lines(&path);
    assert_eq!(lines.len(), 6);
    assert_eq!(verify_chain_files([&path]).unwrap(), 6);
    // The first record of the second process links to the last of the first.
    let third: AuditRecord = serde_json::from_str(&lines[2]).unwrap();
    let fourth: AuditRecord = serde_json::from_str(&lines[3]).unwrap();
    assert_eq!(fourth.prev_hash, third.hash);
}

#[tokio::test]
async fn a_new_empty_file_links_to_the_newest_rotated_one() {
    let dir = TempDir::new("rotated-restart");
    let path = dir.0.join("audit.jsonl");
    calls_through(JsonlFileSink::open(&path, 1 << 20, 3).unwrap(), 2).await;
    // Rotated, then the process stopped before writing to the new file.
    let old = dir.0.join("audit.jsonl.1");
    std::fs::rename(&path, &old).unwrap();
    calls_through(JsonlFileSink::open(&path, 1 << 20, 3).unwrap(), 2).await;
    assert_eq!(verify_chain_files([&old, &path]).unwrap(), 4);
    assert!(verify_chain_files([&path, &old]).is_err());
}

#[tokio::test]
async fn a_torn_last_line_is_moved_aside_on_open_and_the_chain_goes_on() {
    let dir = TempDir::new("torn");
    let path = dir.0.join("audit.jsonl");
    calls_through(JsonlFileSink::open(&path, 1 << 20, 3).unwrap(), 2).await;
    let whole = std::fs::read(&path).unwrap();
    // A crash in the middle of the third record's write.
    let torn = br#"{"timestamp":"2026-12-06T12:00:00.000Z","request_id":"abc","cli"#;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(torn)
        .unwrap();
    let sink = JsonlFileSink::open(&path, 1 << 20, 3).unwrap();
    assert_eq!(
        std::fs::read(&path).unwrap(),
        whole,
        "cut back to the last whole line"
    );
    let aside = std::fs::read(dir.0.join("audit.jsonl.torn")).unwrap();
    assert_eq!(aside, [&torn[..], b"\n"].concat());
    calls_through(sink, 2).await;
    assert_eq!(verify_chain_files([&path]).unwrap(), 4);
}

#[tokio::test]
async fn a_file_without_a_single_whole_line_is_set_aside_entirely() {
    let dir = TempDir::new("torn-only");
    let path = dir.0.join("audit.jsonl");
    std::fs::write(&path, b"{\"timest").unwrap();
    calls_through(JsonlFileSink::open(&path, 1 << 20, 3).unwrap(), 1).await;
    assert_eq!(file_lines(&path).len(), 1);
    assert_eq!(verify_chain_files([&path]).unwrap(), 1);
    assert_eq!(
        std::fs::read(dir.0.join("audit.jsonl.torn")).unwrap(),
        b"{\"timest\n"
    );
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_full_device_fails_closed_and_counts_fail_open() {
    // /dev/full answers every write with ENOSPC.
    for policy in [SinkFailurePolicy::FailClosed, SinkFailurePolicy::FailOpen] {
        let sink = JsonlFileSink::open("/dev/full", 1 << 20, 1).unwrap();
        let audit = AuditLayer::builder()
            .hmac_key(KEY.to_vec())
            .sink(sink)
            .on_sink_failure(policy)
            .build()
            .unwrap();
        let handle = audit.handle();
        let svc = audit.layer(ok_service());
        let res = svc.clone().oneshot(chat("a")).await.unwrap();
        let body = res.into_body().collect().await;
        match policy {
            SinkFailurePolicy::FailClosed => {
                assert!(body.unwrap_err().is::<AuditUnavailable>());
                let err = svc.clone().oneshot(chat("b")).await.unwrap_err();
                assert!(err.is::<AuditUnavailable>(), "{err}");
                assert_eq!(handle.failed_writes(), 1);
            }
            _ => {
                body.unwrap();
                assert_eq!(handle.failed_writes(), 1);
            }
        }
    }
}

/// The sink before durability, for comparison: an 8 KiB `BufWriter` flushed only when full.
struct Buffered(Mutex<io::BufWriter<std::fs::File>>);

impl AuditSink for Buffered {
    fn write(&self, record: &[u8]) -> io::Result<()> {
        let mut w = self.0.lock().unwrap();
        w.write_all(record)?;
        w.write_all(b"\n")
    }
    fn flush(&self) -> io::Result<()> {
        self.0.lock().unwrap().flush()
    }
}

/// Records per second through the layer with each sink, in one run (figures in
/// BENCHMARKS.md):
///
/// ```text
/// cargo test --release -p tower-deepseek-redact --test audit -- --ignored --nocapture durability_cost
/// ```
#[ignore = "a measurement: run it by name in release mode"]
#[test]
fn durability_cost() {
    fn run(sink: Arc<dyn AuditSink>, calls: usize, tasks: usize) -> f64 {
        /// Forwards to a shared sink.
        struct Shared(Arc<dyn AuditSink>);
        impl AuditSink for Shared {
            fn write(&self, record: &[u8]) -> io::Result<()> {
                self.0.write(record)
            }
            fn flush(&self) -> io::Result<()> {
                self.0.flush()
            }
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let audit = AuditLayer::builder()
                .hmac_key(KEY.to_vec())
                .sink(Shared(sink))
                .hash_chain(true)
                .build()
                .unwrap();
            let svc = audit.layer(ok_service());
            let start = std::time::Instant::now();
            let mut handles = Vec::new();
            for t in 0..tasks {
                let svc = svc.clone();
                handles.push(tokio::spawn(async move {
                    for i in 0..calls / tasks {
                        let res = svc
                            .clone()
                            .oneshot(chat(&format!("t{t} m{i}")))
                            .await
                            .unwrap();
                        res.into_body().collect().await.unwrap();
                    }
                }));
            }
            for h in handles {
                h.await.unwrap();
            }
            calls as f64 / start.elapsed().as_secs_f64()
        })
    }
    let dir = TempDir::new("bench");
    let n = std::sync::atomic::AtomicUsize::new(0);
    let path = || {
        dir.0
            .join(format!("a{}.jsonl", n.fetch_add(1, Ordering::Relaxed)))
    };
    for tasks in [1, 8] {
        let buffered = run(
            Arc::new(Buffered(Mutex::new(io::BufWriter::new(
                std::fs::File::create(path()).unwrap(),
            )))),
            40_000,
            tasks,
        );
        let default = run(
            Arc::new(JsonlFileSink::open(path(), 1 << 30, 1).unwrap()),
            40_000,
            tasks,
        );
        let every = run(
            Arc::new(
                JsonlFileSink::builder(path())
                    .fsync_interval(std::time::Duration::ZERO)
                    .open()
                    .unwrap(),
            ),
            2_000,
            tasks,
        );
        println!(
            "{tasks} task(s): buffered (before) {buffered:.0} records/s; JsonlFileSink, fsync every 1 s (default) {default:.0} records/s; fsync every record {every:.0} records/s"
        );
    }
}
