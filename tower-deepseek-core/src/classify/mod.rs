//! The one classification of upstream outcomes, shared by retry, breaker, cache and audit.
//!
//! No layer decides on its own what a 503, a reset or an empty 200 means: they all ask the
//! [`Classifier`], in the spirit of tower-http's `classify` module. Classification has two steps:
//!
//! 1. [`Classifier::classify_head`] looks at the status and headers. Errors (4xx, 5xx) are
//!    classified at once ([`ClassifiedResponse::Ready`]). A 2xx chat answer is not yet a
//!    success: DeepSeek sends its 200 before it knows the outcome, pads with blank lines or
//!    `: keep-alive` comments, and sometimes ends with nothing, with a truncated body, an
//!    in-band `{"error":…}` or `finish_reason: insufficient_system_resource`. So a 2xx returns
//!    [`ClassifiedResponse::RequiresEos`] with an [`EosClassifier`] that reads the body as it
//!    passes (never holding it back) and decides at its end.
//! 2. [`Classifier::classify_error`] classifies a transport error, telling apart failures where
//!    the request was surely not sent (connect errors: safe to retry) from those after it may
//!    have been (a reset or read timeout: retrying may bill twice).
//!
//! The result, a [`FailureClass`], carries facts; each layer maps it to a decision, with these
//! defaults (the classifier table of ARCHITECTURE.md):
//!
//! | outcome | class | retry (default) | breaker (default) |
//! |---|---|---|---|
//! | 2xx, complete | `Ok(())` | done | success |
//! | 429 | [`RateLimited`](FailureClass::RateLimited) | exponential 1 s → 32 s, `Retry-After` honoured | ignored |
//! | 502 | [`BadGateway`](FailureClass::BadGateway) | immediately, at most 3 times | failure |
//! | 503 | [`Overloaded`](FailureClass::Overloaded) | random 5-15 s or `Retry-After` | failure |
//! | 504, attempt timeout | [`GatewayTimeout`](FailureClass::GatewayTimeout), [`Timeout`](FailureClass::Timeout) | with a longer timeout | failure |
//! | 500, other 5xx | [`Server`](FailureClass::Server) | exponential | failure |
//! | connect error | [`Connect`](FailureClass::Connect) | immediately, then exponential | failure |
//! | reset / read timeout after sending | [`Transport`](FailureClass::Transport) | only where configured | failure |
//! | 400, 401, 402, 403, 404, 422 | [`Client`](FailureClass::Client) | never | ignored |
//! | empty 200, cut stream, in-band error, insufficient resources | [`EmptyBody`](FailureClass::EmptyBody), [`Incomplete`](FailureClass::Incomplete), [`InBandError`](FailureClass::InBandError), [`InsufficientResources`](FailureClass::InsufficientResources) | as 5xx, only before a byte reached the caller | failure |
//!
//! [`FailureClass::default_verdict`] gives the breaker column; [`FailureClass::is_transient`]
//! says whether trying again can help.
//!
//! ```
//! use bytes::Bytes;
//! use http::{HeaderMap, StatusCode};
//! use tower_deepseek_core::classify::{ClassifiedResponse, Classifier, FailureClass};
//!
//! let classifier = Classifier::new();
//! let mut headers = HeaderMap::new();
//! headers.insert("content-type", "application/json".parse().unwrap());
//! let ClassifiedResponse::RequiresEos(mut eos) = classifier.classify_head(StatusCode::OK, &headers)
//! else { unreachable!() };
//! eos.on_data(&Bytes::from_static(b"\n\n\n")); // keep-alive blank lines, then nothing
//! assert_eq!(eos.finish(), Err(FailureClass::EmptyBody));
//! ```

mod class;
mod end;
mod head;
mod light;
mod shared;
#[cfg(test)]
mod tests;

pub use class::*;
pub use end::*;
pub use head::*;
pub use shared::*;
