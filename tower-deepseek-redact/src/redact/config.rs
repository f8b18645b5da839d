//! The serde configuration of [`RedactLayer`](super::RedactLayer) and its policies.

#[cfg(doc)]
use super::error::InvalidJsonBody;
use crate::redactor::Mode;

/// What to do, on endpoints other than chat and FIM, with a body that is not JSON (see
/// [the table](super::RedactLayer#what-is-inspected-by-endpoint)). Chat and FIM bodies follow
/// [`UnparseablePolicy`] instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum NonJsonPolicy {
    /// Forward it untouched: a body labelled other than JSON, or one that cannot be parsed
    /// (default: uploads and other APIs pass).
    #[default]
    PassThrough,
    /// Parse every body whatever its label, and refuse one that cannot be parsed with
    /// [`InvalidJsonBody`] (a gateway answers 400): every endpoint is handled like chat.
    Reject,
}

/// What to do with a chat or FIM body that cannot be parsed (invalid JSON, not UTF-8,
/// nested too deep), and therefore cannot be checked for personal data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum UnparseablePolicy {
    /// Refuse it with [`InvalidJsonBody`] (a gateway answers 400). The default: redaction
    /// fails closed.
    #[default]
    Reject,
    /// Forward it raw, unmasked, to the inner service, with a `warn` log and
    /// `deepseek_redact_unparseable_total{action="passed"}`. Whatever personal data it holds
    /// leaves as it is: only for an upstream that is itself trusted with it.
    PassThroughUnsafe,
}

/// A serde configuration for [`RedactLayer`](super::RedactLayer) (e.g. from TOML).
///
/// ```toml
/// default_mode = "placeholder"
/// body_limit = 8388608
/// # chat and FIM bodies that cannot be parsed: "reject" (default) or "pass_through_unsafe"
/// unparseable = "reject"
/// # other endpoints: "pass_through" (default) or "reject"
/// non_json = "reject"
/// disabled = ["IPV4"]
/// extra_paths = ["tools[].function.name"]
/// min_score = 0.5
/// [modes]
/// CN_ID_CARD = "block"
/// IPV4 = "allow"
/// [context_words.US_SSN]
/// zh = ["社保卡号"]
/// en = ["tax number"]
/// [negative_context_words.BANK_CARD]
/// zh = ["会员卡"]
/// [[custom]]
/// name = "EMPLOYEE_ID"
/// pattern = "EMP-[0-9]{6}"
/// ```
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RedactConfig {
    /// Mode for personal data (default `placeholder`).
    pub default_mode: Option<Mode>,
    /// Mode for secrets (default `label`).
    pub secret_mode: Option<Mode>,
    /// Modes per type.
    pub modes: std::collections::HashMap<crate::EntityType, Mode>,
    /// Built-in detectors to turn off.
    pub disabled: Vec<crate::EntityType>,
    /// Custom detectors.
    pub custom: Vec<CustomDetectorConfig>,
    /// The score a detection needs (default 0.5; see [`crate::detect`]).
    pub min_score: Option<f32>,
    /// More words that raise a built-in type's score, per type and language (the language
    /// key only groups them: every word counts in any text).
    pub context_words: std::collections::HashMap<
        crate::EntityType,
        std::collections::BTreeMap<String, Vec<String>>,
    >,
    /// More words that lower a built-in type's score, per type and language.
    pub negative_context_words: std::collections::HashMap<
        crate::EntityType,
        std::collections::BTreeMap<String, Vec<String>>,
    >,
    /// Structural fields to scan anyway (every other string is scanned already).
    pub extra_paths: Vec<String>,
    /// Request body limit in bytes (default 8 MiB).
    pub body_limit: Option<usize>,
    /// Chat and FIM bodies that cannot be parsed (default `reject`).
    pub unparseable: UnparseablePolicy,
    /// Non-JSON bodies on other endpoints (default `pass_through`).
    pub non_json: NonJsonPolicy,
}

/// A custom detector in a [`RedactConfig`].
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct CustomDetectorConfig {
    /// The type name (`A-Z0-9_`).
    pub name: String,
    /// The regex.
    pub pattern: String,
}
