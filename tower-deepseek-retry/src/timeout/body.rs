//! The response body of [`Timeout`](super::Timeout).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use super::layer::Limits;
use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_deepseek_core::BoxError;
use tower_deepseek_core::error::{TimeoutPhase, UpstreamTimeout};
use tower_deepseek_core::sse::SseParser;

pub(crate) enum Mode {
    AwaitSse(Box<SseParser>),
    AwaitJson,
    Flowing,
    Ended,
}

pin_project! {
    /// Response body of [`Timeout`](crate::Timeout): fails with [`UpstreamTimeout`] when the first token, the
    /// next chunk or the end does not come in time.
    pub struct ResponseBody<B> {
        #[pin]
        inner: B,
        timer: Option<Pin<Box<Sleep>>>,
        armed: Option<(TimeoutPhase, Duration)>,
        mode: Mode,
        limits: Limits,
        start: Instant,
    }
}

impl<B> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseBody")
            .field("armed", &self.armed)
            .finish_non_exhaustive()
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn new(inner: B, limits: Limits, start: Instant, mode: Mode) -> Self {
        let mut body = Self {
            inner,
            timer: None,
            armed: None,
            mode,
            limits,
            start,
        };
        let (timer, armed, mode) = (&mut body.timer, &mut body.armed, &body.mode);
        arm(timer, armed, mode, &body.limits, body.start);
        body
    }
}

/// Sets the timer to the earliest deadline that applies now.
pub(crate) fn arm(
    timer: &mut Option<Pin<Box<Sleep>>>,
    armed: &mut Option<(TimeoutPhase, Duration)>,
    mode: &Mode,
    limits: &Limits,
    start: Instant,
) {
    let now = Instant::now();
    let waiting = matches!(mode, Mode::AwaitSse(_) | Mode::AwaitJson);
    let phase = match (waiting, limits.first_token, limits.idle) {
        (true, Some(ft), _) => Some((TimeoutPhase::FirstToken, ft, start + ft)),
        (false, _, Some(idle)) => Some((TimeoutPhase::Idle, idle, now + idle)),
        _ => None,
    };
    let total = limits.total.map(|t| (TimeoutPhase::Total, t, start + t));
    let pick = match (phase, total) {
        (Some(p), Some(t)) => Some(if t.2 < p.2 { t } else { p }),
        (p, t) => p.or(t),
    };
    match pick {
        None => {
            *timer = None;
            *armed = None;
        }
        Some((phase, after, at)) => {
            if *armed == Some((phase, after)) && phase != TimeoutPhase::Idle {
                return; // same fixed deadline
            }
            match timer {
                Some(t) => t.as_mut().reset(at),
                None => *timer = Some(Box::pin(tokio::time::sleep_until(at))),
            }
            *armed = Some((phase, after));
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if matches!(this.mode, Mode::Ended) {
            return Poll::Ready(None);
        }
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let frame = frame.map_data(|mut d| d.copy_to_bytes(d.remaining()));
                if let Some(data) = frame.data_ref() {
                    let started = match this.mode {
                        Mode::AwaitSse(parser) => {
                            let mut seen = false;
                            // A parser error (oversized event) is content too; the classifier
                            // above judges it.
                            let r = parser.push(data, |_| seen = true);
                            seen || r.is_err()
                        }
                        Mode::AwaitJson => data.iter().any(|b| !b.is_ascii_whitespace()),
                        _ => false,
                    };
                    if started {
                        *this.mode = Mode::Flowing;
                    }
                    if started || matches!(this.mode, Mode::Flowing) {
                        arm(this.timer, this.armed, this.mode, this.limits, *this.start);
                    }
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            Poll::Ready(Some(Err(e))) => {
                *this.mode = Mode::Ended;
                *this.timer = None;
                return Poll::Ready(Some(Err(e.into())));
            }
            Poll::Ready(None) => {
                *this.mode = Mode::Ended;
                *this.timer = None;
                return Poll::Ready(None);
            }
            Poll::Pending => {}
        }
        if let Some(t) = this.timer.as_mut() {
            ready!(t.as_mut().poll(cx));
            let (phase, after) = this.armed.expect("an armed timer has a phase");
            *this.mode = Mode::Ended;
            *this.timer = None;
            tracing::debug!(
                target: "tower_deepseek_retry",
                phase = phase.as_str(),
                after_ms = after.as_millis() as u64,
                "response body timed out"
            );
            return Poll::Ready(Some(Err(Box::new(UpstreamTimeout::new(phase, after)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.mode, Mode::Ended) || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
