//! [`BaseUrl`], the service of [`BaseUrlLayer`].

use std::task::{Context, Poll};

use http::uri::PathAndQuery;
use http::{Request, Uri, header};

use tower_service::Service;

use crate::BoxError;

use super::base_url::Base;
use super::future::{Kind, ResponseFuture};
use super::layer::BaseUrlLayer;

/// The service of [`BaseUrlLayer`].
#[derive(Debug, Clone)]
pub struct BaseUrl<S> {
    pub(super) inner: S,
    pub(super) layer: BaseUrlLayer,
}

impl<S> BaseUrl<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes `self`, returning the wrapped service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

fn join(base: &Base, uri: &Uri) -> Result<Uri, http::Error> {
    let pq = uri.path_and_query().map_or("/", PathAndQuery::as_str);
    let pq = if base.prefix.is_empty() {
        PathAndQuery::try_from(pq)?
    } else {
        PathAndQuery::try_from(format!("{}{}", base.prefix, pq))?
    };
    Uri::builder()
        .scheme(base.scheme.clone())
        .authority(base.authority.clone())
        .path_and_query(pq)
        .build()
}

impl<S, B> Service<Request<B>> for BaseUrl<S>
where
    S: Service<Request<B>>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if req.uri().authority().is_none() || self.layer.replace_absolute {
            match join(&self.layer.base, req.uri()) {
                Ok(uri) => {
                    *req.uri_mut() = uri;
                    req.headers_mut().remove(header::HOST);
                }
                Err(e) => {
                    return ResponseFuture {
                        kind: Kind::Error {
                            error: Some(Box::new(e)),
                        },
                    };
                }
            }
        }
        ResponseFuture {
            kind: Kind::Inner {
                future: self.inner.call(req),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::ClientConfig;
    use std::time::Duration;

    fn joined(base: &str, uri: &str) -> String {
        let layer = BaseUrlLayer::new(base).unwrap();
        join(&layer.base, &uri.parse().unwrap())
            .unwrap()
            .to_string()
    }

    #[test]
    fn joins_paths_and_prefixes() {
        assert_eq!(
            joined("https://api.deepseek.com", "/chat/completions"),
            "https://api.deepseek.com/chat/completions"
        );
        assert_eq!(
            joined("http://127.0.0.1:9/v1/", "/models?x=1"),
            "http://127.0.0.1:9/v1/models?x=1"
        );
    }

    #[test]
    fn rejects_unusable_bases() {
        assert!(BaseUrlLayer::new("api.deepseek.com").is_err());
        assert!(BaseUrlLayer::new("ftp://x").is_err());
        assert!(BaseUrlLayer::new("https://x/?a=1").is_err());
    }

    #[test]
    fn config_reads_milliseconds() {
        let c: ClientConfig = serde_json::from_str(r#"{"connect_timeout_ms": 1500}"#).unwrap();
        assert_eq!(c.connect_timeout, Duration::from_millis(1500));
        assert!(c.http2);
        assert!(serde_json::from_str::<ClientConfig>(r#"{"nope": 1}"#).is_err());
    }
}
