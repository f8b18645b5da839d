//! [`InvalidBaseUrl`].

use std::fmt;

/// The base URL is not usable: it needs a scheme (`http` or `https`) and a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidBaseUrl {
    pub(super) reason: &'static str,
}

impl fmt::Display for InvalidBaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid upstream base URL ({}); expected e.g. https://api.deepseek.com",
            self.reason
        )
    }
}

impl std::error::Error for InvalidBaseUrl {}
