//! [`BearerAuth`]: the service, one header insert per request.

use std::fmt;
use std::task::{Context, Poll};

use http::header::AUTHORIZATION;
use http::{HeaderValue, Request};
use tower_layer::Layer;
use tower_service::Service;
use tracing::Instrument;
use tracing::instrument::Instrumented;

use super::layer::BearerAuthLayer;

/// The service made by [`BearerAuthLayer`]. See the [module docs](crate::bearer).
#[derive(Clone)]
pub struct BearerAuth<S> {
    pub(super) inner: S,
    pub(super) header: HeaderValue,
    pub(super) overwrite: bool,
}

impl<S> BearerAuth<S> {
    /// Wraps `inner` with the credential of `layer`.
    pub fn new(inner: S, layer: &BearerAuthLayer) -> Self {
        layer.layer(inner)
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes `self`, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: fmt::Debug> fmt::Debug for BearerAuth<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BearerAuth")
            .field("inner", &self.inner)
            .field("key", &"[REDACTED]")
            .field("overwrite", &self.overwrite)
            .finish()
    }
}

impl<S, B> Service<Request<B>> for BearerAuth<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Instrumented<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // A lookup and an insert: measured ~10 ns faster than `HeaderMap::entry`, whose
        // `Entry` value is moved through the call (benches/auth.rs, 2026-12-03).
        if self.overwrite || !req.headers().contains_key(AUTHORIZATION) {
            req.headers_mut().insert(AUTHORIZATION, self.header.clone());
        }
        // The layer's span (`tower_deepseek_core::trace`): no outcome is recorded, since the
        // inner service's answer may be of any type.
        let span = tracing::debug_span!(target: "tower_deepseek_auth", "deepseek.auth", deepseek.layer = "auth");
        tower_deepseek_core::trace::in_scope(&span, || self.inner.call(req)).instrument(span)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::{ServiceExt, service_fn};

    fn echo_auth() -> impl Service<
        Request<()>,
        Response = Option<HeaderValue>,
        Error = Infallible,
        Future = impl Future<Output = Result<Option<HeaderValue>, Infallible>>,
    > + Clone {
        service_fn(|req: Request<()>| async move {
            Ok::<_, Infallible>(req.headers().get(AUTHORIZATION).cloned())
        })
    }

    #[tokio::test]
    async fn injects_a_sensitive_bearer_header() {
        let svc = BearerAuthLayer::new("sk-abc").unwrap().layer(echo_auth());
        let got = svc.oneshot(Request::new(())).await.unwrap().unwrap();
        assert_eq!(got, "Bearer sk-abc");
        assert!(got.is_sensitive());
    }

    #[tokio::test]
    async fn keeps_an_existing_header_unless_told_to_overwrite() {
        let layer = BearerAuthLayer::new("sk-abc").unwrap();
        let req = || {
            Request::builder()
                .header(AUTHORIZATION, "Bearer caller")
                .body(())
                .unwrap()
        };
        let kept = layer.layer(echo_auth()).oneshot(req()).await.unwrap();
        assert_eq!(kept.unwrap(), "Bearer caller");
        let replaced = layer
            .clone()
            .overwrite(true)
            .layer(echo_auth())
            .oneshot(req())
            .await
            .unwrap();
        assert_eq!(replaced.unwrap(), "Bearer sk-abc");
    }
}
