//! The review layer: below redaction over loopback HTTP (sampling per tenant, masked records,
//! streams assembled, feedback and its tenant check, the built-in evaluator), and with
//! services the test controls (the first byte not delayed, a slow evaluator off the request
//! path, failures recorded).

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};
use tower::{Service, ServiceExt};
use tower_deepseek_core::body::BufferedBody;
use tower_deepseek_core::protocol::TenantId;
use tower_deepseek_redact::RedactLayer;
use tower_deepseek_redact::audit::WriterSink;
use tower_deepseek_redact::review::{
    Evaluation, EvaluationFuture, Evaluator, Feedback, FeedbackError, ReviewLayer,
    ReviewRequestBody, ReviewedCall, SamplingRule,
};
use tower_deepseek_testkit::MockServer;
use tower_layer::Layer;

const EMAIL: &str = "zhang.san@example.com";
const PHONE: &str = "13800138000";
const KEY: &str = "sk-4f8e2a9c1b3d5e7f9a0b2c4d6e8f0a1b";

fn lines(sink: &WriterSink<Vec<u8>>) -> Vec<Value> {
    let text = String::from_utf8(sink.with_inner(|v| v.clone())).unwrap();
    for raw in [EMAIL, PHONE, KEY] {
        assert!(!text.contains(raw), "the review holds {raw:?}:\n{text}");
    }
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn of_type<'a>(lines: &'a [Value], kind: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l["type"] == kind).collect()
}

fn chat(id: &str, tenant: &str, body: Value) -> Request<Full<Bytes>> {
    let mut req = Request::post("/chat/completions")
        .header("content-type", "application/json")
        .header("x-request-id", id)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    req.extensions_mut().insert(TenantId::new(tenant));
    req
}

#[tokio::test(flavor = "current_thread")]
async fn one_tenant_sampled_masked_streams_whole_feedback_checked() {
    let server = MockServer::start().await;
    let base = server.url();
    let client =
        Client::builder(TokioExecutor::new()).build_http::<ReviewRequestBody<BufferedBody>>();
    let client = tower::service_fn(move |mut req: Request<ReviewRequestBody<BufferedBody>>| {
        *req.uri_mut() = format!("{base}{}", req.uri().path()).parse().unwrap();
        client.request(req)
    });
    let sink = WriterSink::new(Vec::new());
    let review = ReviewLayer::builder()
        .rule(SamplingRule::new(1.0).tenant("team-a"))
        .rule(SamplingRule::new(0.0).tenant("team-b"))
        .sink(sink.clone())
        .build()
        .unwrap();
    let handle = review.handle();
    let mut svc = RedactLayer::new().layer(review.layer(client));
    let prompt = format!("mail {EMAIL}, phone {PHONE}, key {KEY}");
    let mut ids_a = BTreeSet::new();
    for tenant in ["team-a", "team-b"] {
        for (i, stream) in [false, true, false, true].into_iter().enumerate() {
            let id = format!("{tenant}-{i}");
            let body = json!({"model": "deepseek-chat", "stream": stream,
                "stream_options": {"include_usage": true},
                "messages": [{"role": "user", "content": prompt}]});
            let res = ServiceExt::<Request<Full<Bytes>>>::ready(&mut svc)
                .await
                .unwrap()
                .call(chat(&id, tenant, body))
                .await
                .unwrap();
            assert_eq!(res.status(), 200);
            let text = res.into_body().collect().await.unwrap().to_bytes();
            let text = String::from_utf8(text.to_vec()).unwrap();
            // The caller gets the values back; the review must not.
            assert!(text.contains(PHONE), "{text}");
            if tenant == "team-a" {
                ids_a.insert(id);
            }
        }
    }
    // JSON mode, whole and cut by max_tokens: the built-in evaluator scores 1 and 0.
    for (id, max) in [("team-a-json", 4096), ("team-a-cut", 2)] {
        let body = json!({"model": "deepseek-chat", "max_tokens": max,
            "response_format": {"type": "json_object"},
            "messages": [{"role": "user", "content": "list {EMAIL}"}]});
        let res = ServiceExt::<Request<Full<Bytes>>>::ready(&mut svc)
            .await
            .unwrap()
            .call(chat(id, "team-a", body))
            .await
            .unwrap();
        res.into_body().collect().await.unwrap();
        ids_a.insert(id.to_owned());
    }

    // Feedback: unknown call, another tenant's call, malformed; then accepted (for a call
    // that was not sampled, too), the comment redacted.
    let a = TenantId::new("team-a");
    let b = TenantId::new("team-b");
    assert_eq!(
        handle.feedback(Some(&a), &Feedback::new("nope", 1.0)),
        Err(FeedbackError::UnknownCall)
    );
    assert_eq!(
        handle.feedback(Some(&b), &Feedback::new("team-a-0", 1.0)),
        Err(FeedbackError::OtherTenant)
    );
    assert!(matches!(
        handle.feedback(Some(&a), &Feedback::new("team-a-0", 7.0)),
        Err(FeedbackError::Invalid(_))
    ));
    let ok = handle
        .feedback(
            Some(&a),
            &Feedback::new("team-a-1", 4.0)
                .label("helpful")
                .comment(format!("call me on {PHONE}")),
        )
        .unwrap();
    assert_eq!(ok.score, 0.75);
    handle
        .feedback(Some(&b), &Feedback::new("team-b-0", 0.2))
        .unwrap();
    handle.flush().await.unwrap();

    let all = lines(&sink);
    let calls = of_type(&all, "call");
    let seen: BTreeSet<String> = calls
        .iter()
        .map(|c| c["request_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(seen, ids_a, "exactly team-a's calls are sampled");
    for c in &calls {
        assert_eq!(c["tenant"], "team-a");
        assert_eq!(c["outcome"], "complete", "{c}");
        assert_eq!(c["model"], "deepseek-chat");
        let asked = c["request"]["messages"][0]["content"].as_str().unwrap();
        assert!(
            asked.contains("<EMAIL_1>") || asked.contains("list"),
            "{asked}"
        );
        let answer = &c["answer"]["choices"][0];
        assert!(
            answer["content"].as_str().unwrap().contains("Echo")
                || answer["content"].as_str().unwrap().contains("echo"),
            "{c}"
        );
        assert!(
            c["answer"]["usage"]["total_tokens"].as_u64().unwrap() > 0,
            "{c}"
        );
    }
    // Streams are whole: the same text as the JSON answer to the same prompt.
    let by_id = |id: &str| calls.iter().find(|c| c["request_id"] == id).unwrap();
    assert_eq!(
        by_id("team-a-0")["answer"]["choices"][0]["content"],
        by_id("team-a-1")["answer"]["choices"][0]["content"]
    );
    assert_eq!(
        by_id("team-a-1")["answer"]["choices"][0]["finish_reason"],
        "stop"
    );
    assert!(
        by_id("team-a-1")["answer"]["choices"][0]["content"]
            .as_str()
            .unwrap()
            .contains("<CN_MOBILE_1>")
    );

    let scores = of_type(&all, "score");
    let human: Vec<_> = scores.iter().filter(|s| s["source"] == "human").collect();
    assert_eq!(human.len(), 2);
    assert_eq!(human[0]["request_id"], "team-a-1");
    assert_eq!(human[0]["score"], 0.75);
    assert_eq!(human[0]["model"], "deepseek-chat");
    assert!(human[0]["comment"].as_str().unwrap().contains("CN_MOBILE"));
    assert_eq!(human[1]["tenant"], "team-b");
    let eval = |id: &str| {
        scores
            .iter()
            .find(|s| s["request_id"] == id && s["source"] == "evaluator")
            .map(|s| s["score"].as_f64().unwrap())
    };
    assert_eq!(eval("team-a-json"), Some(1.0));
    assert_eq!(eval("team-a-cut"), Some(0.0));
    assert_eq!(eval("team-a-0"), None, "plain answers are not scored");
    server.shutdown().await;
}

/// A body fed by the test.
struct Fed(mpsc::Receiver<Bytes>);

impl Body for Fed {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|c| c.map(|c| Ok(Frame::data(c))))
    }
}

fn sse(content: &str) -> Bytes {
    Bytes::from(format!(
        "data: {}\n\n",
        json!({"choices": [{"index": 0, "delta": {"content": content}}]})
    ))
}

#[tokio::test(flavor = "current_thread")]
async fn first_byte_not_delayed_and_the_stream_is_recorded_at_its_end() {
    let sink = WriterSink::new(Vec::new());
    let review = ReviewLayer::builder()
        .rule(SamplingRule::new(1.0))
        .sink(sink.clone())
        .build()
        .unwrap();
    let handle = review.handle();
    let (tx, rx) = mpsc::channel(8);
    let rx = Arc::new(std::sync::Mutex::new(Some(rx)));
    let svc = review.layer(tower::service_fn(
        move |_req: Request<ReviewRequestBody<Full<Bytes>>>| {
            let rx = rx.lock().unwrap().take().unwrap();
            async move {
                Ok::<_, Infallible>(
                    Response::builder()
                        .header("content-type", "text/event-stream")
                        .body(Fed(rx))
                        .unwrap(),
                )
            }
        },
    ));
    tx.send(sse("Hello")).await.unwrap();
    let req = chat(
        "s-1",
        "t",
        json!({"model": "deepseek-chat", "stream": true, "messages": []}),
    );
    let res = svc.oneshot(req).await.unwrap();
    let mut body = res.into_body();
    // The first event reaches the caller while the upstream still holds the rest.
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, sse("Hello"));
    handle.flush().await.unwrap();
    assert!(lines(&sink).is_empty(), "no record before the end");
    tx.send(sse(" world")).await.unwrap();
    tx.send(Bytes::from_static(b"data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n")).await.unwrap();
    drop(tx);
    while body.frame().await.is_some() {}
    handle.flush().await.unwrap();
    let all = lines(&sink);
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["outcome"], "complete");
    assert_eq!(all[0]["answer"]["choices"][0]["content"], "Hello world");
}

#[tokio::test(flavor = "current_thread")]
async fn cut_streams_failures_and_cancelled_calls_are_recorded_as_seen() {
    let sink = WriterSink::new(Vec::new());
    let review = ReviewLayer::builder()
        .rule(SamplingRule::new(1.0))
        .sink(sink.clone())
        .build()
        .unwrap();
    let handle = review.handle();
    let svc = review.layer(tower::service_fn(
        |req: Request<ReviewRequestBody<Full<Bytes>>>| async move {
            let id = req.headers()["x-request-id"].to_str().unwrap().to_owned();
            match id.as_str() {
                "fail" => Err::<Response<Full<Bytes>>, _>(std::io::Error::other("refused")),
                "cut" => Ok(Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(Full::new(sse("part")))
                    .unwrap()),
                "html" => Ok(Response::new(Full::new(Bytes::from_static(
                    b"<html>502</html>",
                )))),
                _ => Ok(Response::builder()
                    .status(429)
                    .body(Full::new(Bytes::from_static(
                        br#"{"error":{"message":"slow down"}}"#,
                    )))
                    .unwrap()),
            }
        },
    ));
    for id in ["fail", "cut", "html", "limited", "dropped"] {
        let res = svc
            .clone()
            .oneshot(chat(id, "t", json!({"model": "m", "messages": []})))
            .await;
        if let Ok(res) = res
            && id != "dropped"
        {
            res.into_body().collect().await.unwrap();
        }
    }
    handle.flush().await.unwrap();
    let all = lines(&sink);
    let outcome = |id: &str| {
        all.iter()
            .find(|l| l["request_id"] == id)
            .map(|l| l["outcome"].as_str().unwrap().to_owned())
    };
    assert_eq!(outcome("fail").as_deref(), Some("failed"));
    assert_eq!(outcome("cut").as_deref(), Some("incomplete"));
    assert_eq!(outcome("html").as_deref(), Some("not_json"));
    assert_eq!(outcome("limited").as_deref(), Some("error"));
    assert_eq!(outcome("dropped").as_deref(), Some("cancelled"));
    let html = all.iter().find(|l| l["request_id"] == "html").unwrap();
    assert_eq!(html["answer_text"], "<html>502</html>");
}

/// Waits for permits the test hands out, then scores 0.5.
struct Gated(Arc<Semaphore>);

impl Evaluator for Gated {
    fn name(&self) -> &str {
        "gated"
    }
    fn evaluate<'a>(&'a self, _call: &'a ReviewedCall) -> EvaluationFuture<'a> {
        Box::pin(async move {
            self.0.acquire().await.unwrap().forget();
            Some(Evaluation::new(0.5).label("slow"))
        })
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn evaluations_run_off_the_request_path() {
    let gate = Arc::new(Semaphore::new(0));
    let sink = WriterSink::new(Vec::new());
    let review = ReviewLayer::builder()
        .rule(SamplingRule::new(1.0))
        .evaluator(Gated(gate.clone()))
        .sink(sink.clone())
        .build()
        .unwrap();
    let handle = review.handle();
    let svc = review.layer(tower::service_fn(|req: Request<ReviewRequestBody<Full<Bytes>>>| async move {
        let broken = req.headers()["x-request-id"] == "broken";
        // Read the request, as a client does (the layer reads it in passing).
        req.into_body().collect().await.unwrap();
        let content = if broken { "{\"a\": 1" } else { "{\"a\": 1}" };
        let body = json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]});
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body.to_string()))))
    }));
    for id in ["broken", "valid"] {
        let req = chat(
            id,
            "t",
            json!({"model": "deepseek-chat", "response_format": {"type": "json_object"}, "messages": []}),
        );
        // The gate is closed: a caller that waited for the evaluator would never finish, and
        // the paused clock would run this timeout out at once.
        let answer = tokio::time::timeout(Duration::from_secs(1), async {
            let res = svc.clone().oneshot(req).await.unwrap();
            res.into_body().collect().await.unwrap().to_bytes()
        })
        .await
        .expect("the caller does not wait for the evaluator");
        assert!(!answer.is_empty());
    }
    // Nothing was scored by the slow evaluator yet.
    let scored = |sink: &WriterSink<Vec<u8>>| {
        lines(sink)
            .into_iter()
            .filter(|l| l["evaluator"] == "gated")
            .count()
    };
    assert_eq!(scored(&sink), 0);
    gate.add_permits(2);
    handle.flush().await.unwrap();
    let all = lines(&sink);
    assert_eq!(scored(&sink), 2);
    let builtin = |id: &str| {
        all.iter()
            .find(|l| l["request_id"] == id && l["evaluator"] == "json_mode")
            .map(|l| {
                (
                    l["score"].as_f64().unwrap(),
                    l["label"].as_str().unwrap().to_owned(),
                )
            })
    };
    assert_eq!(builtin("broken"), Some((0.0, "invalid_json".to_owned())));
    assert_eq!(builtin("valid"), Some((1.0, "valid_json".to_owned())));
}

#[tokio::test(flavor = "current_thread")]
async fn a_reused_request_id_stays_with_its_first_tenant() {
    let review = ReviewLayer::builder()
        .sink(WriterSink::new(Vec::new()))
        .build()
        .unwrap();
    let handle = review.handle();
    let svc = review.layer(tower::service_fn(
        |_req: Request<ReviewRequestBody<Full<Bytes>>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
        },
    ));
    for tenant in ["owner", "intruder"] {
        let res = svc
            .clone()
            .oneshot(chat(
                "same-id",
                tenant,
                json!({"model": "m", "messages": []}),
            ))
            .await
            .unwrap();
        res.into_body().collect().await.unwrap();
    }
    assert_eq!(
        handle.recent_call("same-id"),
        Some(Some(TenantId::new("owner")))
    );
    assert_eq!(
        handle.feedback(
            Some(&TenantId::new("intruder")),
            &Feedback::new("same-id", 1.0)
        ),
        Err(FeedbackError::OtherTenant)
    );
}

/// A layer over a service answering `{}`, remembering `capacity` calls for `ttl`.
fn remembering(
    capacity: u64,
    ttl: Duration,
) -> (
    tower_deepseek_redact::review::ReviewHandle,
    impl Service<
        Request<Full<Bytes>>,
        Response = Response<impl Body<Data = Bytes, Error = impl std::fmt::Debug>>,
        Error = impl std::fmt::Debug,
    > + Clone,
) {
    let review = ReviewLayer::builder()
        .recent_calls(capacity, ttl)
        .sink(WriterSink::new(Vec::new()))
        .build()
        .unwrap();
    let handle = review.handle();
    let svc = review.layer(tower::service_fn(
        |_req: Request<ReviewRequestBody<Full<Bytes>>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
        },
    ));
    (handle, svc)
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn feedback_is_accepted_within_the_window_of_its_call_only() {
    let minute = Duration::from_secs(60);
    let (handle, svc) = remembering(100, minute);
    let tenant = TenantId::new("t");
    let score = |id: &str| handle.feedback(Some(&tenant), &Feedback::new(id, 1.0));
    for (id, wait) in [("early", minute / 2), ("late", minute / 2)] {
        let res = svc
            .clone()
            .oneshot(chat(id, "t", json!({"model": "m", "messages": []})))
            .await
            .unwrap();
        res.into_body().collect().await.unwrap();
        tokio::time::advance(wait).await;
    }
    assert_eq!(score("early"), Err(FeedbackError::UnknownCall));
    assert!(score("late").is_ok());
    tokio::time::advance(minute / 2 - Duration::from_millis(1)).await;
    assert!(score("late").is_ok());
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(score("late"), Err(FeedbackError::UnknownCall));
}

#[tokio::test(flavor = "current_thread")]
async fn a_full_index_forgets_the_oldest_calls_not_the_newest() {
    let (handle, svc) = remembering(8, Duration::from_secs(3600));
    for i in 0..100 {
        let res = svc
            .clone()
            .oneshot(chat(&format!("id-{i}"), "t", json!({"model": "m"})))
            .await
            .unwrap();
        res.into_body().collect().await.unwrap();
    }
    let known: Vec<bool> = (0..100)
        .map(|i| handle.recent_call(&format!("id-{i}")).is_some())
        .collect();
    assert!(known.iter().filter(|k| **k).count() <= 8);
    // The newest half of the capacity at least.
    assert!(known[96..].iter().all(|k| *k), "{known:?}");
    assert!(!known[0]);
}
