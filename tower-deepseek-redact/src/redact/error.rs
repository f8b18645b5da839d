//! [`InvalidJsonBody`]: a request body that could not be parsed, refused.

use std::fmt;

#[cfg(doc)]
use super::config::{NonJsonPolicy, UnparseablePolicy};

/// Why a request body could not be parsed ([`InvalidJsonBody::reason`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum InvalidJsonReason {
    /// Not valid JSON: a syntax error, an invalid escape, or anything after the document.
    #[default]
    Syntax,
    /// Not valid UTF-8 (JSON must be).
    NotUtf8,
    /// Objects and arrays nested more than 256 levels deep.
    TooDeep,
}

impl InvalidJsonReason {
    /// `syntax`, `not_utf8` or `too_deep` (a metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            InvalidJsonReason::Syntax => "syntax",
            InvalidJsonReason::NotUtf8 => "not_utf8",
            InvalidJsonReason::TooDeep => "too_deep",
        }
    }
}

impl fmt::Display for InvalidJsonReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The request body could not be parsed, so it could not be checked for personal data, and
/// it was refused: always on the chat and FIM endpoints (unless
/// [`UnparseablePolicy::PassThroughUnsafe`]), and on the others with [`NonJsonPolicy::Reject`].
///
/// The message names the reason, never a byte of the body. A gateway answers 400.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct InvalidJsonBody {
    reason: InvalidJsonReason,
}

impl InvalidJsonBody {
    /// An error for `reason`.
    pub fn new(reason: InvalidJsonReason) -> Self {
        Self { reason }
    }

    /// Why the body could not be parsed.
    pub fn reason(&self) -> InvalidJsonReason {
        self.reason
    }
}

impl fmt::Display for InvalidJsonBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let why = match self.reason {
            InvalidJsonReason::Syntax => "the body is not valid JSON",
            InvalidJsonReason::NotUtf8 => "the body is not valid UTF-8",
            InvalidJsonReason::TooDeep => {
                "the body nests objects or arrays more than 256 levels deep"
            }
        };
        write!(
            f,
            "request refused: {why}, so it cannot be checked for personal data; send one JSON object in UTF-8"
        )
    }
}

static INVALID_JSON: tower_deepseek_core::error::RequestRefused =
    tower_deepseek_core::error::RequestRefused::new("request body is not JSON");

// Core's marker as the source: the shared classifier (audit, breaker) sees a local refusal.
impl std::error::Error for InvalidJsonBody {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&INVALID_JSON)
    }
}
