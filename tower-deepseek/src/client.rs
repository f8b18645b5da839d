//! A pooled HTTPS client for the upstream API, and [`BaseUrlLayer`] to point requests at it.
//!
//! [`upstream_client`] builds a hyper-util legacy client over rustls (`ring`, Mozilla roots):
//! HTTP/1.1 and HTTP/2 negotiated by ALPN, pooled connections, TCP keep-alive and no Nagle, and a
//! connect timeout. Plain `http://` is accepted too (a local mock, or a sidecar proxy).
//!
//! Requests in a tower stack carry relative URIs (`/chat/completions`): [`BaseUrlLayer`] joins
//! them onto the upstream's base URL just before the client, and drops the caller's `Host`
//! header so that the client writes the upstream's.
//!
//! ```no_run
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_deepseek::client::{BaseUrlLayer, ClientConfig, upstream_client};
//!
//! # #[tokio::main] async fn main() -> Result<(), tower_deepseek::BoxError> {
//! let client = upstream_client::<Full<Bytes>>(&ClientConfig::default());
//! let svc = ServiceBuilder::new()
//!     .layer(BaseUrlLayer::new("https://api.deepseek.com")?)
//!     .service(client);
//! let res = svc
//!     .oneshot(http::Request::get("/models").body(Full::new(Bytes::new()))?)
//!     .await?;
//! println!("{}", res.status());
//! # Ok(()) }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Uri, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use pin_project_lite::pin_project;
use serde::Deserialize;
use tower_layer::Layer;
use tower_service::Service;

use crate::BoxError;

/// The HTTPS (or plain HTTP) connector of [`UpstreamClient`].
pub type HttpsConnector = hyper_rustls::HttpsConnector<HttpConnector>;

/// A pooled hyper-util client over rustls, for request bodies of type `B`.
pub type UpstreamClient<B> = Client<HttpsConnector, B>;

/// Settings of [`upstream_client`]. Every field has a default; durations are in milliseconds in
/// configuration files (`connect_timeout_ms = 5000`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ClientConfig {
    /// TCP (and TLS) connect timeout. Default 10 s.
    #[serde(rename = "connect_timeout_ms", with = "millis")]
    pub connect_timeout: Duration,
    /// How long an idle pooled connection is kept. Default 90 s.
    #[serde(rename = "pool_idle_timeout_ms", with = "millis")]
    pub pool_idle_timeout: Duration,
    /// Idle connections kept per host. Default 64.
    pub pool_max_idle_per_host: usize,
    /// Offer HTTP/2 by ALPN (HTTP/1.1 stays available). Default true.
    pub http2: bool,
    /// TCP keep-alive interval. Default 60 s.
    #[serde(rename = "tcp_keepalive_ms", with = "millis")]
    pub tcp_keepalive: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 64,
            http2: true,
            tcp_keepalive: Duration::from_secs(60),
        }
    }
}

mod millis {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

/// A connector for `https://` (rustls with the `ring` provider and Mozilla's roots) and
/// `http://` URLs.
///
/// # Panics
///
/// Never in practice: it panics only if rustls rejects its own safe default protocol versions.
pub fn https_connector(config: &ClientConfig) -> HttpsConnector {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(config.connect_timeout));
    http.set_keepalive(Some(config.tcp_keepalive));
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
        .expect("rustls supports its safe default protocol versions")
        .https_or_http()
        .enable_http1();
    if config.http2 {
        builder.enable_http2().wrap_connector(http)
    } else {
        builder.wrap_connector(http)
    }
}

/// A pooled client for request bodies of type `B`. See the [module docs](self).
pub fn upstream_client<B>(config: &ClientConfig) -> UpstreamClient<B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(config.pool_idle_timeout)
        .pool_max_idle_per_host(config.pool_max_idle_per_host)
        .build(https_connector(config))
}

/// The base URL is not usable: it needs a scheme (`http` or `https`) and a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidBaseUrl {
    reason: &'static str,
}

impl fmt::Display for InvalidBaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid upstream base URL ({}); expected e.g. https://api.deepseek.com",
            self.reason
        )
    }
}

impl std::error::Error for InvalidBaseUrl {}

#[derive(Debug)]
struct Base {
    scheme: Scheme,
    authority: Authority,
    /// Path prefix without a trailing slash ("" or "/v1").
    prefix: String,
}

/// Joins relative request URIs onto an upstream base URL. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct BaseUrlLayer {
    base: Arc<Base>,
    replace_absolute: bool,
}

impl BaseUrlLayer {
    /// A layer for `base` (scheme, host, optional port and path prefix).
    ///
    /// # Errors
    ///
    /// [`InvalidBaseUrl`] when `base` does not parse or lacks a scheme or host, or has a query.
    pub fn new(base: &str) -> Result<Self, InvalidBaseUrl> {
        let uri: Uri = base.parse().map_err(|_| InvalidBaseUrl {
            reason: "not a URL",
        })?;
        let parts = uri.into_parts();
        let scheme = parts.scheme.ok_or(InvalidBaseUrl {
            reason: "no scheme",
        })?;
        if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
            return Err(InvalidBaseUrl {
                reason: "scheme is not http or https",
            });
        }
        let authority = parts
            .authority
            .ok_or(InvalidBaseUrl { reason: "no host" })?;
        let prefix = match parts.path_and_query {
            Some(pq) if pq.query().is_some() => {
                return Err(InvalidBaseUrl {
                    reason: "has a query",
                });
            }
            Some(pq) => pq.path().trim_end_matches('/').to_owned(),
            None => String::new(),
        };
        Ok(Self {
            base: Arc::new(Base {
                scheme,
                authority,
                prefix,
            }),
            replace_absolute: false,
        })
    }

    /// Also rewrite requests whose URI is already absolute (a gateway forwarding what it
    /// received). Default false: absolute URIs pass untouched.
    #[must_use]
    pub fn replace_absolute(mut self, yes: bool) -> Self {
        self.replace_absolute = yes;
        self
    }
}

impl<S> Layer<S> for BaseUrlLayer {
    type Service = BaseUrl<S>;

    fn layer(&self, inner: S) -> BaseUrl<S> {
        BaseUrl {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`BaseUrlLayer`].
#[derive(Debug, Clone)]
pub struct BaseUrl<S> {
    inner: S,
    layer: BaseUrlLayer,
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

pin_project! {
    /// The response future of [`BaseUrl`].
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Inner { #[pin] future: F },
        Error { error: Option<BoxError> },
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner { future } => future.poll(cx).map_err(Into::into),
            KindProj::Error { error } => Poll::Ready(Err(error
                .take()
                .expect("ResponseFuture polled after completion"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
