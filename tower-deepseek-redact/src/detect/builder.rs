//! [`DetectorsBuilder`]: which built-in detectors, which custom ones, the threshold and the
//! context words of a [`Detectors`] set.

use std::fmt;
use std::sync::Arc;

use regex::Regex;

use super::{
    COMPILED, Context, Custom, Detectors, DetectorsInner, EntityType, Kind, N_BUILTIN, Validator,
};
use crate::ConfigError;

/// Builds a [`Detectors`] set.
#[must_use]
pub struct DetectorsBuilder {
    pub(super) enabled: [bool; N_BUILTIN],
    pub(super) custom: Vec<Custom>,
    pub(super) error: Option<ConfigError>,
    pub(super) min_score: f32,
    pub(super) context: Vec<Context>,
}

impl fmt::Debug for DetectorsBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DetectorsBuilder")
            .field("custom", &self.custom.len())
            .finish_non_exhaustive()
    }
}

impl DetectorsBuilder {
    /// Disables a built-in detector.
    pub fn disable(mut self, entity: &EntityType) -> Self {
        if let Some(k) = Kind::from_entity(entity) {
            self.enabled[k as usize] = false;
        }
        self
    }

    /// Enables a built-in detector.
    pub fn enable(mut self, entity: &EntityType) -> Self {
        if let Some(k) = Kind::from_entity(entity) {
            self.enabled[k as usize] = true;
        }
        self
    }

    /// Disables every built-in detector (to start from custom ones only, or to enable a few).
    pub fn none(mut self) -> Self {
        self.enabled = [false; N_BUILTIN];
        self
    }

    /// The score a detection needs to be reported (default [`DEFAULT_MIN_SCORE`](super::DEFAULT_MIN_SCORE), 0.5).
    /// Lower it to also catch weak forms without context (nine bare digits as an SSN, a
    /// permit number without `通行证`), raise it to keep only validated forms.
    pub fn min_score(mut self, score: f32) -> Self {
        if !(0.0..=1.0).contains(&score) {
            self.error = Some(ConfigError::new(
                "min_score",
                format!("must be between 0 and 1 (got {score})"),
            ));
        }
        self.min_score = score;
        self
    }

    /// Adds words (any language; ASCII letters match in any case) that raise the score of a
    /// built-in type when they stand in the clause before a candidate, e.g. `员工编号` for
    /// [`EntityType::US_SSN`]. Words for custom types are ignored (custom matches score 1.0).
    pub fn context_words<I, W>(mut self, entity: &EntityType, words: I) -> Self
    where
        I: IntoIterator<Item = W>,
        W: AsRef<str>,
    {
        if let Some(k) = Kind::from_entity(entity) {
            add_words(&mut self.context[k as usize].positive, words);
        }
        self
    }

    /// Adds words that lower the score of a built-in type when they stand in the clause
    /// before a candidate (as `发票代码` does for [`EntityType::BANK_CARD`]).
    pub fn negative_context_words<I, W>(mut self, entity: &EntityType, words: I) -> Self
    where
        I: IntoIterator<Item = W>,
        W: AsRef<str>,
    {
        if let Some(k) = Kind::from_entity(entity) {
            add_words(&mut self.context[k as usize].negative, words);
        }
        self
    }

    /// Adds a custom detector: every match of `pattern` is an entity of type `name`.
    ///
    /// Custom regexes run over the whole text (after full-width folding, when the text needed
    /// it: write them for ASCII digits and punctuation) and rank below the built-in detectors
    /// when two matches overlap with the same start and length.
    pub fn custom(self, name: &str, pattern: &str) -> Self {
        self.push_custom(name, pattern, None)
    }

    /// Adds a custom detector whose matches must also pass `validator`.
    pub fn custom_with(
        self,
        name: &str,
        pattern: &str,
        validator: impl Fn(&str) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.push_custom(name, pattern, Some(Arc::new(validator)))
    }

    fn push_custom(mut self, name: &str, pattern: &str, validator: Option<Validator>) -> Self {
        if self.error.is_some() {
            return self;
        }
        let entity = match EntityType::custom(name) {
            Ok(e) => e,
            Err(e) => {
                self.error = Some(e);
                return self;
            }
        };
        if Kind::from_entity(&entity).is_some() {
            self.error = Some(ConfigError::new(
                "name",
                format!("must not be the name of a built-in detector (got {name:?})"),
            ));
            return self;
        }
        match Regex::new(pattern) {
            Ok(regex) => self.custom.push(Custom {
                entity,
                regex,
                validator,
            }),
            Err(e) => {
                self.error = Some(ConfigError::new(
                    "pattern",
                    format!("of custom detector {name:?} is not a valid regex: {e}"),
                ))
            }
        }
        self
    }

    /// Builds the set.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] for an invalid custom name or regex, or a `min_score` outside 0..=1.
    pub fn build(self) -> Result<Detectors, ConfigError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        Ok(Detectors {
            inner: Arc::new(DetectorsInner {
                enabled: self.enabled,
                compiled: &COMPILED,
                custom: self.custom,
                min_score: self.min_score,
                context: self.context,
            }),
        })
    }
}

/// Adds `words` to a context word list, lower-cased (ASCII), empty words dropped.
fn add_words<I, W>(list: &mut Vec<Vec<u8>>, words: I)
where
    I: IntoIterator<Item = W>,
    W: AsRef<str>,
{
    list.extend(
        words
            .into_iter()
            .map(|w| w.as_ref().to_ascii_lowercase().into_bytes()),
    );
    list.retain(|w| !w.is_empty());
}
