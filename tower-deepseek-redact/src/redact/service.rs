//! [`Redact`]: buffers the request, masks it, and wraps the answer in a restoring body.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::{Request, Response};
use http_body::Body;
use tower_deepseek_core::BoxError;
use tower_deepseek_core::body::{BufferedBody, buffer_or_reject};
use tower_deepseek_core::meta::TenantId;
use tower_deepseek_core::trace::InSpan;
use tower_deepseek_core::view::ChatView;
use tower_layer::Layer;
use tower_service::Service;

use super::body::ResponseBody;
use super::config::{NonJsonPolicy, UnparseablePolicy};
use super::error::InvalidJsonBody;
use super::future::{PrepError, Prepared, ResponseFuture};
use super::layer::{RedactLayer, Shared};
use super::request::{
    BodyError, invalid_reason, is_completion_path, is_json_content_type, redact_view,
};
use crate::audit::PromptRecorder;
use crate::redactor::{RedactContext, Vault};

/// The service of [`RedactLayer`]: see there.
#[derive(Clone)]
pub struct Redact<S> {
    pub(super) inner: S,
    pub(super) shared: Arc<Shared>,
}

impl<S> fmt::Debug for Redact<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redact").finish_non_exhaustive()
    }
}

impl<S> Redact<S> {
    /// Wraps `inner` with the default layer.
    pub fn new(inner: S) -> Self {
        RedactLayer::new().layer(inner)
    }

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

async fn prepare<B>(shared: Arc<Shared>, req: Request<B>) -> Result<Prepared, BoxError>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let (mut parts, body) = req.into_parts();
    // Boxed: `buffer_or_reject` needs `Unpin`, and a stack pin would tie the error type to a
    // local lifetime, which makes the future lose `Send` in generic callers.
    let body = Box::pin(body);
    let bytes = buffer_or_reject(body, shared.limit).await?;
    let raw = bytes.bytes().clone();
    let pass = |parts: http::request::Parts, bytes: BufferedBody| {
        if let Some(r) = parts.extensions.get::<PromptRecorder>() {
            r.record(bytes.bytes().clone());
        }
        Ok((Request::from_parts(parts, bytes), Vault::new()))
    };
    if raw.is_empty() {
        return pass(parts, bytes);
    }
    // Chat and FIM bodies are parsed whatever their label; so are all bodies under
    // `NonJsonPolicy::Reject`.
    let strict = is_completion_path(parts.uri.path());
    let pass_unparseable = if strict {
        shared.unparseable == UnparseablePolicy::PassThroughUnsafe
    } else {
        shared.non_json == NonJsonPolicy::PassThrough
    };
    if !strict && pass_unparseable && !is_json_content_type(&parts.headers) {
        return pass(parts, bytes);
    }
    let tenant = parts
        .extensions
        .get::<TenantId>()
        .map(|t| t.as_str().to_owned());
    let mut ctx = RedactContext::new(tenant.as_deref());
    // The request parsed once for every layer: the view a layer above left for this very
    // body, else parsed here. Below, the view of the body sent replaces it.
    let parsed = ChatView::get_or_parse(&mut parts.extensions, &raw)
        .map_err(|e| BodyError::Invalid(invalid_reason(e)));
    let sent = match parsed
        .and_then(|view| redact_view(&shared.redactor, &shared.extra_paths, &view, &mut ctx))
    {
        Ok(n) => n,
        Err(BodyError::Invalid(reason)) if pass_unparseable => {
            if strict {
                metrics::counter!("deepseek_redact_unparseable_total", "action" => "passed", "reason" => reason.as_str())
                    .increment(1);
                tracing::warn!(target: "tower_deepseek_redact", %reason, "chat or FIM body that cannot be parsed forwarded unmasked (unparseable = pass_through_unsafe)");
            }
            return pass(parts, bytes);
        }
        Err(BodyError::Invalid(reason)) => {
            metrics::counter!("deepseek_redact_unparseable_total", "action" => "refused", "reason" => reason.as_str())
                .increment(1);
            tracing::debug!(target: "tower_deepseek_redact", %reason, "request body that cannot be parsed refused");
            return Err(Box::new(InvalidJsonBody::new(reason)));
        }
        Err(BodyError::Blocked(b)) => {
            metrics::counter!("deepseek_redact_blocked_total", "entity" => b.entity.to_string())
                .increment(1);
            tracing::info!(target: "tower_deepseek_redact", entity = %b.entity, "request refused: blocked entity type");
            return Err(Box::new(b));
        }
    };
    for (entity, n) in ctx.counts.iter() {
        metrics::counter!("deepseek_redact_entities_total", "entity" => entity.to_string())
            .increment(n as u64);
    }
    if !ctx.counts.is_empty() {
        tracing::debug!(target: "tower_deepseek_redact", entities = ctx.counts.total(), placeholders = ctx.vault.len(), "request redacted");
    }
    let body = if sent.describes(&raw) {
        bytes
    } else {
        if parts.headers.contains_key(CONTENT_LENGTH) {
            parts.headers.insert(CONTENT_LENGTH, sent.len().into());
        }
        BufferedBody::new(sent.bytes().clone())
    };
    sent.publish(&mut parts.extensions);
    if let Some(r) = parts.extensions.get::<PromptRecorder>() {
        r.record(body.bytes().clone());
        r.record_pii(&ctx.counts);
    }
    parts.extensions.insert(ctx.counts);
    Ok((Request::from_parts(parts, body), ctx.vault))
}

async fn prepare_boxed<B>(shared: Arc<Shared>, req: Request<B>) -> Result<Prepared, PrepError>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    prepare(shared, req).await.map_err(PrepError)
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Redact<S>
where
    S: Service<Request<BufferedBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    ReqBody: Body + Send + 'static,
    ReqBody::Data: Send,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = BoxError;
    type Future = InSpan<ResponseFuture<S>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // The layer's span (`tower_deepseek_core::trace`), entered around the work below.
        let span = tracing::debug_span!(target: "tower_deepseek_redact", "deepseek.redact", deepseek.layer = "redact", deepseek.outcome = tracing::field::Empty);
        let fut = tower_deepseek_core::trace::in_scope(&span, || {
            let clone = self.inner.clone();
            let inner = std::mem::replace(&mut self.inner, clone);
            ResponseFuture::new(Box::pin(prepare_boxed(self.shared.clone(), req)), inner)
        });
        InSpan::new(fut, span)
    }
}
