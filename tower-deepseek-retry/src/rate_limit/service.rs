//! The [`RateLimit`](crate::RateLimit) service.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tower_deepseek_core::BoxError;
use tower_deepseek_core::body::{Buffered, ReplayBody};
use tower_deepseek_core::meta::TenantId;
use tower_deepseek_core::protocol::ShareVerdict;
use tower_deepseek_core::trace::InSpan;
use tower_deepseek_core::view::ChatView;
use tower_service::Service;

use super::body::ResponseBody;
use super::future::{Kind, ResponseFuture};
use super::state::*;

/// Paces requests and tokens per minute. See the [module docs](super).
#[derive(Debug)]
pub struct RateLimit<S> {
    pub(crate) inner: S,
    pub(crate) shared: Arc<Shared>,
}

impl<S: Clone> Clone for RateLimit<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S> RateLimit<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for RateLimit<S>
where
    S: Service<Request<ReplayBody<ReqB>>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    ReqB: Body + Unpin + Send + 'static,
    ReqB::Data: Send,
    ReqB::Error: Into<BoxError>,
    ResB: Body<Data = Bytes>,
    ResB::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = BoxError;
    type Future = InSpan<ResponseFuture<S::Future, ResB>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        // The layer's span: its time includes the wait for a permit.
        let span = tracing::debug_span!(target: "tower_deepseek_retry", "deepseek.rate_limit", deepseek.layer = "rate_limit", deepseek.outcome = tracing::field::Empty);
        if !shared.needs_body() && !shared.is_fleet() {
            // Fast path: no body to read; admitted at once unless the key must queue.
            let key = shared.key_hash(None, req.extensions().get::<TenantId>());
            if let Some(admitted) = shared.admit_now(key) {
                let fut = tower_deepseek_core::trace::in_scope(&span, || {
                    inner.call(req.map(ReplayBody::passthrough))
                });
                let fut = ResponseFuture {
                    kind: Kind::Fast {
                        fut,
                        shared,
                        admitted: Some(admitted),
                    },
                };
                return InSpan::new(fut, span);
            }
        }
        let fut = ResponseFuture {
            kind: Kind::Slow {
                fut: Box::pin(async move {
                    let (mut parts, body) = req.into_parts();
                    if shared.needs_body() {
                        // The token settle reads the answer's usage: the layer below that
                        // classifies it (the breaker) shares its reading.
                        parts.extensions.insert(ShareVerdict);
                    }
                    let tenant = parts.extensions.get::<TenantId>();
                    let (body, key, estimate) = if shared.needs_body() {
                        let limit = shared.cfg.body_limit;
                        match tower_deepseek_core::body::buffer(body, limit).await? {
                            Buffered::Complete(b) => {
                                // The request parsed once for every layer: the view a layer
                                // above left for this very body, else parsed here and left for
                                // the layers below. A body that is not JSON is estimated by
                                // its size alone.
                                let view =
                                    ChatView::get_or_parse(&mut parts.extensions, b.bytes()).ok();
                                let tenant = parts.extensions.get::<TenantId>();
                                let model = view.as_ref().and_then(ChatView::model);
                                let max_tokens = view
                                    .as_ref()
                                    .and_then(ChatView::max_tokens)
                                    .unwrap_or(shared.cfg.default_max_tokens);
                                let est = b.bytes().len() as u64 / 4 + max_tokens;
                                let key = shared.key(model.as_deref(), tenant);
                                (ReplayBody::buffered(b), key, est)
                            }
                            Buffered::Overflow(o) => {
                                let est = limit as u64 / 4 + shared.cfg.default_max_tokens;
                                let key = shared.key(None, tenant);
                                (ReplayBody::overflow(o), key, est)
                            }
                        }
                    } else {
                        (ReplayBody::passthrough(body), shared.key(None, tenant), 0)
                    };
                    let admitted = shared.admit(key, estimate).await?;
                    let result = inner.call(Request::from_parts(parts, body)).await;
                    shared.finish(admitted, result)
                }),
            },
        };
        InSpan::new(fut, span)
    }
}
