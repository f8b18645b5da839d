//! [`CacheLayer`], its builder, service, response future and body, config and errors. See the
//! [crate docs](crate) for what is cached, keys, streams, single-flight, L1 and L2.
//!
//! This module is private (its name would repeat the crate's): everything public here is
//! re-exported at the crate root.

mod body;
mod config;
mod error;
mod future;
mod layer;
mod service;

pub use self::body::ResponseBody;
pub use self::config::CacheConfig;
pub use self::error::ConfigError;
pub use self::future::ResponseFuture;
pub use self::layer::{CacheLayer, CacheLayerBuilder};
pub use self::service::{Cache, X_CACHE};
