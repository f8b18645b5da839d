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

mod context;
mod network;
mod numbers;
mod secrets;

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

/// Builds a [`Detectors`] set.
#[must_use]
pub struct DetectorsBuilder {
    enabled: [bool; N_BUILTIN],
    custom: Vec<Custom>,
    error: Option<ConfigError>,
    min_score: f32,
    context: Vec<Context>,
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

    /// The score a detection needs to be reported (default [`DEFAULT_MIN_SCORE`], 0.5).
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
            let c = &mut self.context[k as usize].positive;
            c.extend(
                words
                    .into_iter()
                    .map(|w| w.as_ref().to_ascii_lowercase().into_bytes()),
            );
            c.retain(|w| !w.is_empty());
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
            let c = &mut self.context[k as usize].negative;
            c.extend(
                words
                    .into_iter()
                    .map(|w| w.as_ref().to_ascii_lowercase().into_bytes()),
            );
            c.retain(|w| !w.is_empty());
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

#[derive(Clone, Copy)]
struct Cand {
    start: usize,
    end: usize,
    /// Priority: built-in kind index, or N_BUILTIN + custom index.
    prio: usize,
    score: f32,
}

#[inline]
fn is_alnum(b: u8) -> bool {
    b.is_ascii_alphanumeric()
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

    /// The score of a `kind` candidate at `start` with base score `base`, after context words.
    fn adjust(&self, b: &[u8], kind: Kind, start: usize, base: f32) -> f32 {
        let ctx = &self.inner.context[kind as usize];
        if ctx.positive.is_empty() && ctx.negative.is_empty() {
            return base;
        }
        let w = context::Window::new(b, start);
        let mut s = base;
        if w.any(ctx.positive.iter().map(Vec::as_slice)) {
            s += context::BOOST;
        }
        if w.any(ctx.negative.iter().map(Vec::as_slice)) {
            s -= context::PENALTY;
        }
        s.clamp(0.0, 1.0)
    }

    fn scan(&self, t: &str) -> Vec<Cand> {
        let inner = &*self.inner;
        let b = t.as_bytes();
        let mut cands: Vec<Cand> = Vec::new();
        let en = &inner.enabled;
        let any_numeric = [
            Kind::IdCard,
            Kind::Card,
            Kind::Mobile,
            Kind::Landline,
            Kind::Ssn,
            Kind::Passport,
            Kind::Ipv4,
        ]
        .iter()
        .any(|k| en[*k as usize]);
        if any_numeric {
            self.scan_numeric(t, &mut cands);
        }
        if en[Kind::Email as usize] {
            for at in memchr::memchr_iter(b'@', b) {
                if let Some((s, e)) = network::email_at(b, at) {
                    cands.push(Cand {
                        start: s,
                        end: e,
                        prio: Kind::Email as usize,
                        score: 0.9,
                    });
                }
            }
        }
        if en[Kind::Ipv6 as usize] {
            let mut next = 0;
            for c in memchr::memchr_iter(b':', b) {
                if c < next {
                    continue;
                }
                let (s, e, tok_end) = network::ipv6_at(b, c);
                next = tok_end;
                if e > s {
                    cands.push(Cand {
                        start: s,
                        end: e,
                        prio: Kind::Ipv6 as usize,
                        score: 0.8,
                    });
                }
            }
        }
        let sec = [
            Kind::PrivateKey,
            Kind::Jwt,
            Kind::ApiKey,
            Kind::Aws,
            Kind::Secret,
        ];
        if sec.iter().any(|k| en[*k as usize]) {
            secrets::scan(t, &inner.compiled.sec, en, &mut cands);
        }
        for (i, c) in inner.custom.iter().enumerate() {
            for m in c.regex.find_iter(t) {
                if m.start() == m.end() {
                    continue;
                }
                if c.validator.as_ref().is_none_or(|v| v(m.as_str())) {
                    cands.push(Cand {
                        start: m.start(),
                        end: m.end(),
                        prio: N_BUILTIN + i,
                        score: 1.0,
                    });
                }
            }
        }
        let min = inner.min_score;
        cands.retain(|c| c.score >= min);
        select(cands)
    }

    fn scan_numeric(&self, t: &str, cands: &mut Vec<Cand>) {
        let b = t.as_bytes();
        let n = b.len();
        let mut i = 0;
        while i < n {
            // Next ASCII digit.
            match next_digit(b, i) {
                Some(at) => i = at,
                None => break,
            }
            // Region start: back over letters, then an optional `+`, then an optional `(`.
            let mut rs = i;
            while rs > 0 && b[rs - 1].is_ascii_alphabetic() {
                rs -= 1;
            }
            if rs > 0 && b[rs - 1] == b'+' {
                rs -= 1;
            }
            if rs > 0 && b[rs - 1] == b'(' {
                rs -= 1;
            }
            // Region end: alphanumerics, and up to two separators followed by a digit or `(`.
            let mut re_ = i;
            let mut digits = 0usize;
            let mut dots = 0usize;
            loop {
                if re_ < n && is_alnum(b[re_]) {
                    digits += b[re_].is_ascii_digit() as usize;
                    re_ += 1;
                    continue;
                }
                let mut k = re_;
                while k < n && k < re_ + 2 && matches!(b[k], b' ' | b'-' | b'.' | b'(' | b')') {
                    k += 1;
                }
                if k > re_ && k < n && (b[k].is_ascii_digit() || b[k] == b'(') {
                    dots += b[re_..k].iter().filter(|c| **c == b'.').count();
                    re_ = k;
                    continue;
                }
                // A closing parenthesis right after digits belongs to the region.
                if re_ < n && b[re_] == b')' {
                    re_ += 1;
                }
                break;
            }
            if digits >= 7 || (digits >= 4 && dots >= 3) {
                self.numeric_region(t, rs, re_, cands);
            }
            i = re_.max(i + 1);
        }
    }

    fn numeric_region(&self, t: &str, rs: usize, re_: usize, cands: &mut Vec<Cand>) {
        let b = t.as_bytes();
        let en = &self.inner.enabled;
        let min = self.inner.min_score;
        let r = &self.inner.compiled.num;
        let mut p = rs;
        while p < re_ {
            let c = b[p];
            let starts = (c.is_ascii_alphanumeric() || c == b'+' || c == b'(')
                && (p == 0 || !is_alnum(b[p - 1]));
            if !starts {
                p += 1;
                continue;
            }
            // Every numeric match lies within the region: a short haystack.
            let rest = &t[p..re_];
            let mut best: Option<(usize, Kind, f32)> = None;
            let mut consider = |len: usize, kind: Kind, base: f32| {
                if best.is_some_and(|(l, _, _)| len <= l) {
                    return;
                }
                let score = self.adjust(b, kind, p, base);
                if score >= min {
                    best = Some((len, kind, score));
                }
            };
            let end_ok = |len: usize| b.get(p + len).is_none_or(|c| !is_alnum(*c));
            if c.is_ascii_digit() {
                if en[Kind::IdCard as usize]
                    && let Some(m) = r.id.find(rest)
                    && end_ok(m.end())
                    && let Some(s) = numbers::id_score(m.as_str())
                {
                    consider(m.end(), Kind::IdCard, s);
                }
                if en[Kind::Card as usize]
                    && let Some(m) = r.card.find(rest)
                    && let Some((len, s)) = card_at(b, p, m.as_str(), end_ok)
                {
                    consider(len, Kind::Card, s);
                }
                if en[Kind::Ssn as usize]
                    && let Some(m) = r.ssn.find(rest)
                    && end_ok(m.end())
                    && let Some(s) = numbers::ssn_score(m.as_str())
                {
                    consider(m.end(), Kind::Ssn, s);
                }
                if en[Kind::Ipv4 as usize]
                    && let Some(m) = r.ipv4.find(rest)
                    && end_ok(m.end())
                    && network::ipv4_ok(b, p, m.as_str())
                {
                    consider(m.end(), Kind::Ipv4, 0.75);
                }
            }
            if (c.is_ascii_digit() || c == b'+' || c == b'(')
                && en[Kind::Mobile as usize]
                && let Some(m) = r.mobile.find(rest)
                && end_ok(m.end())
            {
                consider(m.end(), Kind::Mobile, 0.85);
            }
            if (c == b'0' || c == b'(' || c == b'+')
                && en[Kind::Landline as usize]
                && let Some(m) = r.landline.find(rest)
                && end_ok(m.end())
                && let Some(s) = numbers::landline_score(m.as_str())
            {
                consider(m.end(), Kind::Landline, s);
            }
            if matches!(
                c,
                b'E' | b'G' | b'D' | b'S' | b'P' | b'C' | b'H' | b'M' | b'L'
            ) && en[Kind::Passport as usize]
                && let Some(m) = r.passport.find(rest)
                && end_ok(m.end())
            {
                consider(m.end(), Kind::Passport, numbers::passport_score(m.as_str()));
            }
            if let Some((len, kind, score)) = best {
                cands.push(Cand {
                    start: p,
                    end: p + len,
                    prio: kind as usize,
                    score,
                });
            }
            // Later token starts are tried too, even inside this match: if another detector's
            // match (an e-mail, an IPv6 address) wins the overlap, a number after it must
            // still be found. `select` keeps the leftmost-longest.
            p += 1;
        }
    }
}

/// A card at `p` (greedy match `m`): the longest prefix that ends at a digit-group boundary,
/// passes `end_ok` and validates. A number written in groups must not continue a grouped run
/// that starts before it (the last groups of a 20-digit invoice check code are no card),
/// unless that run is a whole card itself (two cards written one after the other) or what
/// stands before is no group at all (a phone number, an amount: longer than a group).
fn card_at(b: &[u8], p: usize, m: &str, end_ok: impl Fn(usize) -> bool) -> Option<(usize, f32)> {
    // The longest digit group of a number written in groups (invoice codes: 4 or 5; cards: 4
    // to 6).
    const MAX_GROUP: usize = 6;
    let mb = m.as_bytes();
    let sep = mb.iter().copied().find(|c| !c.is_ascii_digit());
    if let Some(sp) = sep
        && p >= 2
        && b[p - 1] == sp
        && b[p - 2].is_ascii_digit()
    {
        let run = p - 1;
        let group = run
            - b[..run]
                .iter()
                .rposition(|c| !c.is_ascii_digit())
                .map_or(0, |i| i + 1);
        let start = b[..run]
            .iter()
            .rposition(|c| !c.is_ascii_digit() && *c != sp)
            .map_or(0, |i| i + 1);
        // Whether the run ends with a whole card: its groups from some group start on.
        let ends_with_card = (start..run)
            .filter(|&i| b[i].is_ascii_digit() && (i == start || b[i - 1] == sp))
            .any(|i| {
                std::str::from_utf8(&b[i..run])
                    .ok()
                    .and_then(numbers::card_score)
                    .is_some()
            });
        if group <= MAX_GROUP && !ends_with_card {
            return None;
        }
    }
    let mut ends: Vec<usize> = vec![mb.len()];
    if sep.is_some() {
        ends.extend(
            mb.iter()
                .enumerate()
                .rev()
                .filter(|(_, c)| !c.is_ascii_digit())
                .map(|(i, _)| i),
        );
    }
    ends.into_iter()
        .filter(|e| end_ok(*e))
        .find_map(|e| numbers::card_score(&m[..e]).map(|s| (e, s)))
}

/// Leftmost, then longest, then highest priority; non-overlapping.
fn select(mut cands: Vec<Cand>) -> Vec<Cand> {
    if cands.len() <= 1 {
        return cands;
    }
    cands.sort_unstable_by(|a, b| {
        a.start
            .cmp(&b.start)
            .then(b.end.cmp(&a.end))
            .then(a.prio.cmp(&b.prio))
    });
    let mut out: Vec<Cand> = Vec::with_capacity(cands.len());
    for c in cands {
        if out.last().is_none_or(|l| c.start >= l.end) {
            out.push(c);
        }
    }
    out
}

/// Whether the text holds full-width digits or symbols next to digits that must be folded.
fn needs_fold(b: &[u8]) -> bool {
    let mut from = 0;
    while let Some(off) = memchr::memchr(0xEF, &b[from..]) {
        let i = from + off;
        if i + 2 < b.len() && b[i + 1] == 0xBC {
            let c = b[i + 2];
            if (0x90..=0x99).contains(&c) || c == 0xA0 {
                return true;
            }
            if matches!(c, 0x88 | 0x8B | 0x8D)
                && (b.get(i + 3).is_some_and(u8::is_ascii_digit)
                    || (i > 0 && b[i - 1].is_ascii_digit()))
            {
                return true;
            }
        }
        from = i + 1;
    }
    false
}

/// Maps offsets of a folded text back to the original: each folded character shrank from 3
/// bytes to 1.
struct FoldMap {
    /// (offset in the folded text just after a folded character, total shrink so far)
    points: Vec<(usize, usize)>,
}

impl FoldMap {
    fn original(&self, pos: usize) -> usize {
        let i = self.points.partition_point(|(q, _)| *q <= pos);
        if i == 0 {
            pos
        } else {
            pos + self.points[i - 1].1
        }
    }
}

/// Folds full-width ASCII forms and the ideographic space to ASCII. Returns the folded text
/// and the map back to the original's offsets.
fn fold(text: &str) -> (String, FoldMap) {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut points = Vec::new();
    let mut shrink = 0;
    let mut last = 0;
    let mut from = 0;
    while let Some(off) = memchr::memchr2(0xEF, 0xE3, &b[from..]) {
        let i = from + off;
        from = i + 1;
        let Some(ch) = text.get(i..).and_then(|t| t.chars().next()) else {
            continue;
        };
        let c = ch as u32;
        let folded = if (0xFF01..=0xFF5E).contains(&c) {
            char::from_u32(c - 0xFEE0)
        } else if c == 0x3000 {
            Some(' ')
        } else {
            None
        };
        if let Some(a) = folded {
            out.push_str(&text[last..i]);
            out.push(a);
            shrink += ch.len_utf8() - 1;
            points.push((out.len(), shrink));
            last = i + ch.len_utf8();
            from = last;
        }
    }
    out.push_str(&text[last..]);
    (out, FoldMap { points })
}

/// The position of the next ASCII digit at or after `from`, eight bytes at a time.
#[inline]
fn next_digit(b: &[u8], mut i: usize) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    while i + 8 <= b.len() {
        let x = u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let y = x & !HI;
        // High bit of each byte: >= '0' and not > '9', for ASCII bytes only (no carries: y <= 0x7F).
        let ge0 = y + LO * (0x80 - b'0' as u64);
        let gt9 = y + LO * (0x7F - b'9' as u64);
        let m = ge0 & !gt9 & !x & HI;
        if m != 0 {
            return Some(i + (m.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    b[i..].iter().position(u8::is_ascii_digit).map(|o| i + o)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(t: &str) -> Vec<(String, String)> {
        Detectors::all()
            .detect(t)
            .into_iter()
            .map(|d| (d.entity.to_string(), t[d.range].to_string()))
            .collect()
    }

    #[test]
    fn next_digit_finds_every_digit() {
        let t = "你好abc，é1x 23 ９ 4567890".as_bytes();
        let mut got = Vec::new();
        let mut i = 0;
        while let Some(p) = next_digit(t, i) {
            got.push(p);
            i = p + 1;
        }
        let expected: Vec<usize> = (0..t.len()).filter(|i| t[*i].is_ascii_digit()).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn fold_maps_back() {
        let t = "电话１３８００１３８０００。";
        assert_eq!(
            kinds(t),
            vec![("CN_MOBILE".into(), "１３８００１３８０００".into())]
        );
    }
}
