//! Without the `otel` feature: the same calls, doing nothing; an `[otel]` table is refused.

use std::convert::Infallible;
use std::sync::Arc;

use http::{Response, StatusCode};
use tower_deepseek::core::classify::{ResponseSummary, StreamEnd};

use super::OtelConfig;

/// Never built: a gateway without the feature refuses an `[otel]` table.
#[derive(Debug)]
pub(crate) struct Tracing(Infallible);

impl Tracing {
    pub(crate) fn new(_cfg: &OtelConfig) -> Result<Self, String> {
        Err("this gateway was built without the `otel` feature: rebuild with `--features otel`, or remove the [otel] table".to_owned())
    }

    pub(crate) async fn shutdown(&self) {
        match self.0 {}
    }
}

/// Never built (there is no [`Tracing`] to make it from).
#[derive(Debug, Clone)]
pub(crate) struct TraceLayer(Infallible);

impl TraceLayer {
    pub(crate) fn new(tracing: Arc<Tracing>) -> Self {
        match tracing.0 {}
    }
}

impl<S> tower::Layer<S> for TraceLayer {
    type Service = S;

    fn layer(&self, _inner: S) -> S {
        match self.0 {}
    }
}

/// Nothing to trace.
#[derive(Clone, Default)]
pub(crate) struct CallTrace;

impl CallTrace {
    pub(crate) fn enter_stack(&self, _parts: &mut http::request::Parts, _body: &[u8]) {}
    pub(crate) fn in_stack<F>(&self, fut: F) -> F {
        fut
    }
    pub(crate) fn on_head<B>(&self, _res: &Response<B>) {}
    pub(crate) fn on_end(
        &self,
        _status: StatusCode,
        _end: &StreamEnd,
        _s: Option<&ResponseSummary>,
    ) {
    }
}

/// The upstream client as it is.
pub(crate) fn traced<S>(inner: S) -> S {
    inner
}
