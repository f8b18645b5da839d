//! [`ContentFilterLayer`] and [`ContentFilterLayerBuilder`].

use std::fmt;
use std::sync::Arc;

use http::StatusCode;
use regex::Regex;
use tower_deepseek_core::body::DEFAULT_BODY_LIMIT;
use tower_layer::Layer;

use super::config::{ContentFilterConfig, FilterAction};
use super::service::ContentFilter;
use crate::ConfigError;
use crate::json::JsonPath;

/// Filters model output. See the [module docs](super).
#[derive(Clone)]
pub struct ContentFilterLayer {
    shared: Arc<FilterShared>,
}

/// The settings a [`ContentFilterLayer`] shares with its services, futures and bodies.
pub(super) struct FilterShared {
    pub(super) regex: Regex,
    pub(super) action: FilterAction,
    /// Characters a stream holds back per field.
    pub(super) hold: usize,
    pub(super) limit: usize,
    pub(super) block_status: StatusCode,
    pub(super) paths: Vec<JsonPath>,
}

impl fmt::Debug for ContentFilterLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The lists themselves may be sensitive: not printed.
        f.debug_struct("ContentFilterLayer")
            .field("action", &self.shared.action)
            .field("hold", &self.shared.hold)
            .finish_non_exhaustive()
    }
}

/// Builds a [`ContentFilterLayer`].
#[must_use]
#[derive(Default)]
pub struct ContentFilterLayerBuilder {
    keywords: Vec<String>,
    regexes: Vec<String>,
    action: FilterAction,
    case_insensitive: Option<bool>,
    max_match_len: Option<usize>,
    limit: Option<usize>,
    block_status: Option<StatusCode>,
}

impl fmt::Debug for ContentFilterLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContentFilterLayerBuilder")
            .finish_non_exhaustive()
    }
}

impl ContentFilterLayerBuilder {
    /// Adds keywords (matched literally).
    pub fn keywords<I, K>(mut self, words: I) -> Self
    where
        I: IntoIterator<Item = K>,
        K: Into<String>,
    {
        self.keywords
            .extend(words.into_iter().map(Into::into).filter(|w| !w.is_empty()));
        self
    }

    /// Adds a regex.
    pub fn regex(mut self, pattern: impl Into<String>) -> Self {
        self.regexes.push(pattern.into());
        self
    }

    /// Mask or block.
    pub fn action(mut self, action: FilterAction) -> Self {
        self.action = action;
        self
    }

    /// Case-insensitive matching (default true).
    pub fn case_insensitive(mut self, yes: bool) -> Self {
        self.case_insensitive = Some(yes);
        self
    }

    /// The longest text a regex can match, in characters (default 64): how much a stream
    /// holds back.
    pub fn max_match_len(mut self, chars: usize) -> Self {
        self.max_match_len = Some(chars);
        self
    }

    /// The limit for JSON answers (default 8 MiB); a longer answer fails with
    /// [`BodyTooLarge`](tower_deepseek_core::error::BodyTooLarge) rather than pass unchecked.
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.limit = Some(bytes);
        self
    }

    /// The status of a blocked JSON answer (default 400).
    pub fn block_status(mut self, status: StatusCode) -> Self {
        self.block_status = Some(status);
        self
    }

    /// From a serde configuration.
    pub fn config(mut self, c: ContentFilterConfig) -> Self {
        self = self.keywords(c.keywords).action(c.action);
        for r in c.regexes {
            self = self.regex(r);
        }
        if let Some(ci) = c.case_insensitive {
            self = self.case_insensitive(ci);
        }
        if let Some(m) = c.max_match_len {
            self = self.max_match_len(m);
        }
        if let Some(l) = c.body_limit {
            self = self.body_limit(l);
        }
        if let Some(s) = c.block_status.and_then(|s| StatusCode::from_u16(s).ok()) {
            self = self.block_status(s);
        }
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] with no keyword or regex, an invalid regex, or a non-error block status.
    pub fn build(self) -> Result<ContentFilterLayer, ConfigError> {
        if self.keywords.is_empty() && self.regexes.is_empty() {
            return Err(ConfigError::new(
                "keywords",
                "must not be empty when there are no regexes",
            ));
        }
        let status = self.block_status.unwrap_or(StatusCode::BAD_REQUEST);
        if !(status.is_client_error() || status.is_server_error()) {
            return Err(ConfigError::new(
                "block_status",
                "must be a 4xx or 5xx status",
            ));
        }
        let mut alts: Vec<String> = self.keywords.iter().map(|k| regex::escape(k)).collect();
        for r in &self.regexes {
            Regex::new(r)
                .map_err(|e| ConfigError::new("regexes", format!("holds an invalid regex: {e}")))?;
            alts.push(format!("(?:{r})"));
        }
        let ci = if self.case_insensitive.unwrap_or(true) {
            "(?i)"
        } else {
            ""
        };
        let regex = Regex::new(&format!("{ci}(?:{})", alts.join("|")))
            .map_err(|e| ConfigError::new("regexes", format!("do not compile together: {e}")))?;
        let longest_kw = self
            .keywords
            .iter()
            .map(|k| k.chars().count())
            .max()
            .unwrap_or(0);
        let max_len = if self.regexes.is_empty() {
            longest_kw
        } else {
            longest_kw.max(self.max_match_len.unwrap_or(64))
        };
        let p = |s: &str| JsonPath::parse(s).expect("built-in path");
        Ok(ContentFilterLayer {
            shared: Arc::new(FilterShared {
                regex,
                action: self.action,
                hold: max_len.saturating_sub(1),
                limit: self.limit.unwrap_or(DEFAULT_BODY_LIMIT),
                block_status: status,
                paths: vec![
                    p("choices[].message.content"),
                    p("choices[].message.reasoning_content"),
                    p("choices[].message.tool_calls[].function.arguments"),
                    p("choices[].text"),
                ],
            }),
        })
    }
}

impl ContentFilterLayer {
    /// A builder.
    pub fn builder() -> ContentFilterLayerBuilder {
        ContentFilterLayerBuilder::default()
    }

    /// From a serde configuration: [`ContentFilterLayerBuilder::config`], then
    /// [`build`](ContentFilterLayerBuilder::build).
    ///
    /// # Errors
    ///
    /// As [`ContentFilterLayerBuilder::build`].
    pub fn from_config(config: ContentFilterConfig) -> Result<Self, ConfigError> {
        Self::builder().config(config).build()
    }
}

impl<S> Layer<S> for ContentFilterLayer {
    type Service = ContentFilter<S>;

    fn layer(&self, inner: S) -> ContentFilter<S> {
        ContentFilter {
            inner,
            shared: self.shared.clone(),
        }
    }
}
