//! Traces across instances (feature `otel`): a loopback OTLP/HTTP receiver gets one trace per
//! call, with the gateway's spans, the library layers' spans and the GenAI attributes; a client's `traceparent` is
//! continued and carried upstream; no prompt, answer, PII or secret is in any span.
#![cfg(feature = "otel")]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use serde_json::json;
use tower_deepseek_testkit::{Fault, MockServer};

/// An OTLP/HTTP receiver: every exported span, with its resource's attributes.
#[derive(Clone, Default)]
struct Received {
    spans: Arc<Mutex<Vec<Span>>>,
    resources: Arc<Mutex<Vec<KeyValue>>>,
}

async fn traces(State(r): State<Received>, body: Bytes) -> &'static [u8] {
    let req = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf request");
    for rs in req.resource_spans {
        if let Some(res) = rs.resource {
            r.resources.lock().unwrap().extend(res.attributes);
        }
        for ss in rs.scope_spans {
            r.spans.lock().unwrap().extend(ss.spans);
        }
    }
    // An empty ExportTraceServiceResponse.
    b""
}

async fn receiver() -> (SocketAddr, Received) {
    let received = Received::default();
    let app = Router::new()
        .route("/v1/traces", post(traces))
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, received)
}

fn strings(v: &AnyValue, out: &mut Vec<String>) {
    match &v.value {
        Some(Any::StringValue(s)) => out.push(s.clone()),
        Some(Any::ArrayValue(a)) => a.values.iter().for_each(|v| strings(v, out)),
        Some(Any::KvlistValue(kv)) => kv.values.iter().for_each(|kv| {
            out.push(kv.key.clone());
            if let Some(v) = &kv.value {
                strings(v, out);
            }
        }),
        Some(Any::BytesValue(b)) => out.push(String::from_utf8_lossy(b).into_owned()),
        Some(other) => out.push(format!("{other:?}")),
        None => {}
    }
}

fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a Any> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn int(span: &Span, key: &str) -> Option<i64> {
    match attr(span, key) {
        Some(Any::IntValue(n)) => Some(*n),
        _ => None,
    }
}

fn text<'a>(span: &'a Span, key: &str) -> Option<&'a str> {
    match attr(span, key) {
        Some(Any::StringValue(s)) => Some(s),
        _ => None,
    }
}

fn children<'a>(spans: &'a [Span], parent: &Span) -> Vec<&'a Span> {
    spans
        .iter()
        .filter(|s| s.trace_id == parent.trace_id && s.parent_span_id == parent.span_id)
        .collect()
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";
const EMAIL: &str = "jane.doe@example.com";
const PHONE: &str = "+1-415-555-0100";
const PROMPT: &str = "Summarise the contract for Jane Doe";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_per_call_with_the_stack_spans_genai_attributes_and_no_secret() {
    let (otlp, received) = receiver().await;
    let upstream = MockServer::builder().api_key(UPSTREAM_KEY).start().await;
    let config = config_with_keys(&format!(
        "[otel]\nendpoint = \"http://{otlp}\"\nservice_name = \"gw-test\"\n"
    ));
    let gw = start(&upstream.url(), config, None).await;
    let client = client();
    let prompt = format!("{PROMPT}, mail {EMAIL}, phone {PHONE}");
    let body = json!({
        "model": "deepseek-chat",
        "temperature": 0,
        "messages": [{"role": "user", "content": prompt}],
    });

    // 1: the client's trace; the first attempt gets a 502, the retry answers.
    upstream.enqueue(Fault::status(502));
    let mut req = chat_request(
        &gw.url("/v1/chat/completions"),
        Some(CLIENT_KEY),
        body.clone(),
    );
    req.headers_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-{PARENT_ID}-01").parse().unwrap(),
    );
    let res = send(&client, req).await;
    assert_eq!(res.status(), 200);
    let answer = body_string(res).await;
    assert!(answer.contains("Echo:"), "{answer}");

    // 2: the same request again: a cache hit, nothing upstream.
    let res = send(
        &client,
        chat_request(
            &gw.url("/v1/chat/completions"),
            Some(CLIENT_KEY),
            body.clone(),
        ),
    )
    .await;
    assert_eq!(res.headers()["x-cache"], "hit-l1");
    body_string(res).await;

    // 3: a stream, its usage in the last chunk.
    let stream = json!({
        "model": "deepseek-chat",
        "stream": true,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": format!("{prompt} (stream)")}],
    });
    let res = send(
        &client,
        chat_request(&gw.url("/v1/chat/completions"), Some(CLIENT_KEY), stream),
    )
    .await;
    assert_eq!(res.status(), 200);
    body_string(res).await;

    // Shutdown flushes the spans: nothing is waited for after `stop`.
    gw.stop().await.unwrap();
    let spans = received.spans.lock().unwrap().clone();
    let resources = received.resources.lock().unwrap().clone();

    // One trace per call.
    let mut by_trace: HashMap<Vec<u8>, Vec<Span>> = HashMap::new();
    for s in &spans {
        by_trace
            .entry(s.trace_id.clone())
            .or_default()
            .push(s.clone());
    }
    assert_eq!(by_trace.len(), 3, "{spans:#?}");
    let service = resources
        .iter()
        .find(|kv| kv.key == "service.name")
        .and_then(|kv| kv.value.as_ref());
    assert!(
        matches!(service.and_then(|v| v.value.as_ref()), Some(Any::StringValue(s)) if s == "gw-test")
    );

    // Call 1 continues the client's trace.
    let first = &by_trace[&hex::decode(TRACE_ID).unwrap()];
    let server = first
        .iter()
        .find(|s| s.kind == SpanKind::Server as i32)
        .expect("a server span");
    assert_eq!(server.parent_span_id, hex::decode(PARENT_ID).unwrap());
    assert_eq!(server.name, "POST /v1/chat/completions");
    assert_eq!(int(server, "http.response.status_code"), Some(200));
    assert_eq!(text(server, "deepseek.outcome"), Some("ok"));
    let kids = children(first, server);
    let names: Vec<&str> = kids.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"gateway.handler"), "{names:?}");
    let chat = kids
        .iter()
        .find(|s| s.name == "chat deepseek-chat")
        .expect("the stack-call span");
    assert_eq!(chat.kind, SpanKind::Client as i32);
    assert_eq!(text(chat, "gen_ai.system"), Some("deepseek"));
    assert_eq!(text(chat, "gen_ai.operation.name"), Some("chat"));
    assert_eq!(text(chat, "gen_ai.request.model"), Some("deepseek-chat"));
    assert_eq!(text(chat, "gen_ai.response.model"), Some("deepseek-chat"));
    assert!(int(chat, "gen_ai.usage.input_tokens").unwrap() > 0);
    assert!(int(chat, "gen_ai.usage.output_tokens").unwrap() > 0);
    assert!(int(chat, "gen_ai.usage.cache_read.input_tokens").is_some());
    assert!(int(chat, "deepseek.usage.prompt_cache_miss_tokens").is_some());
    match attr(chat, "gen_ai.response.finish_reasons") {
        Some(Any::ArrayValue(a)) => {
            assert!(matches!(&a.values[0].value, Some(Any::StringValue(s)) if s == "stop"))
        }
        other => panic!("finish reasons: {other:?}"),
    }
    assert_eq!(int(chat, "deepseek.retry.attempts"), Some(2));
    assert_eq!(text(chat, "deepseek.breaker.state"), Some("closed"));
    assert_eq!(text(chat, "deepseek.cache.status"), Some("miss"));
    assert_eq!(int(chat, "http.response.status_code"), Some(200));

    // The layers' spans, nested as the layers are, under the stack call: redact, cache,
    // rate limit, retry, then per attempt the breaker, the credential and the timeouts.
    let only = |parent: &Span, name: &str| -> Span {
        let kids = children(first, parent);
        assert_eq!(kids.len(), 1, "{name}: {kids:#?}");
        assert_eq!(kids[0].name, name, "{kids:#?}");
        kids[0].clone()
    };
    let redact = only(chat, "deepseek.redact");
    assert_eq!(text(&redact, "deepseek.layer"), Some("redact"));
    assert_eq!(text(&redact, "deepseek.outcome"), Some("ok"));
    let cache = only(&redact, "deepseek.cache");
    assert_eq!(text(&cache, "deepseek.cache.status"), Some("miss"));
    let limit = only(&cache, "deepseek.rate_limit");
    let retry = only(&limit, "deepseek.retry");
    assert_eq!(
        int(&retry, "deepseek.retry.attempts"),
        Some(2),
        "{retry:#?}"
    );
    assert_eq!(text(&retry, "deepseek.outcome"), Some("ok"));
    let mut breakers = children(first, &retry);
    breakers.sort_by_key(|s| s.start_time_unix_nano);
    assert_eq!(
        breakers.len(),
        2,
        "one breaker span per attempt: {breakers:#?}"
    );
    let mut attempt_spans = Vec::new();
    for (b, outcome) in breakers.iter().zip(["server_error", "ok"]) {
        assert_eq!(b.name, "deepseek.circuit_breaker");
        assert_eq!(text(b, "deepseek.breaker.state"), Some("closed"));
        assert_eq!(text(b, "deepseek.outcome"), Some(outcome));
        let auth = only(b, "deepseek.auth");
        let timeout = only(&auth, "deepseek.timeout");
        assert_eq!(text(&timeout, "deepseek.outcome"), Some(outcome));
        attempt_spans.push(only(&timeout, "POST"));
    }
    for s in [&redact, &cache, &limit, &retry] {
        assert!(s.start_time_unix_nano >= chat.start_time_unix_nano);
        assert!(s.end_time_unix_nano <= chat.end_time_unix_nano);
    }

    // One span per upstream attempt, under its timeout span; each went up with its traceparent.
    let mut attempts: Vec<&Span> = attempt_spans.iter().collect();
    attempts.sort_by_key(|s| int(s, "deepseek.attempt"));
    assert_eq!(attempts.len(), 2, "{attempts:#?}");
    assert_eq!(int(attempts[0], "http.response.status_code"), Some(502));
    assert_eq!(int(attempts[1], "http.response.status_code"), Some(200));
    let sent = upstream.requests_to("/chat/completions");
    assert_eq!(sent.len(), 3, "two attempts of call 1, one of call 3");
    for (i, attempt) in attempts.iter().enumerate() {
        let tp = sent[i].headers["traceparent"].to_str().unwrap();
        assert_eq!(
            tp,
            format!("00-{TRACE_ID}-{}-01", hex::encode(&attempt.span_id)),
            "attempt {i} carries its own span as the parent"
        );
    }

    // Call 2: a cache hit, no attempt.
    let hit = by_trace
        .values()
        .find(|t| {
            t.iter()
                .any(|s| text(s, "deepseek.cache.status") == Some("hit-l1"))
        })
        .expect("the cached call's trace");
    assert!(hit.iter().all(|s| s.name != "POST"), "{hit:#?}");
    let names: Vec<&str> = hit.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"deepseek.redact"), "{names:?}");
    assert!(names.contains(&"deepseek.cache"), "{names:?}");
    assert!(
        !names.contains(&"deepseek.rate_limit"),
        "a hit goes no further: {names:?}"
    );

    // Call 3: the stream's usage is read too; its upstream request carries its trace id.
    let client_trace = hex::decode(TRACE_ID).unwrap();
    let streamed = by_trace
        .iter()
        .find(|(id, t)| **id != client_trace && t.iter().any(|s| s.name == "POST"))
        .map(|(_, t)| t)
        .expect("the stream's trace");
    let chat = streamed
        .iter()
        .find(|s| s.name == "chat deepseek-chat")
        .unwrap();
    assert!(int(chat, "gen_ai.usage.output_tokens").unwrap() > 0);
    let tp = sent[2].headers["traceparent"].to_str().unwrap();
    assert!(tp.contains(&hex::encode(&chat.trace_id)), "{tp}");

    // Nothing of the prompt, the answer, the PII or the keys, anywhere.
    let mut values = Vec::new();
    for s in &spans {
        values.push(s.name.clone());
        for kv in s
            .attributes
            .iter()
            .chain(s.events.iter().flat_map(|e| &e.attributes))
        {
            values.push(kv.key.clone());
            if let Some(v) = &kv.value {
                strings(v, &mut values);
            }
        }
        if let Some(st) = &s.status {
            values.push(st.message.clone());
        }
    }
    for kv in &resources {
        if let Some(v) = &kv.value {
            strings(v, &mut values);
        }
    }
    assert!(values.len() > 50, "{values:?}");
    for needle in [
        PROMPT,
        "Jane",
        EMAIL,
        "example.com",
        PHONE,
        "415-555",
        "Echo",
        UPSTREAM_KEY,
        CLIENT_KEY,
    ] {
        let found: Vec<&String> = values.iter().filter(|v| v.contains(needle)).collect();
        assert!(found.is_empty(), "{needle:?} exported in {found:?}");
    }
    upstream.shutdown().await;
}

#[tokio::test]
async fn refused_calls_are_traced_and_a_bad_table_is_refused() {
    let (otlp, received) = receiver().await;
    let upstream = MockServer::builder().api_key(UPSTREAM_KEY).start().await;
    let config = config_with_keys(&format!("[otel]\nendpoint = \"http://{otlp}/v1/traces\"\n"));
    let gw = start(&upstream.url(), config, None).await;
    let res = send(
        &client(),
        chat_request(
            &gw.url("/v1/chat/completions"),
            Some("sk-wrong-key"),
            json!({"model": "deepseek-chat", "messages": []}),
        ),
    )
    .await;
    assert_eq!(res.status(), 401);
    body_string(res).await;
    gw.stop().await.unwrap();
    let spans = received.spans.lock().unwrap().clone();
    let server = spans
        .iter()
        .find(|s| s.kind == SpanKind::Server as i32)
        .expect("the refused call's server span");
    assert_eq!(int(server, "http.response.status_code"), Some(401));
    let handler = spans.iter().find(|s| s.name == "gateway.handler").unwrap();
    assert_eq!(int(handler, "http.response.status_code"), Some(401));
    assert!(spans.iter().all(|s| !s.name.starts_with("chat")));
    assert_eq!(upstream.chat_count(), 0);
    upstream.shutdown().await;

    // A ratio out of range is a start error naming the table.
    let config = config_with_keys("[otel]\nsampling_ratio = 2.0\n");
    let err =
        tower_deepseek_gateway::Gateway::new(tower_deepseek_gateway::Options::new().config(config))
            .unwrap_err();
    assert!(err.to_string().contains("[otel]"), "{err}");
    assert!(err.to_string().contains("sampling_ratio"), "{err}");
}

#[tokio::test]
async fn the_sampling_ratio_applies_to_traces_started_here_and_a_client_decides_for_its_own() {
    let (otlp, received) = receiver().await;
    let upstream = MockServer::builder().api_key(UPSTREAM_KEY).start().await;
    let config = config_with_keys(&format!(
        "[otel]\nendpoint = \"http://{otlp}\"\nsampling_ratio = 0.0\n"
    ));
    let gw = start(&upstream.url(), config, None).await;
    let client = client();
    let body = |text: &str| json!({"model": "deepseek-chat", "messages": [{"role": "user", "content": text}]});
    // Started here, ratio 0: not sampled, but the trace still goes upstream (flag 00).
    let res = send(
        &client,
        chat_request(
            &gw.url("/v1/chat/completions"),
            Some(CLIENT_KEY),
            body("one"),
        ),
    )
    .await;
    body_string(res).await;
    // A client's sampled trace is exported whatever the ratio.
    let mut req = chat_request(
        &gw.url("/v1/chat/completions"),
        Some(CLIENT_KEY),
        body("two"),
    );
    req.headers_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-{PARENT_ID}-01").parse().unwrap(),
    );
    body_string(send(&client, req).await).await;
    gw.stop().await.unwrap();

    let spans = received.spans.lock().unwrap().clone();
    assert!(!spans.is_empty());
    assert!(
        spans
            .iter()
            .all(|s| s.trace_id == hex::decode(TRACE_ID).unwrap()),
        "only the client's trace is exported: {spans:#?}"
    );
    let sent = upstream.requests_to("/chat/completions");
    assert_eq!(sent.len(), 2);
    let unsampled = sent[0].headers["traceparent"].to_str().unwrap();
    assert!(unsampled.ends_with("-00"), "{unsampled}");
    assert!(!unsampled.contains(TRACE_ID));
    let sampled = sent[1].headers["traceparent"].to_str().unwrap();
    assert!(sampled.starts_with(&format!("00-{TRACE_ID}-")), "{sampled}");
    assert!(sampled.ends_with("-01"), "{sampled}");
    upstream.shutdown().await;
}

/// The stack calls run under the gateway's own subscriber (for the layers' spans), which hands
/// every event on to the subscriber that was the default when the gateway was built: the
/// program's log still gets the layers' events, and no event becomes a span attribute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_layers_events_still_reach_the_programs_subscriber() {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<String>>>);
    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            _ctx: tracing_subscriber::layer::Context<'_, S>,
        ) {
            self.0
                .lock()
                .unwrap()
                .push(event.metadata().target().to_owned());
        }
    }

    let capture = Capture::default();
    let program = tracing_subscriber::registry().with(
        capture
            .clone()
            .with_filter(tracing_subscriber::filter::LevelFilter::INFO),
    );
    // The program's subscriber: this thread's default while the gateway is built, which is
    // when the gateway takes it.
    let _default = tracing::subscriber::set_default(program);
    let (otlp, received) = receiver().await;
    let upstream = MockServer::builder().api_key(UPSTREAM_KEY).start().await;
    let config = config_with_keys(&format!("[otel]\nendpoint = \"http://{otlp}\"\n"));
    let gw = start(&upstream.url(), config, None).await;
    // A 502, then a retry: the retry layer logs "retrying request" inside the stack call.
    upstream.enqueue(Fault::status(502));
    let res = send(
        &client(),
        chat_request(
            &gw.url("/v1/chat/completions"),
            Some(CLIENT_KEY),
            json!({"model": "deepseek-chat", "messages": [{"role": "user", "content": "hi"}]}),
        ),
    )
    .await;
    assert_eq!(res.status(), 200);
    body_string(res).await;
    gw.stop().await.unwrap();
    let targets = capture.0.lock().unwrap().clone();
    assert!(
        targets.iter().any(|t| t == "tower_deepseek_retry"),
        "{targets:?}"
    );
    let spans = received.spans.lock().unwrap().clone();
    assert!(spans.iter().any(|s| s.name == "deepseek.retry"));
    assert!(
        spans.iter().all(|s| s.events.is_empty()),
        "no event is exported: {spans:#?}"
    );
    upstream.shutdown().await;
}
