//! Shared test helpers: an inner service scripted by request headers, and a metrics recorder
//! whose gauges can be read without resetting them.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use tower::{Service, ServiceExt};
use tower_deepseek_breaker::BoxError;

pub const JSON_OK: &str = r#"{"id":"x","model":"deepseek-chat","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}]}"#;

/// What the scripted upstream answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// A complete JSON 200.
    Ok,
    /// An error status with a JSON error body.
    Status(u16),
    /// A 200 SSE stream cut before `[DONE]`.
    CutStream,
    /// A complete 200 SSE stream.
    Stream,
    /// A transport error instead of a response.
    Reset,
}

impl Answer {
    fn header(self) -> String {
        match self {
            Answer::Ok => "ok".into(),
            Answer::Status(s) => s.to_string(),
            Answer::CutStream => "cut".into(),
            Answer::Stream => "stream".into(),
            Answer::Reset => "reset".into(),
        }
    }
}

pub fn response(answer: &str) -> Result<Response<Full<Bytes>>, BoxError> {
    let json = |status: u16, body: &'static str| {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    };
    let sse = |body: &'static str| {
        Response::builder()
            .header("content-type", "text/event-stream")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    };
    Ok(match answer {
        "ok" => json(200, JSON_OK),
        "cut" => sse("data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n"),
        "stream" => sse(
            "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n",
        ),
        "reset" => return Err(std::io::Error::from(std::io::ErrorKind::ConnectionReset).into()),
        s => json(
            s.parse().unwrap(),
            r#"{"error":{"message":"nope","type":"x","code":"y"}}"#,
        ),
    })
}

/// An upstream that answers as the `x-answer` header says, after `x-delay-ms` (tokio time).
pub fn scripted() -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = BoxError,
    Future = impl Future<Output = Result<Response<Full<Bytes>>, BoxError>> + Send,
> + Clone
+ Send {
    tower::service_fn(|req: Request<Full<Bytes>>| async move {
        let answer = req.headers()["x-answer"].to_str().unwrap().to_owned();
        if let Some(d) = req.headers().get("x-delay-ms") {
            let ms: u64 = d.to_str().unwrap().parse().unwrap();
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        response(&answer)
    })
}

pub fn request(answer: Answer) -> Request<Full<Bytes>> {
    Request::post("http://api.deepseek.test/chat/completions")
        .header("x-answer", answer.header())
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap()
}

pub fn slow_request(answer: Answer, delay: Duration) -> Request<Full<Bytes>> {
    let mut r = request(answer);
    r.headers_mut()
        .insert("x-delay-ms", delay.as_millis().to_string().parse().unwrap());
    r
}

/// Calls once and reads the whole body. `Err` for a rejection or transport error.
pub async fn call<S, B>(svc: &mut S, req: Request<Full<Bytes>>) -> Result<StatusCode, BoxError>
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = BoxError>,
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    let resp = svc.ready().await?.call(req).await?;
    let status = resp.status();
    resp.into_body().collect().await.map_err(Into::into)?;
    Ok(status)
}

pub async fn answer<S, B>(svc: &mut S, answer: Answer) -> Result<StatusCode, BoxError>
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = BoxError>,
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    call(svc, request(answer)).await
}

type Labels = Vec<(String, String)>;
type Cells = Arc<Mutex<HashMap<(String, Labels), Arc<AtomicU64>>>>;

/// A recorder that keeps every counter and gauge readable.
#[derive(Default, Clone)]
pub struct TestRecorder {
    counters: Cells,
    gauges: Cells,
}

fn split(key: &Key) -> (String, Labels) {
    let mut labels: Labels = key
        .labels()
        .map(|l| (l.key().to_owned(), l.value().to_owned()))
        .collect();
    labels.sort();
    (key.name().to_owned(), labels)
}

impl Recorder for TestRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let a = self
            .counters
            .lock()
            .unwrap()
            .entry(split(key))
            .or_default()
            .clone();
        Counter::from_arc(a)
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        let a = self
            .gauges
            .lock()
            .unwrap()
            .entry(split(key))
            .or_default()
            .clone();
        Gauge::from_arc(a)
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

impl TestRecorder {
    /// The states whose `deepseek_breaker_state` gauge of `breaker` reads 1, and all values.
    pub fn states_at_one(&self, breaker: &str) -> (Vec<String>, usize) {
        let g = self.gauges.lock().unwrap();
        let mut ones = Vec::new();
        let mut seen = 0;
        for ((name, labels), v) in g.iter() {
            if name != "deepseek_breaker_state" {
                continue;
            }
            if !labels.iter().any(|(k, v)| k == "breaker" && v == breaker) {
                continue;
            }
            seen += 1;
            let value = f64::from_bits(v.load(Ordering::SeqCst));
            assert!(value == 0.0 || value == 1.0, "gauge value {value}");
            if value == 1.0 {
                let state = labels.iter().find(|(k, _)| k == "state").unwrap();
                ones.push(state.1.clone());
            }
        }
        (ones, seen)
    }

    /// The value of a counter with exactly these labels (0 if never registered).
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let mut l: Labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        l.sort();
        self.counters
            .lock()
            .unwrap()
            .get(&(name.to_owned(), l))
            .map_or(0, |a| a.load(Ordering::SeqCst))
    }
}

/// Runs `f` on a current-thread runtime with paused time, with `recorder` as the local recorder.
pub fn with_recorder<F: Future>(recorder: &TestRecorder, f: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    metrics::with_local_recorder(recorder, || rt.block_on(f))
}

pub fn is_breaker_open(e: &BoxError) -> bool {
    e.downcast_ref::<tower_deepseek_breaker::BreakerOpen>()
        .is_some()
}
