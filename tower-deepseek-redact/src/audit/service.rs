//! [`Audit`], the service: gathers what is known when the call starts and wraps the request
//! body so that its bytes can be hashed.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tower_deepseek_core::BoxError;
use tower_deepseek_core::body::ObservedBody;
use tower_deepseek_core::protocol::{
    ClientIp, CollectCallFacts, PeerAddr, RequestId, TenantId, X_REQUEST_ID,
};
use tower_deepseek_core::trace::InSpan;
use tower_deepseek_core::view::ViewSlot;
use tower_service::Service;

#[cfg(doc)]
use super::AuditLayer;
use super::body::ResponseBody;
use super::date::rfc3339_bytes;
use super::future::ResponseFuture;
use super::layer::AuditShared;
use super::record::{Facts, Guard, Pending};
use super::recorder::{AuditRequestBody, PromptRecorder, RequestTap};

/// The service of [`AuditLayer`]. See the [module docs](super).
#[derive(Clone)]
pub struct Audit<S> {
    pub(super) inner: S,
    pub(super) shared: Arc<AuditShared>,
}

impl<S> fmt::Debug for Audit<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Audit").finish_non_exhaustive()
    }
}

impl<S> Audit<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Audit<S>
where
    S: Service<Request<AuditRequestBody<ReqBody>>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    ReqBody: Body<Data = Bytes>,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes>,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = BoxError;
    type Future = InSpan<ResponseFuture<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // The layer's span (`tower_deepseek_core::trace`), entered around the work below.
        let span = tracing::debug_span!(target: "tower_deepseek_redact", "deepseek.audit", deepseek.layer = "audit", deepseek.outcome = tracing::field::Empty);
        let fut = tower_deepseek_core::trace::in_scope(&span, || {
            let shared = &self.shared;
            if shared.refuse() {
                return ResponseFuture::new(None, Guard(None), shared.classifier);
            }
            // Every record has a request id: the caller's (extension or `x-request-id`), or a new
            // one, which is also sent upstream so that both sides log the same id.
            let mut req = req;
            tower_deepseek_core::meta::ensure_request_id(&mut req, &X_REQUEST_ID, true);
            let ext = req.extensions();
            let h = req.headers();
            let request_id = ext.get::<RequestId>().cloned();
            let client_ip = ext
                .get::<ClientIp>()
                .map(|c| c.0)
                .or_else(|| ext.get::<PeerAddr>().map(|p| p.0.ip()));
            let tenant = ext
                .get::<TenantId>()
                .map(|t| shared.short_hash(b"tenant:", t.as_str().as_bytes()));
            let key_id = h
                .get(http::header::AUTHORIZATION)
                .map(|v| shared.short_hash(b"key:", v.as_bytes()));
            let recorder = PromptRecorder::default();
            let record = Facts {
                timestamp: rfc3339_bytes(SystemTime::now()),
                request_id,
                client_ip,
                tenant,
                key_id,
                method: req.method().clone(),
                endpoint: req.uri().path().to_owned(),
                model: None,
                prompt_hash: None,
                status: None,
                outcome: "",
                latency_ms: 0,
                prompt_tokens: None,
                completion_tokens: None,
                cache_hit_tokens: None,
                pii: None,
                cache: None,
                retries: None,
                breaker: None,
                cost: None,
            };
            // The layers below that parse the request (redact, cache, rate limiter) leave their
            // view of the body sent here: the model of a failed call is read from it, not parsed.
            let views = ViewSlot::new();
            let pending = Pending {
                shared: shared.clone(),
                record,
                started: Instant::now(),
                recorder: recorder.clone(),
                cost: None,
                views: views.clone(),
            };
            let (mut parts, body) = req.into_parts();
            parts.extensions.insert(recorder.clone());
            parts.extensions.insert(views);
            // Ask the retry and breaker layers below for their facts (attempts, breaker state).
            parts.extensions.insert(CollectCallFacts);
            let body = ObservedBody::new(body, RequestTap { recorder });
            let fut = self.inner.call(Request::from_parts(parts, body));
            ResponseFuture::new(Some(fut), Guard(Some(Box::new(pending))), shared.classifier)
        });
        InSpan::new(fut, span)
    }
}
