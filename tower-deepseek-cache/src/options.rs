//! Per-request cache options, in the request's [`http::Extensions`].

/// Per-request cache options: insert into the request's extensions.
///
/// ```
/// # use tower_deepseek_cache::CacheOptions;
/// let mut req = http::Request::new(());
/// req.extensions_mut().insert(CacheOptions::new().cache_nonzero_temperature(true));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheOptions {
    /// Neither read nor write the cache for this request (like `Cache-Control: no-store`).
    pub bypass: bool,
    /// Go upstream and replace the stored answer (like `Cache-Control: no-cache`).
    pub refresh: bool,
    /// Overrides the layer's `cache_nonzero_temperature` for this request.
    pub cache_nonzero_temperature: Option<bool>,
}

impl CacheOptions {
    /// No override.
    pub const fn new() -> Self {
        CacheOptions {
            bypass: false,
            refresh: false,
            cache_nonzero_temperature: None,
        }
    }

    /// Skip the cache for this request.
    #[must_use]
    pub const fn bypass(mut self, yes: bool) -> Self {
        self.bypass = yes;
        self
    }

    /// Go upstream and refresh the stored answer.
    #[must_use]
    pub const fn refresh(mut self, yes: bool) -> Self {
        self.refresh = yes;
        self
    }

    /// Cache this request's answer even though its temperature is not 0 (or the opposite).
    #[must_use]
    pub const fn cache_nonzero_temperature(mut self, yes: bool) -> Self {
        self.cache_nonzero_temperature = Some(yes);
        self
    }
}
