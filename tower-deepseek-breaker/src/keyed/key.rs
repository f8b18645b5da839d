//! The key of a request: the [`MakeKey`] trait, the [`DefaultKey`] and the [`ModelHint`] it
//! reads.

use std::fmt;
use std::hash::Hash;

use http::{Extensions, HeaderMap, Method, Request, Uri};

pub use tower_deepseek_core::protocol::ModelHint;

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
