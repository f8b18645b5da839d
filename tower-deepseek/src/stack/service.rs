//! The pieces the recommended stack is made of: one boxed service per stage, joined by one
//! body type ([`StackBody`]), and [`PerTenant`].
//!
//! Each layer of the stack wraps a [`BoxedStage`]: a service that takes a request with any body
//! (a layer's buffered or replayable body, or the caller's) and hands it down boxed as a
//! [`StackBody`]. The layer's service is then boxed in turn, its answer's body boxed as a
//! [`StackBody`], and becomes the inner service of the next layer up. Every stage therefore has
//! the same type, whatever the layers set: adding a layer does not grow the stack's type, and
//! a program compiles each layer once, not once per combination.
//!
//! They are public so that a stack of another shape can be composed from them:
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use tower::{ServiceExt, service_fn};
//! use tower_deepseek::cache::CacheLayer;
//! use tower_deepseek::stack::service::{StageService, stage};
//! use tower_deepseek::stack::StackBody;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_deepseek::BoxError> {
//! let below = service_fn(|_req: http::Request<StackBody>| async {
//!     let body = Full::new(Bytes::from_static(b"{}"));
//!     Ok::<_, tower_deepseek::BoxError>(http::Response::new(body))
//! });
//! // Any service becomes a stage; any layer over a stage makes the next stage.
//! let svc = stage(&CacheLayer::new(), StageService::new(below));
//! let req = http::Request::new(Full::new(Bytes::from_static(b"{}")).map_err(Into::into).boxed_unsync());
//! let res = svc.oneshot(req).await?;
//! assert_eq!(res.status(), 200);
//! # Ok(()) }
//! ```

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use pin_project_lite::pin_project;
use tower::util::{BoxCloneSyncService, Oneshot};
use tower_deepseek_core::BoxError;
use tower_deepseek_core::meta::TenantId;
use tower_layer::Layer;
use tower_service::Service;

/// The one body type between the stages of the stack, for requests and answers: a boxed body
/// of [`Bytes`] with boxed errors. A stream stays a stream: boxing forwards every frame, the
/// size hint and the end of stream as they come.
pub type StackBody = UnsyncBoxBody<Bytes, BoxError>;

/// Boxes `body` as a [`StackBody`]; a body that already is one is returned as it is (no
/// second box).
pub fn stack_body<B>(body: B) -> StackBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    match already_boxed(body) {
        Ok(boxed) => boxed,
        Err(body) => body.map_err(Into::into).boxed_unsync(),
    }
}

/// `body` itself when it is a [`StackBody`], else `body` back.
fn already_boxed<B: 'static>(body: B) -> Result<StackBody, B> {
    let mut slot = Some(body);
    if let Some(boxed) = (&mut slot as &mut dyn Any).downcast_mut::<Option<StackBody>>() {
        if let Some(boxed) = boxed.take() {
            return Ok(boxed);
        }
    }
    match slot {
        Some(body) => Err(body),
        None => unreachable!("the slot is emptied only when it held a StackBody"),
    }
}

/// One stage of the stack, boxed: takes and answers [`StackBody`]s. Cloning it clones one box.
pub type Stage = BoxCloneSyncService<Request<StackBody>, Response<StackBody>, BoxError>;

/// Makes `svc` a [`Stage`]: its answers' bodies boxed as [`StackBody`]s (not again when they
/// are already), its errors boxed.
pub fn boxed<S, RB>(svc: S) -> Stage
where
    S: Service<Request<StackBody>, Response = Response<RB>> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    RB: Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<BoxError>,
{
    BoxCloneSyncService::new(BoxAnswer { inner: svc })
}

/// `layer` around the stage `inner`, boxed as the next stage up.
pub fn stage<L, RB>(layer: &L, inner: StageService) -> Stage
where
    L: Layer<StageService>,
    L::Service:
        Service<Request<StackBody>, Response = Response<RB>> + Clone + Send + Sync + 'static,
    <L::Service as Service<Request<StackBody>>>::Error: Into<BoxError>,
    <L::Service as Service<Request<StackBody>>>::Future: Send + 'static,
    RB: Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<BoxError>,
{
    boxed(layer.layer(inner))
}

/// A [`Stage`] as the inner service of a layer: it takes requests with any body (a layer's
/// buffered or replayable body, or the caller's) and hands them down boxed as [`StackBody`]s.
///
/// The service of [`RecommendedStack`](super::RecommendedStack) is one too: it takes the
/// caller's `Request<B>` for any body `B` and answers `Response<StackBody>`.
#[derive(Clone)]
pub struct StageService {
    inner: Stage,
}

impl StageService {
    /// Wraps any service that takes `Request<StackBody>` (boxing it: see [`boxed`]).
    pub fn new<S, RB>(svc: S) -> Self
    where
        S: Service<Request<StackBody>, Response = Response<RB>> + Clone + Send + Sync + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
        RB: Body<Data = Bytes> + Send + 'static,
        RB::Error: Into<BoxError>,
    {
        Self::from_stage(boxed(svc))
    }

    /// Wraps a stage that is already boxed.
    pub fn from_stage(inner: Stage) -> Self {
        Self { inner }
    }

    /// The boxed stage.
    pub fn into_stage(self) -> Stage {
        self.inner
    }
}

impl fmt::Debug for StageService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StageService").finish_non_exhaustive()
    }
}

impl<B> Service<Request<B>> for StageService
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<StackBody>;
    type Error = BoxError;
    type Future = <Stage as Service<Request<StackBody>>>::Future;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Request<B>) -> Self::Future {
        self.inner.call(req.map(stack_body))
    }
}

/// Boxes the answer's body of the service it wraps, and its errors.
#[derive(Clone)]
struct BoxAnswer<S> {
    inner: S,
}

impl<S, RB> Service<Request<StackBody>> for BoxAnswer<S>
where
    S: Service<Request<StackBody>, Response = Response<RB>>,
    S::Error: Into<BoxError>,
    RB: Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<BoxError>,
{
    type Response = Response<StackBody>;
    type Error = BoxError;
    type Future = BoxAnswerFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Request<StackBody>) -> Self::Future {
        BoxAnswerFuture {
            fut: self.inner.call(req),
        }
    }
}

pin_project! {
    struct BoxAnswerFuture<F> {
        #[pin]
        fut: F,
    }
}

impl<F, RB, E> Future for BoxAnswerFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
    E: Into<BoxError>,
    RB: Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<BoxError>,
{
    type Output = Result<Response<StackBody>, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project()
            .fut
            .poll(cx)
            .map(|r| r.map(|res| res.map(stack_body)).map_err(Into::into))
    }
}

/// Sends each request to the service of its tenant (a [`TenantId`] in the request's
/// extensions) when that tenant has one of its own, else to the default service.
///
/// In the recommended stack it holds one rate limiter per tenant with limits of its own.
/// `poll_ready` polls the default service; a request routed to a tenant's own service is
/// driven through `poll_ready` and `call` on a clone of it ([`Oneshot`]), since which
/// service serves a request is only known once it is there. Without tenant services this is
/// the default service and one emptiness check per request.
pub struct PerTenant<S> {
    default: S,
    own: Arc<HashMap<TenantId, S>>,
}

impl<S> PerTenant<S> {
    /// `default` for every request, `own[tenant]` for the requests of `tenant`.
    pub fn new(default: S, own: HashMap<TenantId, S>) -> Self {
        Self {
            default,
            own: Arc::new(own),
        }
    }

    /// The default service.
    pub fn get_ref(&self) -> &S {
        &self.default
    }
}

impl<S: Clone> Clone for PerTenant<S> {
    fn clone(&self) -> Self {
        Self {
            default: self.default.clone(),
            own: self.own.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for PerTenant<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PerTenant")
            .field("default", &self.default)
            .field("tenants", &self.own.len())
            .finish()
    }
}

impl<S, B> Service<Request<B>> for PerTenant<S>
where
    S: Service<Request<B>> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = PerTenantFuture<S, Request<B>>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.default.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let own = if self.own.is_empty() {
            None
        } else {
            req.extensions()
                .get::<TenantId>()
                .and_then(|t| self.own.get(t))
        };
        let kind = match own {
            Some(svc) => PerTenantKind::Own {
                fut: Oneshot::new(svc.clone(), req),
            },
            None => PerTenantKind::Default {
                fut: self.default.call(req),
            },
        };
        PerTenantFuture { kind }
    }
}

pin_project! {
    /// The response future of [`PerTenant`].
    pub struct PerTenantFuture<S: Service<Req>, Req> {
        #[pin]
        kind: PerTenantKind<S, Req>,
    }
}

pin_project! {
    #[project = PerTenantKindProj]
    enum PerTenantKind<S: Service<Req>, Req> {
        Default { #[pin] fut: S::Future },
        Own { #[pin] fut: Oneshot<S, Req> },
    }
}

impl<S: Service<Req>, Req> fmt::Debug for PerTenantFuture<S, Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PerTenantFuture").finish_non_exhaustive()
    }
}

impl<S, Req> Future for PerTenantFuture<S, Req>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            PerTenantKindProj::Default { fut } => fut.poll(cx).map_err(Into::into),
            PerTenantKindProj::Own { fut } => fut.poll(cx).map_err(Into::into),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    #[test]
    fn a_stack_body_is_not_boxed_twice() {
        let once = stack_body(Full::new(Bytes::from_static(b"x")));
        assert!(already_boxed(once).is_ok());
        assert!(already_boxed(Full::new(Bytes::from_static(b"x"))).is_err());
    }
}
