//! PII and secret detectors, all run in one pass over a text.
//!
//! Each detector is a regular expression plus a validator (checksum, date, numbering plan,
//! issuer prefix, entropy) and a score. Regexes never run over the whole text: a byte scan
//! first finds the few places that can start an entity (digit runs with enough digits, `@`,
//! `:`, the literal prefixes of secrets and secret-like words), and the anchored regex of each
//! candidate detector runs only there. Candidates that overlap are resolved leftmost, then
//! longest, then by detector priority (private keys, JWTs, API keys, AWS keys, other secrets,
//! ID card, bank card, mobile, landline, SSN, passport, email, IPv6, IPv4, custom).
//!
//! The families live in submodules: secrets (provider keys, webhooks, passwords in URLs,
//! values after secret-like words), numbers (phones, IDs, cards, SSNs, passports) and
//! network (e-mail, IP addresses).
//!
//! # Scores and context words
//!
//! Every detection has a score in `0.0..=1.0`: the base score of its form (a Luhn-valid card
//! 0.8, an 18-digit ID with a valid check character 0.95, nine bare digits that could be an
//! SSN 0.3), raised by a context word in the clause before it (`SSN`, `护照`, `卡号`, `电话`)
//! and lowered by a negative one (`发票`, `订单号`, `版本`). Detections below the threshold
//! ([`DetectorsBuilder::min_score`], default 0.5) are dropped: nine bare digits are an SSN
//! only after a word such as `SSN`, a dotted quad after `版本` is a version, a Luhn-valid
//! number after `发票代码` is an invoice code. [`DetectorsBuilder::context_words`] and
//! [`DetectorsBuilder::negative_context_words`] add words in any language.
//!
//! # Boundaries
//!
//! A number-like entity never starts or ends inside a longer run of ASCII letters or digits:
//! `ID13800138000` and `138001380001` hold no mobile number. A number that fails its checksum
//! (ID card, bank card) or its date (ID card) is not a match.
//!
//! # Full-width forms
//!
//! Chinese input methods produce full-width digits and punctuation (`１３８－００１３－８０００`,
//! `＠`). When a text contains such characters next to digits, a copy with the full-width
//! ASCII forms (U+FF01–U+FF5E) and the ideographic space folded to ASCII is scanned, and every
//! match is mapped back to the byte offsets of the original text.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use regex::Regex;

use crate::ConfigError;

mod builder;
mod context;
mod fold;
mod network;
mod numbers;
mod scan;
mod secrets;
mod validate;

pub use builder::DetectorsBuilder;

use fold::{FoldMap, fold, needs_fold};
use scan::{Cand, is_alnum};

/// The type of a detected entity: a label such as `CN_MOBILE`, used in placeholders
/// (`<CN_MOBILE_1>`), labelled masks, metrics and audit counts.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntityType(Cow<'static, str>);

impl EntityType {
    /// A mainland China mobile number.
    pub const CN_MOBILE: Self = Self(Cow::Borrowed("CN_MOBILE"));
    /// A mainland China resident identity card number (18 or legacy 15 digits).
    pub const CN_ID_CARD: Self = Self(Cow::Borrowed("CN_ID_CARD"));
    /// A Luhn-valid bank or credit card number.
    pub const BANK_CARD: Self = Self(Cow::Borrowed("BANK_CARD"));
    /// An e-mail address.
    pub const EMAIL: Self = Self(Cow::Borrowed("EMAIL"));
    /// An IPv4 address.
    pub const IPV4: Self = Self(Cow::Borrowed("IPV4"));
    /// An IPv6 address.
    pub const IPV6: Self = Self(Cow::Borrowed("IPV6"));
    /// A PRC passport number (ordinary, diplomatic, service and public-affairs series) or a
    /// HK/Macau/Taiwan travel permit number.
    pub const CN_PASSPORT: Self = Self(Cow::Borrowed("CN_PASSPORT"));
    /// A mainland China landline number with its area code.
    pub const CN_LANDLINE: Self = Self(Cow::Borrowed("CN_LANDLINE"));
    /// A US social security number.
    pub const US_SSN: Self = Self(Cow::Borrowed("US_SSN"));
    /// An API key or token recognised by its provider prefix: `sk-…` (DeepSeek, OpenAI,
    /// Anthropic), `sk_live_…` (Stripe), `AIza…` (Google), `LTAI…` (Alibaba Cloud), `AKID…`
    /// (Tencent Cloud), `ghp_…` (GitHub), `glpat-…` (GitLab), `xoxb-…` (Slack), `hf_…`.
    pub const API_KEY: Self = Self(Cow::Borrowed("API_KEY"));
    /// An AWS access key id (`AKIA…`, `ASIA…`).
    pub const AWS_ACCESS_KEY: Self = Self(Cow::Borrowed("AWS_ACCESS_KEY"));
    /// A JSON Web Token.
    pub const JWT: Self = Self(Cow::Borrowed("JWT"));
    /// A PEM private-key block.
    pub const PRIVATE_KEY: Self = Self(Cow::Borrowed("PRIVATE_KEY"));
    /// Another secret: a password or token after a secret-like word (`password:`, `token=`,
    /// `密码是`), a cloud secret key after its key id, the password of a URL or connection
    /// string, a chat-platform webhook URL.
    pub const SECRET: Self = Self(Cow::Borrowed("SECRET"));

    /// A custom type. The name is upper-cased; it must be 1 to 32 characters of `A-Z`, `0-9`
    /// and `_`, starting with a letter.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when the name has another form.
    pub fn custom(name: &str) -> Result<Self, ConfigError> {
        let up = name.to_ascii_uppercase();
        let ok = !up.is_empty()
            && up.len() <= 32
            && up.as_bytes()[0].is_ascii_uppercase()
            && up
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        if ok {
            Ok(Self(Cow::Owned(up)))
        } else {
            Err(ConfigError::new(
                "name",
                format!(
                    "must be 1-32 characters of A-Z, 0-9 and _, starting with a letter (got {name:?})"
                ),
            ))
        }
    }

    /// The label, e.g. `"CN_MOBILE"`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this type is a secret (API key, access key, token, private key, password).
    pub fn is_secret(&self) -> bool {
        *self == Self::API_KEY
            || *self == Self::AWS_ACCESS_KEY
            || *self == Self::JWT
            || *self == Self::PRIVATE_KEY
            || *self == Self::SECRET
    }

    /// Every built-in type, in priority order.
    pub fn builtin() -> [EntityType; N_BUILTIN] {
        [
            Self::PRIVATE_KEY,
            Self::JWT,
            Self::API_KEY,
            Self::AWS_ACCESS_KEY,
            Self::SECRET,
            Self::CN_ID_CARD,
            Self::BANK_CARD,
            Self::CN_MOBILE,
            Self::CN_LANDLINE,
            Self::US_SSN,
            Self::CN_PASSPORT,
            Self::EMAIL,
            Self::IPV6,
            Self::IPV4,
        ]
    }
}

impl fmt::Debug for EntityType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for EntityType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for EntityType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for EntityType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        for t in Self::builtin() {
            if t.as_str().eq_ignore_ascii_case(&s) {
                return Ok(t);
            }
        }
        Self::custom(&s).map_err(serde::de::Error::custom)
    }
}

/// One detected entity: its byte range in the scanned text, its type and its score.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Detection {
    /// Byte range in the text that was scanned.
    pub range: Range<usize>,
    /// The type of entity.
    pub entity: EntityType,
    /// Confidence in `0.0..=1.0` (base score of the form, adjusted by context words); at least
    /// the set's [`DetectorsBuilder::min_score`]. Custom detectors score 1.0.
    pub score: f32,
}

type Validator = Arc<dyn Fn(&str) -> bool + Send + Sync>;

struct Custom {
    entity: EntityType,
    regex: Regex,
    validator: Option<Validator>,
}

/// Built-in detector indexes, in priority order (lower wins a tie).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    PrivateKey = 0,
    Jwt,
    ApiKey,
    Aws,
    Secret,
    IdCard,
    Card,
    Mobile,
    Landline,
    Ssn,
    Passport,
    Email,
    Ipv6,
    Ipv4,
}

/// The number of built-in entity types.
const N_BUILTIN: usize = 14;

impl Kind {
    const ALL: [Kind; N_BUILTIN] = [
        Kind::PrivateKey,
        Kind::Jwt,
        Kind::ApiKey,
        Kind::Aws,
        Kind::Secret,
        Kind::IdCard,
        Kind::Card,
        Kind::Mobile,
        Kind::Landline,
        Kind::Ssn,
        Kind::Passport,
        Kind::Email,
        Kind::Ipv6,
        Kind::Ipv4,
    ];

    fn entity(self) -> EntityType {
        EntityType::builtin()[self as usize].clone()
    }

    fn from_entity(e: &EntityType) -> Option<Kind> {
        EntityType::builtin()
            .iter()
            .position(|t| t == e)
            .map(|i| Kind::ALL[i])
    }
}

struct Compiled {
    num: numbers::NumericRegexes,
    sec: secrets::SecretRegexes,
}

fn re(p: &str) -> Regex {
    Regex::new(p).expect("built-in detector regex")
}

impl Compiled {
    fn new() -> Self {
        Self {
            num: numbers::NumericRegexes::new(),
            sec: secrets::SecretRegexes::new(),
        }
    }
}

/// Context words of one built-in type, lower-case.
#[derive(Clone, Default)]
struct Context {
    positive: Vec<Vec<u8>>,
    negative: Vec<Vec<u8>>,
}

fn default_context() -> Vec<Context> {
    Kind::ALL
        .iter()
        .map(|k| Context {
            positive: context::positive(*k)
                .iter()
                .map(|w| w.as_bytes().to_vec())
                .collect(),
            negative: context::negative(*k)
                .iter()
                .map(|w| w.as_bytes().to_vec())
                .collect(),
        })
        .collect()
}

/// A set of detectors: the built-in ones that are enabled, plus custom ones.
///
/// Cheap to clone (shared).
#[derive(Clone)]
pub struct Detectors {
    inner: Arc<DetectorsInner>,
}

struct DetectorsInner {
    enabled: [bool; N_BUILTIN],
    compiled: &'static Compiled,
    custom: Vec<Custom>,
    min_score: f32,
    context: Vec<Context>,
}

/// The built-in regexes, compiled once per process and shared by every detector set.
static COMPILED: std::sync::LazyLock<Compiled> = std::sync::LazyLock::new(Compiled::new);

/// The default [`DetectorsBuilder::min_score`].
pub const DEFAULT_MIN_SCORE: f32 = 0.5;

impl fmt::Debug for Detectors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let enabled: Vec<EntityType> = Kind::ALL
            .iter()
            .filter(|k| self.inner.enabled[**k as usize])
            .map(|k| k.entity())
            .collect();
        let custom: Vec<&EntityType> = self.inner.custom.iter().map(|c| &c.entity).collect();
        f.debug_struct("Detectors")
            .field("builtin", &enabled)
            .field("custom", &custom)
            .field("min_score", &self.inner.min_score)
            .finish()
    }
}

impl Default for Detectors {
    fn default() -> Self {
        Self::all()
    }
}

impl Detectors {
    /// Every built-in detector.
    pub fn all() -> Self {
        Self::builder().build().expect("no custom detectors")
    }

    /// A builder starting from every built-in detector, with the default threshold and
    /// context words.
    pub fn builder() -> DetectorsBuilder {
        DetectorsBuilder {
            enabled: [true; N_BUILTIN],
            custom: Vec::new(),
            error: None,
            min_score: DEFAULT_MIN_SCORE,
            context: default_context(),
        }
    }

    /// Whether a built-in or custom detector for `entity` is enabled.
    pub fn is_enabled(&self, entity: &EntityType) -> bool {
        match Kind::from_entity(entity) {
            Some(k) => self.inner.enabled[k as usize],
            None => self.inner.custom.iter().any(|c| &c.entity == entity),
        }
    }

    /// The score a detection needs to be reported.
    pub fn min_score(&self) -> f32 {
        self.inner.min_score
    }

    /// Finds every entity in `text`, non-overlapping, in order.
    pub fn detect(&self, text: &str) -> Vec<Detection> {
        let mut out = Vec::new();
        self.detect_scored(text, |range, entity, score| {
            out.push(Detection {
                range,
                entity: entity.clone(),
                score,
            })
        });
        out
    }

    /// Whether `text` holds any entity.
    pub fn contains_any(&self, text: &str) -> bool {
        let mut any = false;
        self.detect_each(text, |_, _| any = true);
        any
    }

    /// Calls `f` for every entity in `text`, non-overlapping, in order of position.
    pub(crate) fn detect_each(&self, text: &str, mut f: impl FnMut(Range<usize>, &EntityType)) {
        self.detect_scored(text, |r, e, _| f(r, e));
    }

    /// Calls `f` with every entity in `text` and its score, non-overlapping, in order.
    fn detect_scored(&self, text: &str, mut f: impl FnMut(Range<usize>, &EntityType, f32)) {
        let mut emit = |c: &Cand, map: Option<&FoldMap>| {
            let (s, e) = match map {
                Some(m) => (m.original(c.start), m.original(c.end)),
                None => (c.start, c.end),
            };
            let entity = if c.prio < N_BUILTIN {
                Cow::Owned(Kind::ALL[c.prio].entity())
            } else {
                Cow::Borrowed(&self.inner.custom[c.prio - N_BUILTIN].entity)
            };
            f(s..e, &entity, c.score);
        };
        if needs_fold(text.as_bytes()) {
            let (folded, map) = fold(text);
            for c in self.scan(&folded) {
                emit(&c, Some(&map));
            }
        } else {
            for c in self.scan(text) {
                emit(&c, None);
            }
        }
    }
}
