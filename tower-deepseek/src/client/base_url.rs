//! The parsed base URL and the join of a relative URI onto it.

use http::uri::{Authority, Scheme};

#[derive(Debug)]
pub(super) struct Base {
    pub(super) scheme: Scheme,
    pub(super) authority: Authority,
    /// Path prefix without a trailing slash ("" or "/v1").
    pub(super) prefix: String,
}
