//! The shared ground of tower-deepseek's layers.
//!
//! This crate has no layer of its own. It holds what every layer needs and must agree on:
//!
//! - [`body`]: buffer a request body once, with a limit, into cheap [`Bytes`](bytes::Bytes)
//!   that later layers and retries reuse; observe or transform response streams without
//!   delaying their first byte.
//! - [`sse`]: an incremental Server-Sent Events parser (any chunking, LF/CRLF/CR, comments and
//!   keep-alives skipped, zero-copy payloads) and encoder.
//! - [`chat`]: typed views of chat requests and responses, `usage` included, that keep unknown
//!   fields.
//! - [`view`]: a request body parsed once ([`ChatView`](view::ChatView)), shared by every layer
//!   that reads it, and never about other bytes.
//! - [`classify`]: the one classification of outcomes (status codes, transport errors, empty
//!   200s, cut streams, in-band errors) that retry, breaker, cache and audit all consume.
//! - [`config`]: the one [`ConfigError`](config::ConfigError) and the `*_ms` duration serde
//!   helpers every layer's configuration uses.
//! - [`protocol`]: every extension and marker type one layer writes for another, with its
//!   writer, readers and invariants in one table.
//! - [`money`]: [`Money`](money::Money), exact amounts in integer picos, for cost accounting.
//! - [`meta`]: request id, client IP and tenant id in [`http::Extensions`].
//! - [`error`]: small public error types to downcast a [`BoxError`] to.
//!
//! # Why one classifier
//!
//! A 200 from DeepSeek is not a success until its body ends well: the server sends the head
//! before inference starts, pads with blank lines or `: keep-alive` comments, and may then close
//! with nothing. If the retry layer, the breaker and the audit log each judged that on their
//! own, they would disagree; here they share [`classify::Classifier`].
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod body;
pub mod chat;
pub mod classify;
pub mod config;
pub mod error;
pub mod meta;
pub mod money;
pub mod protocol;
mod scan;
pub mod sse;
pub mod trace;
pub mod view;

/// The error type of client-side layers, as in tower.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
