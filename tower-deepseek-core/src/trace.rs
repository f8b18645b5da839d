//! One `tracing` span per layer call.
//!
//! Every layer of the recommended stack opens a span at `DEBUG` level in its `Service::call`
//! (its target is the layer's crate, its name `deepseek.<layer>`), enters it around the
//! inner service's `call` and around every poll of its response future ([`InSpan`]), and
//! closes it when the future ends: the span measures the layer's part of the call up to the
//! answer's head, and the layers' spans nest as the layers do. The span's fields are safe by
//! construction: the layer ([`LAYER`]), the outcome class ([`OUTCOME`], see [`outcome`]) and
//! facts of the layer such as the cache status, the attempt count or the breaker state;
//! never a prompt, an answer, a PII value, a key or a tenant.
//!
//! With no subscriber interested (no subscriber at all, or a filter below `DEBUG` for the
//! crate), a span is disabled: opening it is a check of the callsite's cached interest, and
//! entering it a branch. A program exports them as it likes (the gateway bridges them to
//! OpenTelemetry with its `otel` feature).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{Extensions, HeaderMap, Response, StatusCode};
use pin_project_lite::pin_project;
use tracing::Span;

/// The field naming the layer (`audit`, `redact`, `review`, `cache`, `cost`, `rate_limit`,
/// `retry`, `circuit_breaker`, `auth`, `timeout`).
pub const LAYER: &str = "deepseek.layer";
/// The field holding the outcome class of the layer's call (see [`outcome`]).
pub const OUTCOME: &str = "deepseek.outcome";

/// The outcome class of a layer's call: `ok` (an answer below 400), `rate_limited` (429),
/// `client_error` (another 4xx), `server_error` (5xx) or `error` (the layer or one below it
/// failed without an answer).
pub fn outcome<B, E>(result: &Result<Response<B>, E>) -> &'static str {
    match result {
        Ok(resp) => status_class(resp.status()),
        Err(_) => "error",
    }
}

fn status_class(status: StatusCode) -> &'static str {
    if status == StatusCode::TOO_MANY_REQUESTS {
        "rate_limited"
    } else if status.is_client_error() {
        "client_error"
    } else if status.is_server_error() {
        "server_error"
    } else {
        "ok"
    }
}

/// Runs `f` (a layer's call of its inner service) inside `span`, so that the spans the layers
/// below open in their own `call` are its children. Always inlined: a layer's future is
/// returned through it, and an outlined closure would copy it once more.
#[inline(always)]
pub fn in_scope<T>(span: &Span, f: impl FnOnce() -> T) -> T {
    let _entered = span.enter();
    f()
}

pin_project! {
    /// A layer's response future in the layer's span: the span is entered around every poll,
    /// the outcome class is recorded in [`OUTCOME`] when the answer's head is ready (with the
    /// optional hook's facts of the head), and the span closes when the future is dropped.
    #[derive(Debug)]
    pub struct InSpan<F> {
        #[pin]
        inner: F,
        span: Span,
        on_head: Option<fn(&Span, &HeaderMap, &Extensions)>,
    }
}

impl<F> InSpan<F> {
    /// `inner` in `span`.
    #[inline]
    pub fn new(inner: F, span: Span) -> Self {
        InSpan {
            inner,
            span,
            on_head: None,
        }
    }

    /// Also calls `hook` with the answer's headers and extensions when the head is ready (not
    /// when the span is disabled), to record a fact the layer put there (the cache's status,
    /// the retry layer's attempt count). Record integers as `i64`: exporters may take other
    /// integers for text.
    #[inline]
    pub fn on_head(mut self, hook: fn(&Span, &HeaderMap, &Extensions)) -> Self {
        self.on_head = Some(hook);
        self
    }
}

impl<F, B, E> Future for InSpan<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = F::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let out = ready!(this.inner.poll(cx));
        if !this.span.is_disabled() {
            this.span.record(OUTCOME, outcome(&out));
            if let (Some(hook), Ok(resp)) = (this.on_head, &out) {
                hook(this.span, resp.headers(), resp.extensions());
            }
        }
        Poll::Ready(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_classes() {
        let r = |s: u16| -> Result<Response<()>, ()> {
            Ok(Response::builder().status(s).body(()).unwrap())
        };
        assert_eq!(outcome(&r(200)), "ok");
        assert_eq!(outcome(&r(304)), "ok");
        assert_eq!(outcome(&r(429)), "rate_limited");
        assert_eq!(outcome(&r(400)), "client_error");
        assert_eq!(outcome(&r(503)), "server_error");
        assert_eq!(outcome::<(), ()>(&Err(())), "error");
    }
}
