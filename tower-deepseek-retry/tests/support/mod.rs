#![allow(dead_code, unreachable_pub)]

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tower_deepseek_core::BoxError;

/// A test response body: scripted chunks, then an optional error, or fed live from a channel.
pub struct TestBody {
    chunks: VecDeque<Result<Bytes, BoxError>>,
    rx: Option<mpsc::UnboundedReceiver<Result<Bytes, BoxError>>>,
}

impl TestBody {
    pub fn chunks<I: IntoIterator<Item = &'static str>>(it: I) -> Self {
        Self {
            chunks: it
                .into_iter()
                .map(|s| Ok(Bytes::from_static(s.as_bytes())))
                .collect(),
            rx: None,
        }
    }
    pub fn then_error(mut self, e: BoxError) -> Self {
        self.chunks.push_back(Err(e));
        self
    }
    pub fn channel() -> (mpsc::UnboundedSender<Result<Bytes, BoxError>>, Self) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            tx,
            Self {
                chunks: VecDeque::new(),
                rx: Some(rx),
            },
        )
    }
}

impl Body for TestBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(c) = self.chunks.pop_front() {
            return Poll::Ready(Some(c.map(Frame::data)));
        }
        match self.rx.as_mut() {
            None => Poll::Ready(None),
            Some(rx) => rx.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data))),
        }
    }
    /// At its end once its scripted chunks are taken, as a body with a `Content-Length` is.
    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty() && self.rx.is_none()
    }
}

pub enum Step {
    Resp(Response<TestBody>),
    Err(BoxError),
}

pub fn status(code: u16) -> Step {
    Step::Resp(
        Response::builder()
            .status(code)
            .header("content-type", "application/json")
            .body(TestBody::chunks([
                r#"{"error":{"message":"x","type":"t","param":null,"code":"c"}}"#,
            ]))
            .unwrap(),
    )
}

pub fn status_with(code: u16, k: &str, v: &str) -> Step {
    Step::Resp(
        Response::builder()
            .status(code)
            .header(k, v)
            .body(TestBody::chunks([]))
            .unwrap(),
    )
}

pub const JSON_OK: &str = r#"{"choices":[{"message":{"content":"hi"},"finish_reason":"stop"}]}"#;
pub const SSE_OK: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";

/// A 401 as a credential layer below marks it when it obtained a new credential.
pub fn unauthorized_refreshed() -> Step {
    let Step::Resp(mut r) = status(401) else {
        unreachable!()
    };
    r.extensions_mut()
        .insert(tower_deepseek_core::protocol::CredentialRefreshed);
    Step::Resp(r)
}

pub fn ok() -> Step {
    json(TestBody::chunks([JSON_OK]))
}

pub fn json(body: TestBody) -> Step {
    Step::Resp(
        Response::builder()
            .header("content-type", "application/json")
            .body(body)
            .unwrap(),
    )
}

pub fn sse(body: TestBody) -> Step {
    Step::Resp(
        Response::builder()
            .header("content-type", "text/event-stream")
            .body(body)
            .unwrap(),
    )
}

#[derive(Debug, Clone)]
pub struct Call {
    pub at: Instant,
    pub body: Option<Bytes>,
    pub replayable: bool,
    pub scale: Option<f64>,
    pub len: usize,
    pub offer: Option<tower_deepseek_core::protocol::ReplayOn401>,
}

/// A scripted inner service that records when and with what it was called.
#[derive(Clone)]
pub struct Script {
    steps: Arc<Mutex<VecDeque<Step>>>,
    pub calls: Arc<Mutex<Vec<Call>>>,
}

impl Script {
    pub fn new(steps: impl IntoIterator<Item = Step>) -> Self {
        Self {
            steps: Arc::new(Mutex::new(steps.into_iter().collect())),
            calls: Arc::default(),
        }
    }
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }
    /// Gaps between consecutive calls.
    pub fn gaps(&self) -> Vec<std::time::Duration> {
        let c = self.calls();
        c.windows(2).map(|w| w[1].at - w[0].at).collect()
    }
}

type B = http_body_util::Full<Bytes>;

impl tower::Service<Request<tower_deepseek_core::body::ReplayBody<B>>> for Script {
    type Response = Response<TestBody>;
    type Error = BoxError;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Response<TestBody>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<tower_deepseek_core::body::ReplayBody<B>>) -> Self::Future {
        let scale = req
            .extensions()
            .get::<tower_deepseek_retry::timeout::TimeoutScale>()
            .map(|s| s.0);
        let offer = req
            .extensions()
            .get::<tower_deepseek_core::protocol::ReplayOn401>()
            .copied();
        let body_bytes = req.body().buffered_bytes().cloned();
        let replayable = req.body().is_buffered();
        let step = self
            .steps
            .lock()
            .unwrap()
            .pop_front()
            .expect("script ran out of steps");
        let calls = self.calls.clone();
        Box::pin(async move {
            use http_body_util::BodyExt;
            let len = req
                .into_body()
                .collect()
                .await
                .map(|c| c.to_bytes().len())
                .unwrap_or(0);
            calls.lock().unwrap().push(Call {
                at: Instant::now(),
                body: body_bytes,
                replayable,
                scale,
                len,
                offer,
            });
            match step {
                Step::Resp(r) => Ok(r),
                Step::Err(e) => Err(e),
            }
        })
    }
}

pub fn req(body: &'static str) -> Request<http_body_util::Full<Bytes>> {
    Request::post("http://upstream/chat/completions")
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(Bytes::from_static(
            body.as_bytes(),
        )))
        .unwrap()
}

pub async fn read_body<B>(body: B) -> (Vec<u8>, Option<BoxError>)
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    use http_body_util::BodyExt;
    let mut body = body;
    let mut out = Vec::new();
    while let Some(f) = body.frame().await {
        match f {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    out.extend_from_slice(d);
                }
            }
            Err(e) => return (out, Some(e)),
        }
    }
    (out, None)
}

pub fn refused() -> BoxError {
    Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))
}

pub fn reset() -> BoxError {
    Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset))
}
