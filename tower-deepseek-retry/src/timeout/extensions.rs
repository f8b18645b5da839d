//! The request extensions the retry layer (or the caller) sets for this layer: core's protocol
//! types [`TimeoutScale`] and [`AttemptTimeout`], re-exported here.

pub use tower_deepseek_core::protocol::{AttemptTimeout, TimeoutScale};
