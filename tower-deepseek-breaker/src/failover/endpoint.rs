//! One upstream endpoint of a failover.

use http::Uri;

/// One upstream endpoint: a base URI (scheme, authority, optional path prefix) and a weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub(super) base: Uri,
    pub(super) weight: u32,
    pub(super) name: Option<String>,
}

impl Endpoint {
    /// An endpoint at `base` (e.g. `https://az1.example.com` or `http://10.0.0.7:8080/v1`),
    /// weight 1.
    pub fn new(base: Uri) -> Self {
        Self {
            base,
            weight: 1,
            name: None,
        }
    }

    /// Its share of the traffic relative to the others (default 1; 0 = standby, used only
    /// when no weighted endpoint is available).
    #[must_use]
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// Its name in its breaker's label (`<breaker name>/<name>`, in metrics and logs) instead
    /// of its authority and path: for a base URI that holds credentials, or a shorter label.
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The base URI.
    pub fn base(&self) -> &Uri {
        &self.base
    }
}
