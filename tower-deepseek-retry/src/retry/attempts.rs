//! The [`Attempts`](crate::Attempts) response extension and its `StopReason`: core's protocol
//! types, re-exported here.

pub use tower_deepseek_core::protocol::Attempts;
