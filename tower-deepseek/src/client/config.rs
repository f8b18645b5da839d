//! [`ClientConfig`] and the pooled client it builds.

use std::time::Duration;

use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

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
    #[serde(
        rename = "connect_timeout_ms",
        with = "tower_deepseek_core::config::duration_ms"
    )]
    pub connect_timeout: Duration,
    /// How long an idle pooled connection is kept. Default 90 s.
    #[serde(
        rename = "pool_idle_timeout_ms",
        with = "tower_deepseek_core::config::duration_ms"
    )]
    pub pool_idle_timeout: Duration,
    /// Idle connections kept per host. Default 64.
    pub pool_max_idle_per_host: usize,
    /// Offer HTTP/2 by ALPN (HTTP/1.1 stays available). Default true.
    pub http2: bool,
    /// TCP keep-alive interval. Default 60 s.
    #[serde(
        rename = "tcp_keepalive_ms",
        with = "tower_deepseek_core::config::duration_ms"
    )]
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

/// A pooled client for request bodies of type `B`. See the [module docs](crate::client).
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
