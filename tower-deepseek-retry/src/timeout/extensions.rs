//! The request extensions the retry layer sets for this layer.

use std::time::Duration;

/// Request extension set by the retry layer: multiply the attempt timeouts (headers, first
/// token, idle) by this factor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimeoutScale(pub f64);

/// Request extension: the response-headers timeout for this request, instead of the layer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptTimeout(pub Duration);
