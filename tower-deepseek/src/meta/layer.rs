//! [`RequestMetadataLayer`].

use std::sync::Arc;

use tower_deepseek_core::meta::MetadataConfig;
use tower_layer::Layer;

use super::service::RequestMetadata;

/// Applies a [`MetadataConfig`] to every request. See the [module docs](crate::meta).
#[derive(Debug, Clone, Default)]
pub struct RequestMetadataLayer {
    pub(super) config: Arc<MetadataConfig>,
}

impl RequestMetadataLayer {
    /// A layer applying `config`.
    pub fn new(config: MetadataConfig) -> Self {
        Self {
            config: Arc::new(config),
        }
    }
}

impl<S> Layer<S> for RequestMetadataLayer {
    type Service = RequestMetadata<S>;

    fn layer(&self, inner: S) -> RequestMetadata<S> {
        RequestMetadata {
            inner,
            config: self.config.clone(),
        }
    }
}
