//! The key of a request: the [`MakeKey`] trait, the [`DefaultKey`] and the [`ModelHint`] it
//! reads.

use std::fmt;
use std::hash::Hash;

use std::borrow::Cow;

use http::{Extensions, HeaderMap, Method, Request, Uri};
use tower_deepseek_core::view::ChatView;

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
/// plus `/<model>` when the request carries a [`ModelHint`], or else core's shared
/// [`ChatView`] of the body, left by a layer above that parsed it (the redactor, the cache, the
/// rate limiter), whose `model` is a plain name (1 to 64 ASCII letters, digits and `-._:/`).
///
/// The breaker holds no body to check the view against (it never reads it): a layer between
/// that rewrites the body without replacing the view could only file the call under the model
/// the view names, never change what is sent, cached or counted.
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
        let model = match head.extensions.get::<ModelHint>() {
            Some(m) => Some(Cow::Borrowed(m.as_str())),
            // The shared view of the body a layer above parsed. From the caller's body, so
            // only a plain model name is taken (it becomes part of a metric label).
            None => head
                .extensions
                .get::<ChatView>()
                .and_then(ChatView::model)
                .filter(|m| is_plain_model_name(m)),
        };
        match model {
            Some(m) => format!("{authority}/{m}"),
            None => authority.to_owned(),
        }
    }
}

/// 1 to 64 ASCII letters, digits and `-._:/`: what model names are made of, and nothing that
/// could carry a prompt or personal data into a metric label.
fn is_plain_model_name(m: &str) -> bool {
    (1..=64).contains(&m.len())
        && m.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':' | b'/'))
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

    #[test]
    fn the_model_comes_from_a_shared_view_when_there_is_no_hint() {
        let view = |body: &'static str| {
            ChatView::parse(bytes::Bytes::from_static(body.as_bytes())).unwrap()
        };
        let mut req = Request::new(());
        *req.uri_mut() = "https://api.deepseek.com/chat/completions".parse().unwrap();
        req.extensions_mut()
            .insert(view(r#"{"model":"deepseek-reasoner","messages":[]}"#));
        assert_eq!(key(&req), "api.deepseek.com/deepseek-reasoner");
        // The hint wins.
        req.extensions_mut().insert(ModelHint::new("deepseek-chat"));
        assert_eq!(key(&req), "api.deepseek.com/deepseek-chat");
        req.extensions_mut().remove::<ModelHint>();
        // A model that is no plain name never reaches the key (nor the metric label).
        for odd in [
            r#"{"model":"my phone is 13800138000"}"#,
            r#"{"model":""}"#,
            r#"{"model":"ü"}"#,
            r#"{"model":5}"#,
        ] {
            req.extensions_mut().insert(view(odd));
            assert_eq!(key(&req), "api.deepseek.com", "{odd}");
        }
    }
}
