//! [`Review`], the service: fixes the request id, observes the request as it passes down,
//! and hands the call's state to the response future.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tower_deepseek_core::BoxError;
use tower_deepseek_core::body::{BodyEnd, BodyObserver, ObservedBody};
use tower_deepseek_core::chat::ChatRequest;
use tower_deepseek_core::protocol::{ModelHint, RequestId, TenantId, X_REQUEST_ID};
use tower_deepseek_core::trace::InSpan;
use tower_service::Service;

#[cfg(doc)]
use super::ReviewLayer;
use super::future::ResponseFuture;
use super::handle::{CallEntry, ReviewShared};
use super::record::SeenRequest;

/// The service of [`ReviewLayer`]. See the [module docs](super).
#[derive(Clone)]
pub struct Review<S> {
    pub(super) inner: S,
    pub(super) shared: Arc<ReviewShared>,
}

impl<S> fmt::Debug for Review<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Review").finish_non_exhaustive()
    }
}

impl<S> Review<S> {
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

#[derive(Default)]
struct Seen {
    chunks: Vec<Bytes>,
    len: usize,
    over: bool,
    ended: bool,
}

/// Observes the request body as the inner service reads it: keeps the `Bytes` handles (no
/// copy) up to the layer's byte limit.
pub struct RequestTap {
    seen: Arc<Mutex<Seen>>,
    limit: usize,
}

impl fmt::Debug for RequestTap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestTap").finish_non_exhaustive()
    }
}

impl BodyObserver for RequestTap {
    fn on_data(&mut self, chunk: &Bytes) {
        let mut g = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if g.over {
            return;
        }
        g.len += chunk.len();
        if g.len > self.limit {
            g.over = true;
            g.chunks = Vec::new();
        } else {
            g.chunks.push(chunk.clone());
        }
    }

    fn on_end(&mut self, end: BodyEnd<'_>) {
        if matches!(end, BodyEnd::Complete) {
            self.seen.lock().unwrap_or_else(|e| e.into_inner()).ended = true;
        }
    }
}

/// The request body the inner service of [`Review`] receives.
pub type ReviewRequestBody<B> = ObservedBody<B, RequestTap>;

/// A call on its way: what the layer knows before the answer.
pub(super) struct Pending {
    pub(super) shared: Arc<ReviewShared>,
    pub(super) request_id: RequestId,
    pub(super) tenant: Option<TenantId>,
    pub(super) route: String,
    seen: Arc<Mutex<Seen>>,
    hint: Option<ModelHint>,
    pub(super) started: Instant,
    pub(super) timestamp: SystemTime,
}

#[derive(serde::Deserialize)]
struct ModelOnly {
    #[serde(default)]
    model: Option<String>,
}

/// What [`Pending::resolve`] decided.
pub(super) struct Resolved {
    pub(super) model: Option<String>,
    /// The request, when the call is sampled.
    pub(super) sampled: Option<SeenRequest>,
}

impl Pending {
    /// At the response head (or the error): reads the request the inner service read,
    /// remembers the call for feedback, and decides whether it is sampled.
    pub(super) fn resolve(&self) -> Resolved {
        let (body, state) = {
            let g = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            let body = match g.chunks.as_slice() {
                [one] => one.clone(),
                many => Bytes::from(many.concat()),
            };
            (body, (g.over, g.ended))
        };
        let readable = state == (false, true) && !body.is_empty();
        let cheap_model = || {
            self.hint
                .as_ref()
                .map(|h| h.as_str().to_owned())
                .or_else(|| {
                    readable
                        .then(|| serde_json::from_slice::<ModelOnly>(&body).ok())
                        .flatten()
                        .and_then(|m| m.model)
                })
        };
        let s = &self.shared.sampler;
        let tenant = self.tenant.as_ref().map(TenantId::as_str);
        let id = self.request_id.as_str();
        // The model is read in full only for a sampled call, unless a rule needs it to
        // decide.
        let (model, sampled) = if s.uses_model() {
            let model = cheap_model();
            let sampled = s.sampled(id, &self.route, model.as_deref(), tenant);
            (model, sampled.then_some(None))
        } else if s.sampled(id, &self.route, None, tenant) {
            let full = readable
                .then(|| serde_json::from_slice::<ChatRequest>(&body).ok())
                .flatten();
            let model = match &full {
                Some(r) if !r.model.is_empty() => Some(r.model.clone()),
                _ => cheap_model(),
            };
            (model, Some(full))
        } else {
            (cheap_model(), None)
        };
        let sampled = sampled.map(|full| {
            let full = full.or_else(|| {
                readable
                    .then(|| serde_json::from_slice::<ChatRequest>(&body).ok())
                    .flatten()
            });
            match (full, state) {
                (Some(r), _) => SeenRequest::Chat(Box::new(r)),
                (None, (true, _)) => SeenRequest::TooLarge,
                (None, _) if readable => SeenRequest::NotChat,
                (None, _) => SeenRequest::Unseen,
            }
        });
        // The first call with an id owns it: a later call reusing the id (another tenant's
        // included) cannot take it over while the first is remembered.
        self.shared.recent.insert_if_absent(id, || CallEntry {
            tenant: self.tenant.clone(),
            model: model.as_deref().map(Arc::from),
        });
        Resolved { model, sampled }
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Review<S>
where
    S: Service<Request<ReviewRequestBody<ReqBody>>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    ReqBody: Body<Data = Bytes>,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes>,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<super::ResponseBody<ResBody>>;
    type Error = BoxError;
    type Future = InSpan<ResponseFuture<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // The layer's span (`tower_deepseek_core::trace`), entered around the work below.
        let span = tracing::debug_span!(target: "tower_deepseek_redact", "deepseek.review", deepseek.layer = "review", deepseek.outcome = tracing::field::Empty);
        let fut = tower_deepseek_core::trace::in_scope(&span, || {
            let mut req = req;
            // The id that links the review record to the audit record (audit above has set it
            // already; alone, this layer sets it and sends it upstream).
            tower_deepseek_core::meta::ensure_request_id(&mut req, &X_REQUEST_ID, true);
            let ext = req.extensions();
            let request_id = ext
                .get::<RequestId>()
                .cloned()
                .unwrap_or_else(RequestId::generate);
            let seen = Arc::new(Mutex::new(Seen::default()));
            let pending = Pending {
                shared: self.shared.clone(),
                request_id,
                tenant: ext.get::<TenantId>().cloned(),
                route: req.uri().path().to_owned(),
                seen: seen.clone(),
                hint: ext.get::<ModelHint>().cloned(),
                started: Instant::now(),
                timestamp: SystemTime::now(),
            };
            let tap = RequestTap {
                seen,
                limit: self.shared.max_body_bytes,
            };
            let fut = self.inner.call(req.map(|b| ObservedBody::new(b, tap)));
            ResponseFuture::new(fut, Box::new(pending))
        });
        InSpan::new(fut, span)
    }
}
