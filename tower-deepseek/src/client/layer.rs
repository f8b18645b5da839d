//! [`BaseUrlLayer`].

use std::sync::Arc;

use http::Uri;
use http::uri::Scheme;
use tower_layer::Layer;

use super::base_url::Base;
use super::error::InvalidBaseUrl;
use super::service::BaseUrl;

/// Joins relative request URIs onto an upstream base URL. See the [module docs](crate::client).
#[derive(Debug, Clone)]
pub struct BaseUrlLayer {
    pub(super) base: Arc<Base>,
    pub(super) replace_absolute: bool,
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
