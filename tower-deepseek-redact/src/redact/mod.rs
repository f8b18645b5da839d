//! [`RedactLayer`]: masks PII in requests before they leave, restores placeholders in answers.
//!
//! Private: its items are re-exported at the crate root, and the layer's documentation (what is
//! inspected, which fields are masked, refusals, restore) is on [`RedactLayer`].
//!
//! - `layer`: [`RedactLayer`] and its settings;
//! - `service`: [`Redact`], which buffers and masks the request (`request`: the field rules);
//! - `future`: [`ResponseFuture`];
//! - `body`: [`ResponseBody`], which restores placeholders in the answer (`restore`: the
//!   restorers, JSON and text; SSE through the crate's shared delta rewriter);
//! - `config`: [`RedactConfig`] and the policies; `error`: [`InvalidJsonBody`].

mod body;
mod config;
mod error;
mod future;
mod layer;
mod request;
mod restore;
mod service;

pub use body::ResponseBody;
pub use config::{CustomDetectorConfig, NonJsonPolicy, RedactConfig, UnparseablePolicy};
pub use error::{InvalidJsonBody, InvalidJsonReason};
pub use future::ResponseFuture;
pub use layer::RedactLayer;
pub use service::Redact;
