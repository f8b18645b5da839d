//! [`ContentFilterLayer`]: keyword lists and regexes on model output, streams included.
//!
//! The filter looks at the text of answers only: `choices[].message.content`,
//! `reasoning_content`, tool-call `arguments` and FIM `choices[].text` in JSON answers, and
//! the same fields of each delta in SSE streams. Other fields and non-2xx answers pass
//! untouched.
//!
//! Actions:
//!
//! - [`FilterAction::Mask`]: every match becomes `***`.
//! - [`FilterAction::Block`]: a JSON answer becomes an error response (status
//!   [`ContentFilterLayerBuilder::block_status`], 400 by default) with an OpenAI-style body
//!   `{"error":{"message":…,"type":"content_filter","code":"content_filter"}}`; a stream ends
//!   with an SSE event `data: {"error":{…}}` and no further content (no `[DONE]`).
//!
//! # Streams
//!
//! A match may straddle two deltas (`bad` + `word`). Per choice and field, the filter holds
//! back the last `max_match_len - 1` characters of text (the longest keyword for keyword-only
//! filters; 64 by default with regexes) until the next delta, the finish event, or `[DONE]`
//! shows they cannot start a match. This is the only delay it adds; events without text
//! pass as their original bytes.
//!
//! JSON answers are read to their end (with a limit, 8 MiB by default) before they are
//! checked, since a verdict on a half-sent answer cannot be taken back.
//!
//! # Order
//!
//! Put it above [`RedactLayer`](crate::RedactLayer) to check the text the caller will see
//! (restored), or below it to check the masked text; above the cache, so that a cached answer
//! is checked against the current lists.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use tower::{ServiceBuilder, ServiceExt, Service};
//! use tower_deepseek_redact::filter::{ContentFilterLayer, FilterAction};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_deepseek_core::BoxError> {
//! let filter = ContentFilterLayer::builder()
//!     .keywords(["forbidden"])
//!     .action(FilterAction::Mask)
//!     .build()?;
//! let mut svc = ServiceBuilder::new().layer(filter).service_fn(|_req: Request<Full<Bytes>>| async {
//!     let body = r#"{"choices":[{"index":0,"message":{"role":"assistant","content":"a Forbidden word"}}]}"#;
//!     Ok::<_, tower_deepseek_core::BoxError>(
//!         Response::builder().header("content-type", "application/json").body(Full::new(Bytes::from(body)))?,
//!     )
//! });
//! let req = Request::new(Full::new(Bytes::new()));
//! let res = ServiceExt::<Request<Full<Bytes>>>::ready(&mut svc).await?.call(req).await?;
//! let body = res.into_body().collect().await?.to_bytes();
//! assert!(String::from_utf8(body.to_vec())?.contains("a *** word"));
//! # Ok(())
//! # }
//! ```

mod body;
mod config;
mod future;
mod layer;
mod service;

pub use body::ResponseBody;
pub use config::{ContentFilterConfig, FilterAction};
pub use future::ResponseFuture;
pub use layer::{ContentFilterLayer, ContentFilterLayerBuilder};
pub use service::ContentFilter;
