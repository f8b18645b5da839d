//! One breaker per key (upstream, model, tenant...), over a bounded registry.

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Extensions, HeaderMap, Method, Request, Response, Uri};
use tower_deepseek_core::BoxError;
use tower_deepseek_core::meta::CollectCallFacts;
use tower_layer::Layer;
use tower_service::Service;

use crate::body::ResponseBody;
use crate::future::ResponseFuture;
use crate::state::{Breaker, BreakerHandle, Spec, Stripe};

/// The model a request is for, when a layer or the caller already knows it.
///
/// The breaker never reads the request body (that would mean buffering it). Insert this
/// extension where the model is known (the caller, or a layer that parsed the body) to give the
/// default key its model part:
///
/// ```
/// use tower_deepseek_breaker::ModelHint;
///
/// let mut req = http::Request::new(());
/// req.extensions_mut().insert(ModelHint::new("deepseek-chat"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModelHint(Arc<str>);

impl ModelHint {
    /// A hint for `model`.
    pub fn new(model: impl Into<Arc<str>>) -> Self {
        Self(model.into())
    }

    /// The model.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The parts of a request a key function may look at (everything but the body).
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    /// The method.
    pub method: &'a Method,
    /// The URI (absolute in a client stack).
    pub uri: &'a Uri,
    /// The headers.
    pub headers: &'a HeaderMap,
    /// The extensions (e.g. [`ModelHint`], core's `TenantId`).
    pub extensions: &'a Extensions,
}

impl<'a> RequestHead<'a> {
    /// The head of `req`.
    pub fn of<B>(req: &'a Request<B>) -> Self {
        Self {
            method: req.method(),
            uri: req.uri(),
            headers: req.headers(),
            extensions: req.extensions(),
        }
    }
}

/// Computes the breaker key of a request.
///
/// Implemented for closures `Fn(&RequestHead<'_>) -> K` and by [`DefaultKey`]. The key's
/// `Display` form becomes part of the metric label `breaker` (`name/key`): never put a secret
/// or personal data in it.
pub trait MakeKey: Send + Sync + 'static {
    /// The key type.
    type Key: Clone + Eq + Hash + fmt::Display + Send + Sync + 'static;

    /// The key of a request.
    fn make_key(&self, head: &RequestHead<'_>) -> Self::Key;
}

impl<F, K> MakeKey for F
where
    F: Fn(&RequestHead<'_>) -> K + Send + Sync + 'static,
    K: Clone + Eq + Hash + fmt::Display + Send + Sync + 'static,
{
    type Key = K;

    fn make_key(&self, head: &RequestHead<'_>) -> K {
        self(head)
    }
}

/// The default key: the upstream authority (`host:port` of the URI, or the `Host` header),
/// plus `/<model>` when the request carries a [`ModelHint`].
///
/// A request with neither authority nor `Host` is keyed `default`.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultKey;

impl MakeKey for DefaultKey {
    type Key = String;

    fn make_key(&self, head: &RequestHead<'_>) -> String {
        let authority = head
            .uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| {
                head.headers
                    .get(http::header::HOST)
                    .and_then(|v| v.to_str().ok())
            })
            .unwrap_or("default");
        match head.extensions.get::<ModelHint>() {
            Some(m) => format!("{authority}/{}", m.as_str()),
            None => authority.to_owned(),
        }
    }
}

pub(crate) struct Registry<K> {
    spec: Arc<Spec>,
    /// One stripe per key: a permit holds the `Arc` the registry hands out.
    breakers: moka::sync::Cache<K, Arc<Stripe>>,
}

impl<K> fmt::Debug for Registry<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("name", &self.spec.config.name)
            .field("keys", &self.breakers.entry_count())
            .finish()
    }
}

impl<K> Registry<K>
where
    K: Clone + Eq + Hash + fmt::Display + Send + Sync + 'static,
{
    pub(crate) fn new(spec: Arc<Spec>, max_keys: u64) -> Self {
        Self {
            spec,
            breakers: moka::sync::Cache::new(max_keys),
        }
    }

    fn get(&self, key: &K) -> Arc<Stripe> {
        if let Some(b) = self.breakers.get(key) {
            return b;
        }
        self.breakers.get_with_by_ref(key, || {
            let label: Arc<str> = format!("{}/{}", self.spec.config.name, key).into();
            Stripe::new(Breaker::new(self.spec.clone(), label))
        })
    }
}

/// Applies a [`KeyedCircuitBreaker`]: one breaker per key, each with the same settings, kept in
/// a bounded registry (least recently used keys are dropped beyond
/// [`Builder::max_keys`](crate::Builder::max_keys)). Build it with
/// [`Builder::build_keyed`](crate::Builder::build_keyed).
pub struct KeyedCircuitBreakerLayer<M: MakeKey = DefaultKey> {
    registry: Arc<Registry<M::Key>>,
    make_key: Arc<M>,
}

impl<M: MakeKey> Clone for KeyedCircuitBreakerLayer<M> {
    fn clone(&self) -> Self {
        Self {
            registry: self.registry.clone(),
            make_key: self.make_key.clone(),
        }
    }
}

impl<M: MakeKey> fmt::Debug for KeyedCircuitBreakerLayer<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCircuitBreakerLayer")
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

impl KeyedCircuitBreakerLayer<DefaultKey> {
    pub(crate) fn from_registry(registry: Arc<Registry<String>>, key: DefaultKey) -> Self {
        Self {
            registry,
            make_key: Arc::new(key),
        }
    }

    /// Uses `make_key` instead of [`DefaultKey`] (e.g. a tenant id). Keeps the settings; the
    /// registry starts empty.
    pub fn key_fn<M: MakeKey>(self, make_key: M) -> KeyedCircuitBreakerLayer<M> {
        let max = self.registry.breakers.policy().max_capacity().unwrap_or(1);
        KeyedCircuitBreakerLayer {
            registry: Arc::new(Registry::new(self.registry.spec.clone(), max)),
            make_key: Arc::new(make_key),
        }
    }
}

impl<M: MakeKey> KeyedCircuitBreakerLayer<M> {
    /// A handle on the breaker of `key`, if it exists.
    pub fn handle(&self, key: &M::Key) -> Option<BreakerHandle> {
        self.registry.breakers.get(key).map(|stripe| BreakerHandle {
            breaker: stripe.breaker().clone(),
        })
    }

    /// A handle on the breaker of `key`, creating it (closed) if needed.
    pub fn handle_or_create(&self, key: &M::Key) -> BreakerHandle {
        BreakerHandle {
            breaker: self.registry.get(key).breaker().clone(),
        }
    }

    /// Handles on every breaker currently in the registry.
    pub fn handles(&self) -> Vec<(Arc<M::Key>, BreakerHandle)> {
        self.registry
            .breakers
            .iter()
            .map(|(k, stripe)| {
                let breaker = stripe.breaker().clone();
                (k, BreakerHandle { breaker })
            })
            .collect()
    }
}

impl<S, M: MakeKey> Layer<S> for KeyedCircuitBreakerLayer<M> {
    type Service = KeyedCircuitBreaker<S, M>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedCircuitBreaker {
            inner,
            layer: self.clone(),
        }
    }
}

/// A service guarded by one circuit breaker per key. See [`KeyedCircuitBreakerLayer`].
pub struct KeyedCircuitBreaker<S, M: MakeKey = DefaultKey> {
    inner: S,
    layer: KeyedCircuitBreakerLayer<M>,
}

impl<S: Clone, M: MakeKey> Clone for KeyedCircuitBreaker<S, M> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S: fmt::Debug, M: MakeKey> fmt::Debug for KeyedCircuitBreaker<S, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCircuitBreaker")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}

impl<S, M: MakeKey> KeyedCircuitBreaker<S, M> {
    /// The layer (for handles).
    pub fn layer_ref(&self) -> &KeyedCircuitBreakerLayer<M> {
        &self.layer
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming the breaker service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, M, ReqBody, ResBody> Service<Request<ReqBody>> for KeyedCircuitBreaker<S, M>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    M: MakeKey,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let key = self.layer.make_key.make_key(&RequestHead::of(&req));
        match self.layer.registry.get(&key).try_acquire_owned() {
            Ok(permit) => {
                let facts = req.extensions().get::<CollectCallFacts>().is_some();
                ResponseFuture::called(self.inner.call(req), permit, facts)
            }
            Err(open) => ResponseFuture::rejected(open),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(req: &Request<()>) -> String {
        DefaultKey.make_key(&RequestHead::of(req))
    }

    #[test]
    fn default_key_is_authority_then_host_then_default_plus_model_hint() {
        let mut req = Request::new(());
        *req.uri_mut() = "https://api.deepseek.com/chat/completions".parse().unwrap();
        assert_eq!(key(&req), "api.deepseek.com");
        req.extensions_mut().insert(ModelHint::new("deepseek-chat"));
        assert_eq!(key(&req), "api.deepseek.com/deepseek-chat");

        let mut req = Request::new(());
        *req.uri_mut() = "/chat/completions".parse().unwrap();
        assert_eq!(key(&req), "default");
        req.headers_mut()
            .insert(http::header::HOST, "gw.internal:8080".parse().unwrap());
        assert_eq!(key(&req), "gw.internal:8080");
    }
}
