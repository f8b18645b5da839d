//! PII and secret detectors, all run in one pass over a text.
//!
//! Each detector is a regular expression plus a validator. Regexes never run over the whole
//! text: a byte scan first finds the few places that can start an entity (digit runs with
//! enough digits, `@`, `:`, the literal prefixes of secrets), and the anchored regex of each
//! candidate detector runs only there. Candidates that overlap are resolved leftmost, then
//! longest, then by detector priority (secrets, ID card, bank card, mobile, landline, SSN,
//! passport, email, IPv6, IPv4, custom).
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
use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::Range;
use std::sync::Arc;

use regex::Regex;

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
    /// A Chinese passport number.
    pub const CN_PASSPORT: Self = Self(Cow::Borrowed("CN_PASSPORT"));
    /// A mainland China landline number with its area code.
    pub const CN_LANDLINE: Self = Self(Cow::Borrowed("CN_LANDLINE"));
    /// A US social security number.
    pub const US_SSN: Self = Self(Cow::Borrowed("US_SSN"));
    /// An API key of the `sk-…` form (DeepSeek, OpenAI and others).
    pub const API_KEY: Self = Self(Cow::Borrowed("API_KEY"));
    /// An AWS access key id (`AKIA…`, `ASIA…`).
    pub const AWS_ACCESS_KEY: Self = Self(Cow::Borrowed("AWS_ACCESS_KEY"));
    /// A JSON Web Token.
    pub const JWT: Self = Self(Cow::Borrowed("JWT"));
    /// A PEM private-key block.
    pub const PRIVATE_KEY: Self = Self(Cow::Borrowed("PRIVATE_KEY"));

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
            Err(ConfigError::new(format!(
                "entity type names are 1-32 characters of A-Z, 0-9 and _, starting with a letter; got {name:?}"
            )))
        }
    }

    /// The label, e.g. `"CN_MOBILE"`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this type is a secret (API key, access key, token, private key).
    pub fn is_secret(&self) -> bool {
        *self == Self::API_KEY
            || *self == Self::AWS_ACCESS_KEY
            || *self == Self::JWT
            || *self == Self::PRIVATE_KEY
    }

    /// Every built-in type, in priority order.
    pub fn builtin() -> [EntityType; 13] {
        [
            Self::PRIVATE_KEY,
            Self::JWT,
            Self::API_KEY,
            Self::AWS_ACCESS_KEY,
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

/// An invalid configuration, with a message that says what to fix.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConfigError {
    message: String,
}

impl ConfigError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid redaction configuration: {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// One detected entity: its byte range in the scanned text and its type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detection {
    /// Byte range in the text that was scanned.
    pub range: Range<usize>,
    /// The type of entity.
    pub entity: EntityType,
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

const N_BUILTIN: usize = 13;

impl Kind {
    const ALL: [Kind; N_BUILTIN] = [
        Kind::PrivateKey,
        Kind::Jwt,
        Kind::ApiKey,
        Kind::Aws,
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

/// The digit-based detectors that run at token starts, with their anchored regexes.
struct NumericRegexes {
    mobile: Regex,
    id: Regex,
    card: Regex,
    landline: Regex,
    ssn: Regex,
    passport: Regex,
    ipv4: Regex,
}

struct SecretRegexes {
    trigger: Regex,
    api_key: Regex,
    aws: Regex,
    jwt: Regex,
    pem: Regex,
    pem_open: Regex,
}

struct Compiled {
    num: NumericRegexes,
    sec: SecretRegexes,
}

fn re(p: &str) -> Regex {
    Regex::new(p).expect("built-in detector regex")
}

impl Compiled {
    fn new() -> Self {
        Self {
            num: NumericRegexes {
                mobile: re(r"\A(?:(?:\+|00)86[ -]?)?1[3-9][0-9](?:[ -]?[0-9]{4}){2}"),
                id: re(r"\A[1-9][0-9]{14}(?:[0-9]{2}[0-9Xx])?"),
                card: re(r"\A[2-6][0-9](?:[ -]?[0-9]){11,17}"),
                landline: re(r"\A(?:\(0[0-9]{2,3}\)[ -]?|0[0-9]{2,3}[ -]?)[0-9]{7,8}"),
                ssn: re(r"\A[0-9]{3}[- ][0-9]{2}[- ][0-9]{4}"),
                passport: re(r"\A(?:[EG][0-9]{8}|E[A-HJ-NP-Z][0-9]{7})"),
                ipv4: re(r"\A[0-9]{1,3}(?:\.[0-9]{1,3}){3}"),
            },
            sec: SecretRegexes {
                trigger: re(r"sk-|AKIA|ASIA|eyJ|-----BEGIN "),
                api_key: re(r"\Ask-[A-Za-z0-9_-]{20,}"),
                aws: re(r"\A(?:AKIA|ASIA)[0-9A-Z]{16}"),
                jwt: re(r"\AeyJ[A-Za-z0-9_-]{4,}\.ey[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"),
                pem: re(
                    r"\A-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----(?s:.*?)-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----",
                ),
                pem_open: re(r"\A-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----[A-Za-z0-9+/=\s:,-]*"),
            },
        }
    }
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
}

/// The built-in regexes, compiled once per process and shared by every detector set.
static COMPILED: std::sync::LazyLock<Compiled> = std::sync::LazyLock::new(Compiled::new);

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
            self.error = Some(ConfigError::new(format!(
                "custom detector {name:?} uses the name of a built-in detector"
            )));
            return self;
        }
        match Regex::new(pattern) {
            Ok(regex) => self.custom.push(Custom {
                entity,
                regex,
                validator,
            }),
            Err(e) => {
                self.error = Some(ConfigError::new(format!(
                    "custom detector {name:?}: invalid regex: {e}"
                )))
            }
        }
        self
    }

    /// Builds the set.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] for an invalid custom name or regex.
    pub fn build(self) -> Result<Detectors, ConfigError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        Ok(Detectors {
            inner: Arc::new(DetectorsInner {
                enabled: self.enabled,
                compiled: &COMPILED,
                custom: self.custom,
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

    /// A builder starting from every built-in detector.
    pub fn builder() -> DetectorsBuilder {
        DetectorsBuilder {
            enabled: [true; N_BUILTIN],
            custom: Vec::new(),
            error: None,
        }
    }

    /// Whether a built-in or custom detector for `entity` is enabled.
    pub fn is_enabled(&self, entity: &EntityType) -> bool {
        match Kind::from_entity(entity) {
            Some(k) => self.inner.enabled[k as usize],
            None => self.inner.custom.iter().any(|c| &c.entity == entity),
        }
    }

    /// Finds every entity in `text`, non-overlapping, in order.
    pub fn detect(&self, text: &str) -> Vec<Detection> {
        let mut out = Vec::new();
        self.detect_each(text, |range, entity| {
            out.push(Detection {
                range,
                entity: entity.clone(),
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
            f(s..e, &entity);
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
                if let Some((s, e)) = email_at(b, at) {
                    cands.push(Cand {
                        start: s,
                        end: e,
                        prio: Kind::Email as usize,
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
                let (s, e, tok_end) = ipv6_at(b, c);
                next = tok_end;
                if e > s {
                    cands.push(Cand {
                        start: s,
                        end: e,
                        prio: Kind::Ipv6 as usize,
                    });
                }
            }
        }
        let sec = [Kind::PrivateKey, Kind::Jwt, Kind::ApiKey, Kind::Aws];
        if sec.iter().any(|k| en[*k as usize]) {
            let r = &inner.compiled.sec;
            let mut next = 0;
            for m in r.trigger.find_iter(t) {
                let p = m.start();
                if p < next {
                    continue;
                }
                let rest = &t[p..];
                let left_ok = p == 0 || !is_alnum(b[p - 1]);
                let found = match &b[p..p + 2] {
                    b"sk" if en[Kind::ApiKey as usize] && left_ok => {
                        r.api_key.find(rest).map(|m| (m.end(), Kind::ApiKey))
                    }
                    b"AK" | b"AS" if en[Kind::Aws as usize] && left_ok => r
                        .aws
                        .find(rest)
                        .filter(|m| b.get(p + m.end()).is_none_or(|c| !is_alnum(*c)))
                        .map(|m| (m.end(), Kind::Aws)),
                    b"ey" if en[Kind::Jwt as usize] && left_ok => {
                        r.jwt.find(rest).map(|m| (m.end(), Kind::Jwt))
                    }
                    b"--" if en[Kind::PrivateKey as usize] => r
                        .pem
                        .find(rest)
                        .or_else(|| r.pem_open.find(rest))
                        .map(|m| (m.end(), Kind::PrivateKey)),
                    _ => None,
                };
                if let Some((len, kind)) = found {
                    next = p + len;
                    cands.push(Cand {
                        start: p,
                        end: p + len,
                        prio: kind as usize,
                    });
                }
            }
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
                    });
                }
            }
        }
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
            // Region start: back over letters, then an optional `+` or `(`.
            let mut rs = i;
            while rs > 0 && b[rs - 1].is_ascii_alphabetic() {
                rs -= 1;
            }
            if rs > 0 && (b[rs - 1] == b'+' || b[rs - 1] == b'(') {
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
            let mut best: Option<(usize, Kind)> = None;
            let mut consider = |len: usize, kind: Kind| {
                if best.is_none_or(|(l, _)| len > l) {
                    best = Some((len, kind));
                }
            };
            let end_ok = |len: usize| b.get(p + len).is_none_or(|c| !is_alnum(*c));
            if c.is_ascii_digit() {
                if en[Kind::IdCard as usize]
                    && let Some(m) = r.id.find(rest)
                    && end_ok(m.end())
                    && valid_id(m.as_str())
                {
                    consider(m.end(), Kind::IdCard);
                }
                if en[Kind::Card as usize]
                    && let Some(m) = r.card.find(rest)
                    && let Some(len) = valid_card(m.as_str(), end_ok)
                {
                    consider(len, Kind::Card);
                }
                if en[Kind::Ssn as usize]
                    && let Some(m) = r.ssn.find(rest)
                    && end_ok(m.end())
                    && valid_ssn(m.as_str())
                {
                    consider(m.end(), Kind::Ssn);
                }
                if en[Kind::Ipv4 as usize]
                    && let Some(m) = r.ipv4.find(rest)
                    && end_ok(m.end())
                    && !(b.get(p + m.end()) == Some(&b'.')
                        && b.get(p + m.end() + 1).is_some_and(u8::is_ascii_digit))
                    && (p == 0 || b[p - 1] != b'.')
                    && m.as_str().parse::<Ipv4Addr>().is_ok()
                {
                    consider(m.end(), Kind::Ipv4);
                }
            }
            if (c.is_ascii_digit() || c == b'+')
                && en[Kind::Mobile as usize]
                && let Some(m) = r.mobile.find(rest)
                && end_ok(m.end())
            {
                consider(m.end(), Kind::Mobile);
            }
            if (c == b'0' || c == b'(')
                && en[Kind::Landline as usize]
                && let Some(m) = r.landline.find(rest)
                && end_ok(m.end())
                && valid_landline(m.as_str())
            {
                consider(m.end(), Kind::Landline);
            }
            if (c == b'E' || c == b'G')
                && en[Kind::Passport as usize]
                && let Some(m) = r.passport.find(rest)
                && end_ok(m.end())
            {
                consider(m.end(), Kind::Passport);
            }
            if let Some((len, kind)) = best {
                cands.push(Cand {
                    start: p,
                    end: p + len,
                    prio: kind as usize,
                });
            }
            // Later token starts are tried too, even inside this match: if another detector's
            // match (an e-mail, an IPv6 address) wins the overlap, a number after it must
            // still be found. `select` keeps the leftmost-longest.
            p += 1;
        }
    }
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

const PROVINCES: [u8; 35] = [
    11, 12, 13, 14, 15, 21, 22, 23, 31, 32, 33, 34, 35, 36, 37, 41, 42, 43, 44, 45, 46, 50, 51, 52,
    53, 54, 61, 62, 63, 64, 65, 71, 81, 82, 83,
];

fn valid_date(y: u32, m: u32, d: u32) -> bool {
    if !(1..=12).contains(&m) || d == 0 {
        return false;
    }
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    d <= days[(m - 1) as usize]
}

fn num(s: &[u8]) -> u32 {
    s.iter().fold(0, |a, c| a * 10 + (c - b'0') as u32)
}

/// Validates an 18-digit (check character) or 15-digit (legacy) resident ID number.
pub(crate) fn valid_id(s: &str) -> bool {
    let b = s.as_bytes();
    if !PROVINCES.contains(&(num(&b[..2]) as u8)) {
        return false;
    }
    match b.len() {
        18 => {
            let y = num(&b[6..10]);
            if !(1800..=2100).contains(&y) || !valid_date(y, num(&b[10..12]), num(&b[12..14])) {
                return false;
            }
            const W: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
            let sum: u32 = b[..17]
                .iter()
                .zip(W)
                .map(|(c, w)| (c - b'0') as u32 * w)
                .sum();
            let check = b"10X98765432"[(sum % 11) as usize];
            b[17].to_ascii_uppercase() == check
        }
        15 => valid_date(1900 + num(&b[6..8]), num(&b[8..10]), num(&b[10..12])),
        _ => false,
    }
}

fn luhn(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut v = (d - b'0') as u32;
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum % 10 == 0
}

fn card_prefix_ok(d: &[u8]) -> bool {
    match d[0] {
        b'4' => true,
        b'5' => (b'1'..=b'5').contains(&d[1]),
        b'2' => {
            let p = num(&d[..4]);
            (2221..=2720).contains(&p)
        }
        b'3' => matches!(d[1], b'4' | b'5' | b'6' | b'7' | b'8' | b'0'),
        b'6' => true,
        _ => false,
    }
}

/// Validates a card candidate (greedy match); returns the length of the longest valid prefix
/// that ends at a digit-group boundary and passes `end_ok`.
fn valid_card(s: &str, end_ok: impl Fn(usize) -> bool) -> Option<usize> {
    let b = s.as_bytes();
    let sep = b.iter().copied().find(|c| !c.is_ascii_digit());
    // Candidate end positions: the whole match, and (with separators) each group end.
    let mut ends: Vec<usize> = vec![b.len()];
    if sep.is_some() {
        for (i, c) in b.iter().enumerate() {
            if !c.is_ascii_digit() {
                ends.push(i);
            }
        }
        ends.sort_unstable_by(|a, b| b.cmp(a));
    }
    for end in ends {
        let part = &b[..end];
        if let Some(sp) = sep
            && part.iter().any(|c| !c.is_ascii_digit() && *c != sp)
        {
            continue;
        }
        let digits: Vec<u8> = part.iter().copied().filter(u8::is_ascii_digit).collect();
        if !(13..=19).contains(&digits.len()) || !end_ok(end) {
            continue;
        }
        if card_prefix_ok(&digits) && luhn(&digits) {
            return Some(end);
        }
    }
    None
}

fn valid_ssn(s: &str) -> bool {
    let b = s.as_bytes();
    if b[3] != b[6] {
        return false;
    }
    let area = num(&b[..3]);
    let group = num(&b[4..6]);
    let serial = num(&b[7..11]);
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
}

fn valid_landline(s: &str) -> bool {
    let b = s.as_bytes();
    let digits: Vec<u8> = b.iter().copied().filter(u8::is_ascii_digit).collect();
    let area_len = if digits[1] == b'1' && digits[2] == b'0' || digits[1] == b'2' {
        3
    } else if (b'3'..=b'9').contains(&digits[1]) {
        4
    } else {
        return false;
    };
    let local = digits.len() - area_len;
    if area_len == 3 && local != 8 || area_len == 4 && !(7..=8).contains(&local) {
        return false;
    }
    // Where the number is written with a separator, it must sit after the area code.
    let written_area = b
        .iter()
        .position(|c| matches!(c, b' ' | b'-' | b')'))
        .map(|i| b[..i].iter().filter(|c| c.is_ascii_digit()).count());
    written_area.is_none_or(|a| a == area_len)
}

fn is_email_local(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'%' | b'+' | b'-')
}

fn email_at(b: &[u8], at: usize) -> Option<(usize, usize)> {
    let mut s = at;
    while s > 0 && is_email_local(b[s - 1]) && at - s < 64 {
        s -= 1;
    }
    while s < at && matches!(b[s], b'.' | b'-' | b'+') {
        s += 1;
    }
    if s == at || (s > 0 && is_email_local(b[s - 1])) || b[s..at].windows(2).any(|w| w == b"..") {
        return None;
    }
    let mut e = at + 1;
    while e < b.len() && (b[e].is_ascii_alphanumeric() || b[e] == b'.' || b[e] == b'-') {
        e += 1;
    }
    while e > at + 1 && matches!(b[e - 1], b'.' | b'-') {
        e -= 1;
    }
    let domain = &b[at + 1..e];
    let labels: Vec<&[u8]> = domain.split(|c| *c == b'.').collect();
    if labels.len() < 2
        || labels
            .iter()
            .any(|l| l.is_empty() || l.len() > 63 || l[0] == b'-' || l[l.len() - 1] == b'-')
    {
        return None;
    }
    let tld = labels[labels.len() - 1];
    if tld.len() < 2 || !tld.iter().all(u8::is_ascii_alphabetic) {
        return None;
    }
    Some((s, e))
}

fn is_v6(c: u8) -> bool {
    c.is_ascii_hexdigit() || c == b':' || c == b'.'
}

/// Returns (start, end) of a valid IPv6 address around the colon at `c` (empty if none), and
/// the end of the scanned token.
fn ipv6_at(b: &[u8], c: usize) -> (usize, usize, usize) {
    let mut s = c;
    while s > 0 && is_v6(b[s - 1]) {
        s -= 1;
    }
    let mut e = c + 1;
    while e < b.len() && is_v6(b[e]) {
        e += 1;
    }
    let tok_end = e;
    let none = (0, 0, tok_end);
    if (s > 0 && (is_alnum(b[s - 1]) || b[s - 1] == b'_'))
        || (e < b.len() && (is_alnum(b[e]) || b[e] == b'_'))
    {
        return none;
    }
    // Trailing sentence punctuation.
    while e > s && b[e - 1] == b'.' {
        e -= 1;
    }
    if e > s + 1 && b[e - 1] == b':' && b[e - 2] != b':' {
        e -= 1;
    }
    while s < e && b[s] == b'.' {
        s += 1;
    }
    let tok = &b[s..e];
    let colons = tok.iter().filter(|c| **c == b':').count();
    if colons < 2 || !tok.iter().any(u8::is_ascii_hexdigit) {
        return none;
    }
    match std::str::from_utf8(tok)
        .ok()
        .and_then(|t| t.parse::<Ipv6Addr>().ok())
    {
        Some(_) => (s, e, tok_end),
        None => none,
    }
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
    fn id_checksum() {
        assert!(valid_id("11010519491231002X"));
        assert!(!valid_id("110105194912310021"));
        assert!(valid_id("440524188001010014"));
        assert!(valid_id("110105491231002"));
        assert!(!valid_id("110105491331002"));
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
