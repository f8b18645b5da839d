//! [`OAuth2Layer`] and its builder, [`OAuth2LayerBuilder`]: the token state, shared by every
//! service the layer makes.

use std::fmt;
use std::sync::Arc;

use http::{Request, Response};
use http_body::Body;
use tower_deepseek_core::BoxError;
use tower_deepseek_core::body::BufferedBody;
use tower_layer::Layer;
use tower_service::Service;

use super::config::OAuth2Config;
use super::fetch::TokenRequest;
use super::service::OAuth2;
use super::state::{Shared, Tuning};
use crate::error::ConfigError;
use crate::store::{MemoryTokenStore, TokenStore};

/// Adds an OAuth2 client-credentials bearer token to every request. See the
/// [module docs](crate::oauth2).
///
/// `T` is the service that talks to the token endpoint: any
/// `Service<Request<BufferedBody>, Response = Response<impl Body>>`, e.g. a hyper-util client
/// with its own timeouts and TLS.
pub struct OAuth2Layer<T> {
    pub(super) shared: Arc<Shared<T>>,
}

impl<T> Clone for OAuth2Layer<T> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<T> fmt::Debug for OAuth2Layer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuth2Layer")
            .field("state", &self.shared)
            .finish()
    }
}

/// Builds an [`OAuth2Layer`] with a [`TokenStore`].
#[must_use]
pub struct OAuth2LayerBuilder<T> {
    config: OAuth2Config,
    token_service: T,
    store: Option<Arc<dyn TokenStore>>,
}

impl<T> fmt::Debug for OAuth2LayerBuilder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuth2LayerBuilder")
            .field("config", &self.config)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl<T, RB> OAuth2LayerBuilder<T>
where
    T: Service<Request<BufferedBody>, Response = Response<RB>> + Clone + Send + Sync + 'static,
    T::Error: Into<BoxError>,
    T::Future: Send,
    RB: Body + Send + 'static,
    RB::Data: Send,
    RB::Error: Into<BoxError>,
{
    /// Shares tokens through `store` (default: a [`MemoryTokenStore`] of this layer alone).
    pub fn store(mut self, store: impl TokenStore) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// Shares tokens through an already shared `store`.
    pub fn shared_store(mut self, store: Arc<dyn TokenStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Validates the configuration and builds the layer. No I/O happens here: the first token
    /// is fetched by the first request.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first invalid setting.
    pub fn build(self) -> Result<OAuth2Layer<T>, ConfigError> {
        let uri = self.config.token_uri()?;
        let request = TokenRequest::new(&self.config, uri);
        let store = self
            .store
            .unwrap_or_else(|| Arc::new(MemoryTokenStore::new()));
        let tuning = Tuning {
            margin: self.config.margin(),
            jitter: self.config.jitter(),
            store_wait: self.config.wait(),
            deadline: self.config.deadline_ref(),
            body_limit: self.config.limit(),
            replay: self.config.replay(),
        };
        let store_key = self.config.effective_store_key();
        let token_service = self.token_service;
        let shared = Arc::new_cyclic(|me| {
            Shared::new(me.clone(), request, token_service, store, store_key, tuning)
        });
        Ok(OAuth2Layer { shared })
    }
}

impl<T, RB> OAuth2Layer<T>
where
    T: Service<Request<BufferedBody>, Response = Response<RB>> + Clone + Send + Sync + 'static,
    T::Error: Into<BoxError>,
    T::Future: Send,
    RB: Body + Send + 'static,
    RB::Data: Send,
    RB::Error: Into<BoxError>,
{
    /// A layer fetching tokens per `config` through `token_service`, kept in memory.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first invalid setting.
    pub fn new(config: OAuth2Config, token_service: T) -> Result<Self, ConfigError> {
        Self::builder(config, token_service).build()
    }

    /// A builder, to add a [`TokenStore`].
    pub fn builder(config: OAuth2Config, token_service: T) -> OAuth2LayerBuilder<T> {
        OAuth2LayerBuilder {
            config,
            token_service,
            store: None,
        }
    }

    /// Obtains a token now if none is usable (e.g. at start-up, to fail fast on bad
    /// credentials). Requests do this by themselves otherwise.
    ///
    /// # Errors
    ///
    /// [`TokenFetchFailed`](crate::error::TokenFetchFailed) when no token can be obtained.
    pub async fn warm_up(&self) -> Result<(), crate::error::TokenFetchFailed> {
        if self.shared.fresh().is_some() {
            return Ok(());
        }
        self.shared.obtain(None).await.map(drop)
    }
}

impl<S, T> Layer<S> for OAuth2Layer<T> {
    type Service = OAuth2<S, T>;

    fn layer(&self, inner: S) -> OAuth2<S, T> {
        OAuth2 {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}
