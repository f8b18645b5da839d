//! Per-request cache options, in the request's [`http::Extensions`]: core's protocol type
//! [`CacheOptions`], re-exported here.
//!
//! ```
//! use tower_deepseek_cache::CacheOptions;
//!
//! let mut req = http::Request::new(());
//! req.extensions_mut().insert(CacheOptions::new().bypass(true));
//! ```

pub use tower_deepseek_core::protocol::CacheOptions;
