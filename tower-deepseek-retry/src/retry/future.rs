//! The retry layer's response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{Extensions, HeaderMap, Method, Request, Response, Uri, Version};
use http_body::{Body, Frame};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_deepseek_core::BoxError;
use tower_deepseek_core::body::{Buffered, BufferedBody, ReplayBody};
use tower_deepseek_core::classify::{ClassifiedResponse, EndJudge, FailureClass};
use tower_deepseek_core::error::IncompleteResponse;
use tower_deepseek_core::protocol::{CredentialRefreshed, ReplayOn401, ShareVerdict};
use tower_service::Service;

use super::Attempts;
use super::body::{Prefix, ResponseBody, Watch, incomplete_error, to_bytes_frame};
use super::error::{RetriesExhausted, StopReason};
use super::layer::Shared;
use super::schedule::{KINDS, Kind, RetryAfterPolicy};
use crate::timeout::TimeoutScale;

type BufferFuture<B> =
    Pin<Box<dyn Future<Output = Result<Buffered<B>, BoxError>> + Send + 'static>>;

pin_project! {
    #[project = StateProj]
    enum State<F, B, R> {
        Buffering { fut: BufferFuture<B> },
        Ready,
        Calling { #[pin] fut: F },
        // One box for the whole inspection state (classifier and first frame inline in it):
        // a JSON 2xx pays one allocation (it paid three), and the future of every call stays
        // about 500 bytes instead of 1.1 KB to move (measured: inline was slower on both
        // paths). `None` once handed over.
        Inspecting { ins: Option<Box<Inspect<R>>> },
        Sleeping { sleep: Pin<Box<Sleep>> },
    }
}

/// What the request looked like, to rebuild it for each attempt.
struct Template {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    extensions: Extensions,
}

enum Replay<B> {
    Pending,
    Buffered(BufferedBody),
    // Sent once: taken by the first attempt.
    Overflow(Option<ReplayBody<B>>),
}

struct Inspect<R> {
    head: http::response::Parts,
    body: R,
    judge: EndJudge,
    frames: Prefix,
    read: usize,
}

pin_project! {
    /// Response future of [`Retry`](super::Retry).
    pub struct ResponseFuture<S, ReqB, ResB>
    where
        S: Service<Request<ReplayBody<ReqB>>>,
    {
        #[pin]
        state: State<S::Future, ReqB, ResB>,
        service: S,
        shared: Arc<Shared>,
        template: Template,
        replay: Replay<ReqB>,
        attempt: u32,
        counts: [u32; KINDS],
        classes: Vec<FailureClass>,
        start: Instant,
        scale: f64,
        // Whether the one replay after a credential refresh below was made.
        credential_replayed: bool,
    }
}

impl<S, ReqB, ResB> fmt::Debug for ResponseFuture<S, ReqB, ResB>
where
    S: Service<Request<ReplayBody<ReqB>>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("attempt", &self.attempt)
            .field("classes", &self.classes)
            .finish_non_exhaustive()
    }
}

impl<S, ReqB, ResB> ResponseFuture<S, ReqB, ResB>
where
    S: Service<Request<ReplayBody<ReqB>>>,
    ReqB: Body + Unpin + Send + 'static,
    ReqB::Data: Send,
    ReqB::Error: Into<BoxError>,
{
    pub(crate) fn new(service: S, shared: Arc<Shared>, req: Request<ReqB>) -> Self {
        let (parts, mut body) = req.into_parts();
        let limit = shared.cfg.body_limit;
        // Fast path: a body that is already complete (an `Empty`, a `Full`, a small request
        // that arrived in one piece) is taken as it is, without starting the buffering
        // future. Peeking with a no-op waker is harmless: the next poll registers the real
        // waker.
        let peeked = if body.is_end_stream() {
            Ok(BufferedBody::empty())
        } else {
            let mut cx = Context::from_waker(std::task::Waker::noop());
            match Pin::new(&mut body).poll_frame(&mut cx) {
                Poll::Pending => Err(None),
                Poll::Ready(None) => Ok(BufferedBody::empty()),
                Poll::Ready(Some(Err(e))) => Err(Some(Err(e.into()))),
                Poll::Ready(Some(Ok(frame))) => {
                    let frame = to_bytes_frame(frame);
                    let whole =
                        body.is_end_stream() && frame.data_ref().is_some_and(|d| d.len() <= limit);
                    match frame.into_data() {
                        // Taken, not cloned: the one `Bytes` every attempt replays.
                        Ok(d) if whole => Ok(BufferedBody::new(d)),
                        Ok(d) => Err(Some(Ok(Frame::data(d)))),
                        Err(frame) => Err(Some(Ok(frame))),
                    }
                }
            }
        };
        let (state, replay) = match peeked {
            Ok(b) => (State::Ready, Replay::Buffered(b)),
            Err(first) => {
                let fut: BufferFuture<ReqB> = match first {
                    None => Box::pin(tower_deepseek_core::body::buffer(body, limit)),
                    Some(first) => {
                        Box::pin(tower_deepseek_core::body::buffer_after(first, body, limit))
                    }
                };
                (State::Buffering { fut }, Replay::Pending)
            }
        };
        // One clock read for both the budget and the total deadline.
        let start = Instant::now();
        if let Some(b) = &shared.budget {
            b.deposit_at(start);
        }
        // This layer judges the answers' ends: the layer below that classifies them (the
        // breaker) publishes its verdict, so that each answer is parsed once.
        let mut parts = parts;
        parts.extensions.insert(ShareVerdict);
        Self {
            state,
            service,
            shared,
            template: Template {
                method: parts.method,
                uri: parts.uri,
                version: parts.version,
                headers: parts.headers,
                extensions: parts.extensions,
            },
            replay,
            attempt: 0,
            counts: [0; KINDS],
            classes: Vec::new(),
            start,
            scale: 1.0,
            credential_replayed: false,
        }
    }
}

fn kind_of(class: &FailureClass, retry_after_send: bool) -> Option<Kind> {
    Some(match class {
        FailureClass::RateLimited { .. } => Kind::RateLimited,
        FailureClass::BadGateway => Kind::BadGateway,
        FailureClass::Overloaded { .. } => Kind::Overloaded,
        FailureClass::GatewayTimeout | FailureClass::Timeout => Kind::Timeout,
        FailureClass::Server { .. } => Kind::Server,
        FailureClass::EmptyBody
        | FailureClass::Incomplete
        | FailureClass::InBandError
        | FailureClass::InsufficientResources => Kind::Body,
        FailureClass::Connect => Kind::Connect,
        FailureClass::Transport if retry_after_send => Kind::Transport,
        _ => return None,
    })
}

impl Shared {
    /// Decides whether to retry after `class`; on `Ok`, the delay before the next attempt.
    fn decide(
        &self,
        class: &FailureClass,
        attempt: u32,
        counts: &mut [u32; KINDS],
        replayable: bool,
        elapsed: Duration,
    ) -> Result<Duration, StopReason> {
        let cfg = &self.cfg;
        let (kind, delay) = if let FailureClass::BreakerOpen { retry_after } = class {
            // Fail fast: waiting out an open breaker is an explicit opt-in.
            if !cfg.wait_for_open_breaker {
                return Err(StopReason::BreakerOpen);
            }
            (None, *retry_after)
        } else {
            let Some(kind) = kind_of(class, cfg.retry_after_send) else {
                return Err(StopReason::NotRetryable);
            };
            let schedule = self.cfg.schedules.get(kind);
            if schedule.max_retries == 0 {
                return Err(StopReason::NotRetryable);
            }
            if !replayable {
                return Err(StopReason::BodyNotReplayable);
            }
            if attempt >= cfg.max_attempts || counts[kind as usize] >= schedule.max_retries {
                return Err(StopReason::MaxAttempts);
            }
            let n = counts[kind as usize] + 1;
            let backoff = &schedule.backoff;
            let mut delay = if backoff.ceiling(n).is_zero() {
                Duration::ZERO
            } else {
                let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
                backoff.delay(n, &mut rng)
            };
            if let Some(ra) = class.retry_after() {
                match schedule.retry_after {
                    RetryAfterPolicy::AtLeast => delay = delay.max(ra),
                    RetryAfterPolicy::Exact => delay = ra,
                    RetryAfterPolicy::Ignore => {}
                }
            }
            (Some(kind), delay)
        };
        if kind.is_none() {
            if !replayable {
                return Err(StopReason::BodyNotReplayable);
            }
            if attempt >= cfg.max_attempts {
                return Err(StopReason::MaxAttempts);
            }
        }
        if delay > self.max_retry_after {
            return Err(StopReason::RetryAfterTooLong);
        }
        match self.total_deadline {
            Some(dl) if elapsed + delay >= dl => return Err(StopReason::Deadline),
            // A breaker wait is honoured only within a deadline, or within max_retry_after.
            _ => {}
        }
        if let Some(b) = &self.budget {
            if !b.withdraw() {
                metrics::counter!("deepseek_retry_budget_exhausted_total").increment(1);
                return Err(StopReason::BudgetExhausted);
            }
        }
        if let Some(k) = kind {
            counts[k as usize] += 1;
        }
        Ok(delay)
    }
}

// A short-lived local; boxing the response would cost an allocation per failed attempt.
#[allow(clippy::large_enum_variant)]
enum Outcome<R> {
    Response(Response<ResponseBody<R>>),
    Error(BoxError),
}

impl<S, ReqB, ResB> Future for ResponseFuture<S, ReqB, ResB>
where
    S: Service<Request<ReplayBody<ReqB>>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    ReqB: Body + Unpin,
    ReqB::Error: Into<BoxError>,
    ResB: Body + Unpin,
    ResB::Error: Into<BoxError>,
{
    type Output = Result<Response<ResponseBody<ResB>>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut this = self.as_mut().project();
            // The class of a failed attempt, and what to give the caller if we stop.
            let (class, outcome): (FailureClass, Outcome<ResB>) = match this
                .state
                .as_mut()
                .project()
            {
                StateProj::Buffering { fut } => {
                    match ready!(fut.as_mut().poll(cx)) {
                        Ok(Buffered::Complete(b)) => *this.replay = Replay::Buffered(b),
                        Ok(Buffered::Overflow(o)) => {
                            *this.replay = Replay::Overflow(Some(ReplayBody::overflow(o)))
                        }
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                    this.state.set(State::Ready);
                    continue;
                }
                StateProj::Sleeping { sleep } => {
                    ready!(sleep.as_mut().poll(cx));
                    this.state.set(State::Ready);
                    continue;
                }
                StateProj::Ready => {
                    if let Err(e) = ready!(this.service.poll_ready(cx)) {
                        return Poll::Ready(Err(e.into()));
                    }
                    let offer = this.shared.cfg.credential_replay;
                    let body = match this.replay {
                        Replay::Buffered(b) => ReplayBody::buffered(b.replay()),
                        Replay::Overflow(o) => o.take().expect("an overflow body is sent once"),
                        Replay::Pending => unreachable!("the body is buffered before any attempt"),
                    };
                    let t = &*this.template;
                    let mut req = Request::new(body);
                    *req.method_mut() = t.method.clone();
                    *req.uri_mut() = t.uri.clone();
                    *req.version_mut() = t.version;
                    *req.headers_mut() = t.headers.clone();
                    *req.extensions_mut() = t.extensions.clone();
                    if *this.scale != 1.0 {
                        req.extensions_mut().insert(TimeoutScale(*this.scale));
                    }
                    if offer && req.body().is_buffered() {
                        req.extensions_mut().insert(if *this.credential_replayed {
                            ReplayOn401::Replaying
                        } else {
                            ReplayOn401::Offered
                        });
                    }
                    *this.attempt += 1;
                    let fut = this.service.call(req);
                    this.state.set(State::Calling { fut });
                    continue;
                }
                StateProj::Calling { fut } => match ready!(fut.poll(cx)) {
                    Err(e) => {
                        let e: BoxError = e.into();
                        let class = this.shared.classifier.classify_error(&*e);
                        (class, Outcome::Error(e))
                    }
                    Ok(resp) => {
                        match this
                            .shared
                            .classifier
                            .classify_head(resp.status(), resp.headers())
                        {
                            ClassifiedResponse::Ready(Ok(())) => {
                                return Poll::Ready(Ok(finish(
                                    resp.map(ResponseBody::new),
                                    *this.attempt,
                                    std::mem::take(this.classes),
                                    StopReason::Success,
                                )));
                            }
                            ClassifiedResponse::Ready(Err(class)) => {
                                (class, Outcome::Response(resp.map(ResponseBody::new)))
                            }
                            ClassifiedResponse::RequiresEos(eos) => {
                                let (head, body) = resp.into_parts();
                                this.state.set(State::Inspecting {
                                    ins: Some(Box::new(Inspect {
                                        judge: EndJudge::from_extensions(eos, &head.extensions),
                                        head,
                                        body,
                                        frames: Prefix::default(),
                                        read: 0,
                                    })),
                                });
                                continue;
                            }
                        }
                    }
                },
                StateProj::Inspecting { ins: slot } => {
                    let ins = slot.as_mut().expect("polled after completion");
                    let limit = this.shared.cfg.json_inspect_limit;
                    let stream = ins.judge.classifier().is_stream();
                    let mut ended = false;
                    let step = loop {
                        if stream && ins.judge.classifier().has_content() {
                            if ins.judge.classifier().summary().in_band_error {
                                break Some(Err(FailureClass::InBandError));
                            }
                            break None; // first event: hand over
                        }
                        if !stream && ins.read > limit {
                            break None;
                        }
                        match ready!(Pin::new(&mut ins.body).poll_frame(cx)) {
                            Some(Ok(frame)) => {
                                let frame = to_bytes_frame(frame);
                                if let Some(d) = frame.data_ref() {
                                    ins.judge.on_data_now(d);
                                    ins.read += d.len();
                                }
                                ins.frames.push(frame);
                            }
                            Some(Err(e)) => {
                                let e: BoxError = e.into();
                                let class = ins.judge.fail(&*e);
                                break Some(Ok((class, e)));
                            }
                            // The body ended: by the verdict a layer below shares if it is
                            // about these very frames, else judged here.
                            None => match ins.judge.finish() {
                                Ok(()) => {
                                    let ins = *slot.take().expect("inspecting");
                                    let body =
                                        ResponseBody::with_parts(ins.frames, None, None, None);
                                    return Poll::Ready(Ok(finish(
                                        Response::from_parts(ins.head, body),
                                        *this.attempt,
                                        std::mem::take(this.classes),
                                        StopReason::Success,
                                    )));
                                }
                                Err(class) => {
                                    ended = true;
                                    break Some(Err(class));
                                }
                            },
                        }
                    };
                    let ins = *slot.take().expect("inspecting");
                    match step {
                        None => {
                            // Content is flowing: the decision is taken, the caller gets the
                            // body (what was read first, then the rest, still watched: by the
                            // verdict a layer below shares at the end when it is about these
                            // very frames, else by this layer's classifier, boxed only now).
                            let watch: Watch = Box::new(ins.judge);
                            let body = ResponseBody::with_parts(
                                ins.frames,
                                Some(ins.body),
                                Some(watch),
                                None,
                            );
                            return Poll::Ready(Ok(finish(
                                Response::from_parts(ins.head, body),
                                *this.attempt,
                                std::mem::take(this.classes),
                                StopReason::Success,
                            )));
                        }
                        Some(Err(class)) => {
                            let pending = if ended {
                                incomplete_error(&class)
                            } else {
                                None
                            };
                            let (inner, eos) = if ended {
                                (None, None)
                            } else {
                                (Some(ins.body), Some(Box::new(ins.judge) as Watch))
                            };
                            let body = ResponseBody::with_parts(ins.frames, inner, eos, pending);
                            (
                                class,
                                Outcome::Response(Response::from_parts(ins.head, body)),
                            )
                        }
                        Some(Ok((class, e))) => {
                            let body = ResponseBody::with_parts(ins.frames, None, None, Some(e));
                            (
                                class,
                                Outcome::Response(Response::from_parts(ins.head, body)),
                            )
                        }
                    }
                }
            };

            // A 401 for which the credential layer below obtained a new credential, as this
            // layer offered it: sent again at once, once per call, outside the budget, the
            // attempt limit and the deadline (the auth layer alone would replay it the same way).
            if let Outcome::Response(resp) = &outcome
                && this.shared.cfg.credential_replay
                && !*this.credential_replayed
                && matches!(this.replay, Replay::Buffered(_))
                && resp.status() == http::StatusCode::UNAUTHORIZED
                && resp.extensions().get::<CredentialRefreshed>().is_some()
            {
                *this.credential_replayed = true;
                tracing::info!(
                    target: "tower_deepseek_retry",
                    attempt = *this.attempt,
                    next_attempt = *this.attempt + 1,
                    delay_ms = 0u64,
                    reason = "credential_refreshed",
                    "retrying request"
                );
                metrics::counter!("deepseek_retry_attempts_total", "reason" => "credential_refreshed")
                    .increment(1);
                this.classes.push(class);
                drop(outcome);
                this.state.set(State::Ready);
                continue;
            }

            // A failed attempt: retry or stop.
            if let (
                FailureClass::RateLimited {
                    retry_after: Some(ra),
                },
                Some(p),
            ) = (&class, &this.shared.pause)
            {
                p.pause_for(*ra);
            }
            let replayable = matches!(this.replay, Replay::Buffered(_));
            let elapsed = this.start.elapsed();
            let attempt = *this.attempt;
            // The credential replay does not count against `max_attempts`.
            let counted = attempt - u32::from(*this.credential_replayed);
            match this
                .shared
                .decide(&class, counted, this.counts, replayable, elapsed)
            {
                Ok(delay) => {
                    tracing::info!(
                        target: "tower_deepseek_retry",
                        attempt,
                        next_attempt = attempt + 1,
                        delay_ms = delay.as_millis() as u64,
                        reason = class.as_str(),
                        "retrying request"
                    );
                    metrics::counter!("deepseek_retry_attempts_total", "reason" => class.as_str())
                        .increment(1);
                    metrics::histogram!("deepseek_retry_delay_seconds").record(delay.as_secs_f64());
                    if matches!(class, FailureClass::GatewayTimeout | FailureClass::Timeout) {
                        *this.scale *= this.shared.cfg.timeout_multiplier;
                    }
                    this.classes.push(class);
                    // Dropping a failed response here closes its body.
                    drop(outcome);
                    if delay.is_zero() {
                        this.state.set(State::Ready);
                    } else {
                        this.state.set(State::Sleeping {
                            sleep: Box::pin(tokio::time::sleep(delay)),
                        });
                    }
                }
                Err(reason) => {
                    tracing::debug!(
                        target: "tower_deepseek_retry",
                        attempt,
                        reason = class.as_str(),
                        stop = reason.as_str(),
                        "not retrying"
                    );
                    this.classes.push(class.clone());
                    let classes = std::mem::take(this.classes);
                    return Poll::Ready(match outcome {
                        // A 2xx judged failed by its body before any of it reached the caller
                        // (empty, cut, an in-band error, a read error): its head would promise
                        // an answer that is not there, and a server would abort the connection
                        // on the body's error. The caller gets a typed error instead.
                        Outcome::Response(resp) if resp.status().is_success() => {
                            let (_, mut body) = resp.into_parts();
                            let e = body.take_pending_error().unwrap_or_else(|| {
                                incomplete_error(&class).unwrap_or_else(|| {
                                    Box::new(IncompleteResponse::new(
                                        "the answer carried an error instead of a result",
                                    ))
                                })
                            });
                            if attempt == 1 && reason == StopReason::NotRetryable {
                                Err(e)
                            } else {
                                Err(Box::new(RetriesExhausted::new(attempt, reason, class, e))
                                    as BoxError)
                            }
                        }
                        Outcome::Response(resp) => Ok(finish(resp, attempt, classes, reason)),
                        Outcome::Error(e) => {
                            // Never retried: the error as it is (an open breaker's own
                            // `BreakerOpen`, to downcast).
                            if attempt == 1
                                && matches!(
                                    reason,
                                    StopReason::NotRetryable | StopReason::BreakerOpen
                                )
                            {
                                Err(e)
                            } else {
                                Err(Box::new(RetriesExhausted::new(attempt, reason, class, e))
                                    as BoxError)
                            }
                        }
                    });
                }
            }
        }
    }
}

fn finish<B>(
    mut resp: Response<B>,
    attempts: u32,
    classes: Vec<FailureClass>,
    stop: StopReason,
) -> Response<B> {
    // Always: the caller reads it, and so does audit (core's protocol type).
    resp.extensions_mut()
        .insert(Attempts::new(attempts, classes, stop));
    resp
}
