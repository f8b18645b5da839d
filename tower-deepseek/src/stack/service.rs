//! The statically typed pieces the recommended stack is made of: [`Optional`], [`Left`] and
//! [`Right`] (one [`Branch`] type), [`Auth`] and [`PerTenant`], and their futures.
//!
//! They are public so that the stack's type can be named, and so that a stack of another
//! shape can be composed from them (see [`Optional`]).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use http_body_util::Either;
use pin_project_lite::pin_project;
use tower::util::Oneshot;
use tower_deepseek_core::BoxError;
use tower_deepseek_core::meta::TenantId;
use tower_service::Service;

/// One of two services taking the same request: a layer's service (`On`) or the path around
/// it (`Off`), chosen when the stack is built.
///
/// Both answer with a response whose body is an [`http_body_util::Either`] (`Left` from the
/// layer, `Right` from the path around it), and fail with a [`BoxError`]; `poll_ready` and
/// `call` go to the chosen service, and the future is an enum of the two futures (no box).
///
/// A layer that changes the request body type (most do: a buffered body, a replayable body)
/// sees its inner service through a [`Left`], and the path around it through a [`Right`], so
/// that the service below takes one request body type, an `Either` of the two:
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::{Either, Full};
/// use tower::{Layer, ServiceExt, service_fn};
/// use tower_deepseek::cache::CacheLayer;
/// use tower_deepseek::core::body::BufferedBody;
/// use tower_deepseek::stack::service::{Left, Optional, Right};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_deepseek::BoxError> {
/// // The service below the (optional) cache takes either the cache's buffered body or the
/// // caller's body.
/// let below = service_fn(|_req: http::Request<Either<BufferedBody, Full<Bytes>>>| async {
///     Ok::<_, tower_deepseek::BoxError>(http::Response::new(Full::new(Bytes::from_static(b"{}"))))
/// });
/// let cache_on = true;
/// let svc = if cache_on {
///     Optional::On(CacheLayer::new().layer(Left::<_, Full<Bytes>>::new(below)))
/// } else {
///     Optional::Off(Right::<_, BufferedBody>::new(below))
/// };
/// let res = svc.oneshot(http::Request::new(Full::new(Bytes::from_static(b"{}")))).await?;
/// assert_eq!(res.status(), 200);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub enum Optional<A, O> {
    /// The layer is on: its service.
    On(A),
    /// The layer is off: the path around it.
    Off(O),
}

impl<A, O, B, RA, RO> Service<Request<B>> for Optional<A, O>
where
    A: Service<Request<B>, Response = Response<RA>>,
    A::Error: Into<BoxError>,
    O: Service<Request<B>, Response = Response<RO>>,
    O::Error: Into<BoxError>,
{
    type Response = Response<Either<RA, RO>>;
    type Error = BoxError;
    type Future = ResponseFuture<A::Future, O::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            Optional::On(s) => s.poll_ready(cx).map_err(Into::into),
            Optional::Off(s) => s.poll_ready(cx).map_err(Into::into),
        }
    }

    #[inline]
    fn call(&mut self, req: Request<B>) -> Self::Future {
        let kind = match self {
            Optional::On(s) => Kind::On { fut: s.call(req) },
            Optional::Off(s) => Kind::Off { fut: s.call(req) },
        };
        ResponseFuture { kind }
    }
}

pin_project! {
    /// The response future of [`Optional`].
    pub struct ResponseFuture<FA, FO> {
        #[pin]
        kind: Kind<FA, FO>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<FA, FO> {
        On { #[pin] fut: FA },
        Off { #[pin] fut: FO },
    }
}

impl<FA, FO> fmt::Debug for ResponseFuture<FA, FO> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<FA, FO, RA, RO, EA, EO> Future for ResponseFuture<FA, FO>
where
    FA: Future<Output = Result<Response<RA>, EA>>,
    FO: Future<Output = Result<Response<RO>, EO>>,
    EA: Into<BoxError>,
    EO: Into<BoxError>,
{
    type Output = Result<Response<Either<RA, RO>>, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::On { fut } => fut
                .poll(cx)
                .map(|r| r.map(|res| res.map(Either::Left)).map_err(Into::into)),
            KindProj::Off { fut } => fut
                .poll(cx)
                .map(|r| r.map(|res| res.map(Either::Right)).map_err(Into::into)),
        }
    }
}

/// The inner service of a layer that is on: hands the layer's request body `X` down as
/// `Either::Left(X)`. `B` is the request body of the path around the layer ([`Right`]).
pub type Left<S, B> = Branch<S, B, OnLeft>;

/// The path around a layer that is off: hands the caller's request body `B` down as
/// `Either::Right(B)`. `X` is the request body the layer would have handed down ([`Left`]).
pub type Right<S, X> = Branch<S, X, OnRight>;

/// One side of the `Either` request body that the service below a stage takes: [`Left`] or
/// [`Right`]. `O` is the body type of the other side; `P` ([`OnLeft`] or [`OnRight`]) says
/// which side this one is.
pub struct Branch<S, O, P> {
    inner: S,
    _body: PhantomData<fn(O, P)>,
}

/// Which side of an `Either` a [`Branch`] puts its request body on.
pub trait Side<T, O> {
    /// The `Either` the body goes into (`Either<T, O>` on the left, `Either<O, T>` on the right).
    type Body;
    /// Puts `body` on this side.
    fn place(body: T) -> Self::Body;
}

/// The left side: the body of a layer that is on.
#[derive(Debug, Clone, Copy)]
pub enum OnLeft {}

/// The right side: the caller's body, around a layer that is off.
#[derive(Debug, Clone, Copy)]
pub enum OnRight {}

impl<T, O> Side<T, O> for OnLeft {
    type Body = Either<T, O>;
    #[inline]
    fn place(body: T) -> Either<T, O> {
        Either::Left(body)
    }
}

impl<T, O> Side<T, O> for OnRight {
    type Body = Either<O, T>;
    #[inline]
    fn place(body: T) -> Either<O, T> {
        Either::Right(body)
    }
}

impl<S, O, P> Branch<S, O, P> {
    /// Wraps `inner`, which takes the `Either` of both sides' bodies.
    pub const fn new(inner: S) -> Self {
        Self {
            inner,
            _body: PhantomData,
        }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Consumes `self`, returning the wrapped service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, O, P> Clone for Branch<S, O, P> {
    fn clone(&self) -> Self {
        Self::new(self.inner.clone())
    }
}

impl<S: fmt::Debug, O, P> fmt::Debug for Branch<S, O, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Branch").field(&self.inner).finish()
    }
}

impl<S, O, P, T> Service<Request<T>> for Branch<S, O, P>
where
    P: Side<T, O>,
    S: Service<Request<P::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Request<T>) -> S::Future {
        self.inner.call(req.map(P::place))
    }
}

/// The credential stage: OAuth2, a static key, or none. Unlike [`Optional`], the response
/// passes through unchanged (no auth layer changes the response body).
#[derive(Clone, Debug)]
pub enum Auth<O, K, N> {
    /// OAuth2 client credentials.
    OAuth2(O),
    /// A static API key.
    Bearer(K),
    /// No credential.
    None(N),
}

impl<O, K, N, B, R> Service<Request<B>> for Auth<O, K, N>
where
    O: Service<Request<B>, Response = Response<R>>,
    O::Error: Into<BoxError>,
    K: Service<Request<B>, Response = Response<R>>,
    K::Error: Into<BoxError>,
    N: Service<Request<B>, Response = Response<R>>,
    N::Error: Into<BoxError>,
{
    type Response = Response<R>;
    type Error = BoxError;
    type Future = AuthFuture<O::Future, K::Future, N::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            Auth::OAuth2(s) => s.poll_ready(cx).map_err(Into::into),
            Auth::Bearer(s) => s.poll_ready(cx).map_err(Into::into),
            Auth::None(s) => s.poll_ready(cx).map_err(Into::into),
        }
    }

    #[inline]
    fn call(&mut self, req: Request<B>) -> Self::Future {
        let kind = match self {
            Auth::OAuth2(s) => AuthKind::OAuth2 { fut: s.call(req) },
            Auth::Bearer(s) => AuthKind::Bearer { fut: s.call(req) },
            Auth::None(s) => AuthKind::None { fut: s.call(req) },
        };
        AuthFuture { kind }
    }
}

pin_project! {
    /// The response future of [`Auth`].
    pub struct AuthFuture<FO, FK, FN> {
        #[pin]
        kind: AuthKind<FO, FK, FN>,
    }
}

pin_project! {
    #[project = AuthKindProj]
    enum AuthKind<FO, FK, FN> {
        OAuth2 { #[pin] fut: FO },
        Bearer { #[pin] fut: FK },
        None { #[pin] fut: FN },
    }
}

impl<FO, FK, FN> fmt::Debug for AuthFuture<FO, FK, FN> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthFuture").finish_non_exhaustive()
    }
}

impl<FO, FK, FN, T, EO, EK, EN> Future for AuthFuture<FO, FK, FN>
where
    FO: Future<Output = Result<T, EO>>,
    FK: Future<Output = Result<T, EK>>,
    FN: Future<Output = Result<T, EN>>,
    EO: Into<BoxError>,
    EK: Into<BoxError>,
    EN: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            AuthKindProj::OAuth2 { fut } => fut.poll(cx).map_err(Into::into),
            AuthKindProj::Bearer { fut } => fut.poll(cx).map_err(Into::into),
            AuthKindProj::None { fut } => fut.poll(cx).map_err(Into::into),
        }
    }
}

/// Routes each request to the service of its tenant ([`TenantId`] in the request's
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
