//! Unit tests of the classifier (head, end of body, shared verdict).

use std::error::Error as StdError;
use std::fmt;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};

use crate::chat::FinishReason;
use crate::error::{
    BodyTooLarge, BreakerOpen, RequestNotSent, RequestRefused, TimeoutPhase, UpstreamTimeout,
};

use super::end::*;
use super::*;

fn head(status: u16, headers: &[(&str, &str)]) -> ClassifiedResponse {
    let mut h = HeaderMap::new();
    for (k, v) in headers {
        h.insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    Classifier::new().classify_head(StatusCode::from_u16(status).unwrap(), &h)
}

fn ready(status: u16, headers: &[(&str, &str)]) -> Result<(), FailureClass> {
    match head(status, headers) {
        ClassifiedResponse::Ready(r) => r,
        ClassifiedResponse::RequiresEos(_) => panic!("{status} should be ready"),
    }
}

fn body(content_type: &str, chunks: &[&str]) -> Result<(), FailureClass> {
    let ClassifiedResponse::RequiresEos(mut eos) = head(200, &[("content-type", content_type)])
    else {
        panic!("2xx needs eos")
    };
    for c in chunks {
        eos.on_data(&Bytes::copy_from_slice(c.as_bytes()));
    }
    eos.finish()
}

const SSE: &str = "text/event-stream";
const JSON: &str = "application/json";
const DONE_OK: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";

#[test]
fn a_cut_or_garbled_event_makes_the_stream_incomplete_even_with_done() {
    let first = "data: {\"model\":\"m\",\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n";
    for bad in [
        // cut inside an object (the testkit's malformed event)
        "data: {\"id\": \"malformed\", \"choices\": [{\"delta\": {\"content\": oops}\n\n",
        // cut inside a string
        "data: {\"choices\":[{\"delta\":{\"content\":\"hel\n\n",
        // not an object at all
        "data: oops\n\n",
        // trailing garbage after the object
        "data: {\"choices\":[]} x\n\n",
    ] {
        assert_eq!(
            body(SSE, &[first, bad, DONE_OK]),
            Err(FailureClass::Incomplete),
            "{bad}"
        );
    }
    // Braces and quotes inside strings, escapes, nesting: whole events.
    let tricky = "data: {\"choices\":[{\"delta\":{\"content\":\"a } ] \\\" { [ b\"}}]}\n\n";
    assert_eq!(body(SSE, &[first, tricky, DONE_OK]), Ok(()));
}

#[test]
fn balanced_object_tells_whole_events_from_cut_ones() {
    assert!(balanced_object(br#"{"a":[1,{"b":"}"}]}"#));
    assert!(balanced_object(b"{\"a\":\"\\\\\"}  \n"));
    assert!(!balanced_object(br#"{"a":[1,{"b":"}"}]"#));
    assert!(!balanced_object(br#"{"a":"\"}"#));
    assert!(!balanced_object(br#"{"a":1}}"#));
    assert!(!balanced_object(br#"{"a":1} {"#));
}

// --- one test per row of the classifier table (ARCHITECTURE.md, module docs) ---

#[test]
fn row_2xx_complete_is_success() {
    assert_eq!(
        body(JSON, &[r#"{"choices":[{"finish_reason":"stop"}]}"#]),
        Ok(())
    );
    assert_eq!(body(SSE, &[DONE_OK]), Ok(()));
}

#[test]
fn row_429_rate_limited_with_and_without_retry_after() {
    assert_eq!(
        ready(429, &[("retry-after", "7")]),
        Err(FailureClass::RateLimited {
            retry_after: Some(Duration::from_secs(7))
        })
    );
    let c = ready(429, &[]).unwrap_err();
    assert_eq!(c, FailureClass::RateLimited { retry_after: None });
    assert_eq!(c.default_verdict(), Verdict::Ignored);
    assert!(c.is_transient());
}

#[test]
fn row_502_bad_gateway() {
    let c = ready(502, &[]).unwrap_err();
    assert_eq!(c, FailureClass::BadGateway);
    assert_eq!(c.default_verdict(), Verdict::Failure);
}

#[test]
fn row_503_overloaded_with_retry_after() {
    assert_eq!(
        ready(503, &[("retry-after", "12")]),
        Err(FailureClass::Overloaded {
            retry_after: Some(Duration::from_secs(12))
        })
    );
    assert_eq!(
        ready(503, &[]).unwrap_err().default_verdict(),
        Verdict::Failure
    );
}

#[test]
fn row_504_and_attempt_timeout() {
    assert_eq!(ready(504, &[]), Err(FailureClass::GatewayTimeout));
    let t = UpstreamTimeout::new(TimeoutPhase::Headers, Duration::from_secs(1));
    let c = Classifier::new().classify_error(&t);
    assert_eq!(c, FailureClass::Timeout);
    assert_eq!(c.default_verdict(), Verdict::Failure);
    let elapsed: crate::BoxError = Box::new(tower::timeout::error::Elapsed::new());
    assert_eq!(
        Classifier::new().classify_error(&*elapsed),
        FailureClass::Timeout
    );
}

#[test]
fn row_500_and_other_5xx() {
    for s in [500, 501, 505, 599] {
        let c = ready(s, &[]).unwrap_err();
        assert_eq!(
            c,
            FailureClass::Server {
                status: StatusCode::from_u16(s).unwrap()
            }
        );
        assert_eq!(c.default_verdict(), Verdict::Failure);
    }
}

#[test]
fn row_connect_error_before_sending() {
    let c = Classifier::new();
    let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
    assert_eq!(c.classify_error(&refused), FailureClass::Connect);
    let marked = RequestNotSent::new(std::io::Error::other("dns"));
    assert_eq!(c.classify_error(&marked), FailureClass::Connect);
    let connect_timeout = UpstreamTimeout::new(TimeoutPhase::Connect, Duration::from_secs(1));
    assert_eq!(c.classify_error(&connect_timeout), FailureClass::Connect);
    assert!(FailureClass::Connect.was_not_sent());
    assert_eq!(FailureClass::Connect.default_verdict(), Verdict::Failure);
}

#[tokio::test]
async fn row_connect_error_from_hyper_util_client() {
    use hyper_util::client::legacy::Client;
    // Bind then drop a listener: connecting to that port is refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(2)));
    let client: Client<_, http_body_util::Empty<Bytes>> =
        Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
    let err = client
        .get(format!("http://127.0.0.1:{port}/").parse().unwrap())
        .await
        .unwrap_err();
    assert_eq!(
        Classifier::new().classify_error(&err),
        FailureClass::Connect
    );
}

#[test]
fn row_reset_after_sending_is_transport() {
    let c = Classifier::new();
    let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
    let class = c.classify_error(&reset);
    assert_eq!(class, FailureClass::Transport);
    assert!(!class.was_not_sent());
    assert_eq!(class.default_verdict(), Verdict::Failure);
    let read_timeout = std::io::Error::from(std::io::ErrorKind::TimedOut);
    assert_eq!(c.classify_error(&read_timeout), FailureClass::Timeout);
}

#[test]
fn row_client_errors_are_never_retried_and_ignored() {
    for s in [400, 401, 402, 403, 404, 422] {
        let c = ready(s, &[]).unwrap_err();
        assert_eq!(
            c,
            FailureClass::Client {
                status: StatusCode::from_u16(s).unwrap()
            }
        );
        assert!(!c.is_transient(), "{s}");
        assert_eq!(c.default_verdict(), Verdict::Ignored, "{s}");
    }
}

#[test]
fn row_stream_broken_after_first_byte() {
    // events went through, then the connection broke
    let ClassifiedResponse::RequiresEos(mut eos) = head(200, &[("content-type", SSE)]) else {
        panic!()
    };
    eos.on_data(&Bytes::from_static(b"data: {\"choices\":[]}\n\n"));
    assert!(eos.has_content());
    let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
    let class = eos.fail(&reset);
    assert_eq!(class, FailureClass::Transport);
    assert_eq!(class.default_verdict(), Verdict::Failure);
    assert_eq!(eos.finish(), Err(FailureClass::Transport), "sticky");
}

// --- DeepSeek's special 2xx cases ---

#[test]
fn empty_and_whitespace_200_are_failures() {
    assert_eq!(body(JSON, &[]), Err(FailureClass::EmptyBody));
    assert_eq!(
        body(JSON, &["\n", "\n\n", " \r\n"]),
        Err(FailureClass::EmptyBody)
    );
    assert_eq!(
        body(SSE, &[": keep-alive\n\n", ": keep-alive\n\n"]),
        Err(FailureClass::EmptyBody)
    );
    assert_eq!(FailureClass::EmptyBody.default_verdict(), Verdict::Failure);
}

#[test]
fn blank_lines_then_json_is_success() {
    assert_eq!(
        body(
            JSON,
            &["\n\n", "\n{\"choices\":[", "{\"finish_reason\":\"stop\"}]}"]
        ),
        Ok(())
    );
}

#[test]
fn stream_without_done_is_incomplete() {
    let cut = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n";
    assert_eq!(
        body(SSE, &[": keep-alive\n\n", cut]),
        Err(FailureClass::Incomplete)
    );
    // cut inside an event
    assert_eq!(
        body(SSE, &[cut, "data: {\"cho"]),
        Err(FailureClass::Incomplete)
    );
}

#[test]
fn truncated_or_malformed_json_is_incomplete() {
    assert_eq!(
        body(JSON, &["{\"choices\":[{\"fin"]),
        Err(FailureClass::Incomplete)
    );
    assert_eq!(body(JSON, &["{not json}"]), Err(FailureClass::Incomplete));
    // valid JSON of another shape is not judged
    assert_eq!(body(JSON, &["[1,2,3]"]), Ok(()));
    // ... even an array as long as the probe's field list (not read as its fields)
    assert_eq!(
        body(JSON, &[r#"[{"message":"x"},null,null,null,null]"#]),
        Ok(())
    );
    assert_eq!(body(JSON, &["[1,2"]), Err(FailureClass::Incomplete));
    // a field of another type does not hide a cut further on
    assert_eq!(body(JSON, &[r#"{"choices":5,"id":"x"}"#]), Ok(()));
    assert_eq!(
        body(JSON, &[r#"{"choices":5,"id":"x","usage":{"prompt_tok"#]),
        Err(FailureClass::Incomplete)
    );
}

#[test]
fn in_band_errors() {
    let e = r#"{"error":{"message":"Server Error","type":"server_error","param":null,"code":"x"}}"#;
    assert_eq!(body(JSON, &[e]), Err(FailureClass::InBandError));
    let ev = format!("data: {{\"choices\":[]}}\n\ndata: {e}\n\n");
    assert_eq!(body(SSE, &[&ev]), Err(FailureClass::InBandError));
    assert_eq!(
        body(SSE, &["event: error\ndata: boom\n\ndata: [DONE]\n\n"]),
        Err(FailureClass::InBandError)
    );
    // "error": null is no error
    assert_eq!(body(JSON, &[r#"{"error":null,"choices":[]}"#]), Ok(()));
}

#[test]
fn insufficient_system_resource_is_a_failure() {
    let j = r#"{"choices":[{"message":{"content":"par"},"finish_reason":"insufficient_system_resource"}]}"#;
    assert_eq!(body(JSON, &[j]), Err(FailureClass::InsufficientResources));
    let s = "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"insufficient_system_resource\"}]}\n\ndata: [DONE]\n\n";
    assert_eq!(body(SSE, &[s]), Err(FailureClass::InsufficientResources));
}

#[test]
fn usage_is_read_from_a_stream_in_passing() {
    let ClassifiedResponse::RequiresEos(mut eos) = head(200, &[("content-type", SSE)]) else {
        panic!()
    };
    let stream = "data: {\"model\":\"deepseek-v4-flash\",\"system_fingerprint\":\"fp_1\",\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n\
        data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n\
        data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2,\"total_tokens\":11,\"prompt_cache_hit_tokens\":8,\"prompt_cache_miss_tokens\":1}}\n\n\
        data: [DONE]\n\n";
    for b in stream.as_bytes().chunks(7) {
        eos.on_data(&Bytes::copy_from_slice(b));
    }
    assert_eq!(eos.finish(), Ok(()));
    let s = eos.summary();
    assert_eq!(s.usage.as_ref().unwrap().total_tokens, 11);
    assert_eq!(s.usage.as_ref().unwrap().cache_hit_tokens(), 8);
    assert_eq!(s.model.as_deref(), Some("deepseek-v4-flash"));
    assert_eq!(s.system_fingerprint.as_deref(), Some("fp_1"));
    assert_eq!(s.finish_reason, Some(FinishReason::Stop));
    assert_eq!(s.events, 4);
    assert!(s.done);
}

#[test]
fn non_json_bodies_and_204_are_ready() {
    assert_eq!(ready(204, &[]), Ok(()));
    assert_eq!(ready(200, &[("content-type", "text/plain")]), Ok(()));
    assert_eq!(ready(301, &[]), Ok(()));
}

#[test]
fn breaker_and_local_rejections() {
    let c = Classifier::new();
    let open = BreakerOpen::new(Duration::from_secs(3));
    let class = c.classify_error(&open);
    assert_eq!(class.retry_after(), Some(Duration::from_secs(3)));
    assert_eq!(class.default_verdict(), Verdict::Ignored);
    assert!(class.was_not_sent());
    let big = BodyTooLarge::new(1);
    assert_eq!(c.classify_error(&big), FailureClass::Rejected);
    assert!(!FailureClass::Rejected.is_transient());
}

#[test]
fn refusals_are_local_rejections() {
    let c = Classifier::new().classify_error(&RequestRefused::new("quota"));
    assert_eq!(c, FailureClass::Rejected);
    assert_eq!(c.default_verdict(), Verdict::Ignored);
    assert!(!c.is_transient());
}

#[test]
fn content_types_are_matched_without_case() {
    let sse = [("content-type", "Text/Event-Stream; charset=utf-8")];
    assert!(matches!(head(200, &sse), ClassifiedResponse::RequiresEos(e) if e.is_stream()));
    let json = [("content-type", "application/problem+JSON")];
    assert!(matches!(head(200, &json), ClassifiedResponse::RequiresEos(e) if !e.is_stream()));
    let none: [(&str, &str); 0] = [];
    assert!(matches!(
        head(200, &none),
        ClassifiedResponse::RequiresEos(_)
    ));
}

#[test]
fn errors_are_found_in_the_source_chain() {
    #[derive(Debug)]
    struct Wrap(std::io::Error);
    impl fmt::Display for Wrap {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("wrapped")
        }
    }
    impl StdError for Wrap {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            Some(&self.0)
        }
    }
    let e = Wrap(std::io::ErrorKind::ConnectionRefused.into());
    assert_eq!(Classifier::new().classify_error(&e), FailureClass::Connect);
}

// --- Retry-After ---

#[test]
fn retry_after_delta_seconds() {
    let now = SystemTime::now();
    assert_eq!(
        parse_retry_after(&HeaderValue::from_static("0"), now),
        Some(Duration::ZERO)
    );
    assert_eq!(
        parse_retry_after(&HeaderValue::from_static(" 30 "), now),
        Some(Duration::from_secs(30))
    );
    assert_eq!(
        parse_retry_after(&HeaderValue::from_static("-1"), now),
        None
    );
    assert_eq!(
        parse_retry_after(&HeaderValue::from_static("1.5"), now),
        None
    );
    assert_eq!(parse_retry_after(&HeaderValue::from_static(""), now), None);
}

#[test]
fn retry_after_http_date() {
    let now = httpdate::parse_http_date("Wed, 21 Oct 2026 07:28:00 GMT").unwrap();
    let v = HeaderValue::from_static("Wed, 21 Oct 2026 07:28:45 GMT");
    assert_eq!(parse_retry_after(&v, now), Some(Duration::from_secs(45)));
    let past = HeaderValue::from_static("Wed, 21 Oct 2026 07:27:00 GMT");
    assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
    let garbage = HeaderValue::from_static("tomorrow");
    assert_eq!(parse_retry_after(&garbage, now), None);
}

#[test]
fn on_eos_reports_once_and_cancellation() {
    use crate::body::ObservedBody;
    use http_body_util::BodyExt;
    use std::sync::{Arc, Mutex};

    let seen = Arc::new(Mutex::new(Vec::new()));
    let ClassifiedResponse::RequiresEos(eos) = head(200, &[("content-type", SSE)]) else {
        panic!()
    };
    let s2 = seen.clone();
    let body = ObservedBody::new(
        http_body_util::Full::new(Bytes::from_static(DONE_OK.as_bytes())),
        OnEos::new(eos, move |end, summary: &ResponseSummary| {
            s2.lock().unwrap().push((end, summary.done));
        }),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async { body.collect().await.unwrap() });
    assert_eq!(
        *seen.lock().unwrap(),
        vec![(StreamEnd::Finished(Ok(())), true)]
    );

    let seen = Arc::new(Mutex::new(Vec::new()));
    let ClassifiedResponse::RequiresEos(eos) = head(200, &[("content-type", SSE)]) else {
        panic!()
    };
    let s2 = seen.clone();
    let body = ObservedBody::new(
        http_body_util::Full::new(Bytes::from_static(DONE_OK.as_bytes())),
        OnEos::new(eos, move |end, _: &ResponseSummary| {
            s2.lock().unwrap().push(end)
        }),
    );
    drop(body);
    assert_eq!(*seen.lock().unwrap(), vec![StreamEnd::Cancelled]);
}
