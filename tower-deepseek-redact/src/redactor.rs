//! What to do with each detected entity, and the per-request vault of reversible placeholders.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretSlice};
use sha2::Sha256;

use crate::ConfigError;
use crate::detect::{Detectors, EntityType};

/// What replaces an entity of a given type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Mode {
    /// `***`.
    Mask,
    /// The type in brackets: `[CN_MOBILE]`.
    Label,
    /// Keeps the first 3 and last 4 characters of long values (`138****8000`), the last 4 of
    /// shorter ones (`***-**-6789`), the first letter and the domain of an e-mail
    /// (`z***@example.com`). Secrets are never shown in part: they get [`Mode::Label`].
    Partial,
    /// A keyed hash: `[CN_MOBILE:h3f9a0c1d2e3f4a5b]`, HMAC-SHA-256 with a key derived per tenant
    /// from the configured secret, truncated to 16 hex digits. Stable for a tenant, unlinkable
    /// across tenants.
    Hash,
    /// A numbered placeholder (`<CN_MOBILE_1>`) that is restored in the response. The same
    /// value gets the same placeholder within a request.
    Placeholder,
    /// The request is refused with [`PiiBlocked`] naming the type.
    Block,
    /// The entity is left as it is and not counted: the type is accepted. Unlike disabling
    /// the detector, its span is still recognised, so no other detector matches inside it.
    Allow,
}

/// The request carried an entity of a type configured to [`Mode::Block`].
///
/// The message names the type, never the value. A gateway answers 422 (or 400).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PiiBlocked {
    /// The type that was found.
    pub entity: EntityType,
}

impl fmt::Display for PiiBlocked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "request refused: it contains personal data of type {} that this service does not accept; remove it and retry",
            self.entity
        )
    }
}

static PII_BLOCKED: tower_deepseek_core::error::RequestRefused =
    tower_deepseek_core::error::RequestRefused::new("personal data of a blocked type");

// Core's marker as the source: the shared classifier (audit, breaker) sees a local refusal.
impl std::error::Error for PiiBlocked {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&PII_BLOCKED)
    }
}

/// How many entities of each type a request carried.
///
/// [`crate::RedactLayer`] puts it in the request's extensions (for your own layers below) and
/// hands it to [`crate::AuditLayer`] above through its `PromptRecorder`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PiiCounts(BTreeMap<EntityType, u32>);

impl PiiCounts {
    /// The count for one type.
    pub fn get(&self, entity: &EntityType) -> u32 {
        self.0.get(entity).copied().unwrap_or(0)
    }

    /// Total entities.
    pub fn total(&self) -> u32 {
        self.0.values().sum()
    }

    /// Whether nothing was found.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Iterates `(type, count)` in label order.
    pub fn iter(&self) -> impl Iterator<Item = (&EntityType, u32)> {
        self.0.iter().map(|(k, v)| (k, *v))
    }

    pub(crate) fn add(&mut self, entity: &EntityType) {
        *self.0.entry(entity.clone()).or_insert(0) += 1;
    }
}

/// The per-request map between placeholders and the values they stand for.
///
/// Created for one request and moved into its response body; never shared. Its `Debug`
/// output shows only the number of entries.
#[derive(Default, Clone)]
pub struct Vault {
    by_value: HashMap<(EntityType, String), usize>,
    by_placeholder: HashMap<String, usize>,
    entries: Vec<(String, String)>,
    counters: HashMap<EntityType, u32>,
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vault")
            .field("entries", &self.entries.len())
            .finish()
    }
}

impl Vault {
    /// An empty vault.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of placeholders issued.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no placeholder was issued.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The placeholder for `value`, issuing the next number for its type if it is new.
    pub fn placeholder(&mut self, entity: &EntityType, value: &str) -> &str {
        let key = (entity.clone(), value.to_owned());
        if let Some(&i) = self.by_value.get(&key) {
            return &self.entries[i].0;
        }
        let n = self.counters.entry(entity.clone()).or_insert(0);
        *n += 1;
        let ph = format!("<{}_{}>", entity.as_str(), n);
        let i = self.entries.len();
        self.by_placeholder.insert(ph.clone(), i);
        self.entries.push((ph, value.to_owned()));
        self.by_value.insert(key, i);
        &self.entries[i].0
    }

    /// The value behind a placeholder (`<CN_MOBILE_1>`).
    pub fn lookup(&self, placeholder: &str) -> Option<&str> {
        self.by_placeholder
            .get(placeholder)
            .map(|i| self.entries[*i].1.as_str())
    }

    /// Every `(placeholder, value)` pair, in issue order.
    pub(crate) fn entries(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(p, v)| (p.as_str(), v.as_str()))
    }
}

/// Per-request state of the redactor: the vault, the counts, the tenant's hash key.
#[derive(Debug, Default)]
pub struct RedactContext {
    /// Placeholders issued so far.
    pub vault: Vault,
    /// Entities found so far.
    pub counts: PiiCounts,
    tenant: Option<String>,
    tenant_key: Option<[u8; 32]>,
}

impl RedactContext {
    /// A context for a request of `tenant` (for [`Mode::Hash`] keys); `None` is the default
    /// tenant.
    pub fn new(tenant: Option<&str>) -> Self {
        Self {
            tenant: tenant.map(str::to_owned),
            ..Self::default()
        }
    }
}

/// Detectors plus the mode of each entity type. Cheap to clone (shared).
#[derive(Clone)]
pub struct Redactor {
    inner: Arc<RedactorInner>,
}

struct RedactorInner {
    detectors: Detectors,
    modes: HashMap<EntityType, Mode>,
    default_mode: Mode,
    secret_mode: Mode,
    hash_key: Option<SecretSlice<u8>>,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redactor")
            .field("detectors", &self.inner.detectors)
            .field("default_mode", &self.inner.default_mode)
            .field("secret_mode", &self.inner.secret_mode)
            .field("modes", &self.inner.modes)
            .field(
                "hash_key",
                &self.inner.hash_key.as_ref().map(|_| "[REDACTED]"),
            )
            .finish()
    }
}

impl Default for Redactor {
    fn default() -> Self {
        Self::builder().build().expect("default redactor")
    }
}

/// Builds a [`Redactor`]. Defaults: every built-in detector; [`Mode::Placeholder`] for
/// personal data (restored in the answer), [`Mode::Label`] for secrets (never sent, never
/// restored).
#[must_use]
pub struct RedactorBuilder {
    detectors: Option<Detectors>,
    modes: HashMap<EntityType, Mode>,
    default_mode: Mode,
    secret_mode: Mode,
    hash_key: Option<SecretSlice<u8>>,
}

impl fmt::Debug for RedactorBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedactorBuilder").finish_non_exhaustive()
    }
}

impl RedactorBuilder {
    /// The detectors to run (default: [`Detectors::all`]).
    pub fn detectors(mut self, detectors: Detectors) -> Self {
        self.detectors = Some(detectors);
        self
    }

    /// The mode for personal data types without their own mode.
    pub fn default_mode(mut self, mode: Mode) -> Self {
        self.default_mode = mode;
        self
    }

    /// The mode for secrets without their own mode (default [`Mode::Label`]).
    pub fn secret_mode(mut self, mode: Mode) -> Self {
        self.secret_mode = mode;
        self
    }

    /// The mode for one type.
    pub fn mode(mut self, entity: EntityType, mode: Mode) -> Self {
        self.modes.insert(entity, mode);
        self
    }

    /// The secret from which per-tenant [`Mode::Hash`] keys are derived (at least 16 bytes).
    pub fn hash_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.hash_key = Some(SecretSlice::from(key.into()));
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when [`Mode::Hash`] is used without a key of at least 16 bytes.
    pub fn build(self) -> Result<Redactor, ConfigError> {
        let uses_hash = self.default_mode == Mode::Hash
            || self.secret_mode == Mode::Hash
            || self.modes.values().any(|m| *m == Mode::Hash);
        if uses_hash
            && self
                .hash_key
                .as_ref()
                .is_none_or(|k| k.expose_secret().len() < 16)
        {
            return Err(ConfigError::new(
                "hash_key",
                "must be at least 16 bytes when a mode is `hash`",
            ));
        }
        Ok(Redactor {
            inner: Arc::new(RedactorInner {
                detectors: self.detectors.unwrap_or_default(),
                modes: self.modes,
                default_mode: self.default_mode,
                secret_mode: self.secret_mode,
                hash_key: self.hash_key,
            }),
        })
    }
}

impl Redactor {
    /// A builder with the defaults.
    pub fn builder() -> RedactorBuilder {
        RedactorBuilder {
            detectors: None,
            modes: HashMap::new(),
            default_mode: Mode::Placeholder,
            secret_mode: Mode::Label,
            hash_key: None,
        }
    }

    /// The detectors.
    pub fn detectors(&self) -> &Detectors {
        &self.inner.detectors
    }

    /// The mode of `entity`.
    pub fn mode_of(&self, entity: &EntityType) -> Mode {
        if let Some(m) = self.inner.modes.get(entity) {
            *m
        } else if entity.is_secret() {
            self.inner.secret_mode
        } else {
            self.inner.default_mode
        }
    }

    /// Redacts `text`. Returns `None` when nothing was found (the text stays as it is).
    ///
    /// # Errors
    ///
    /// [`PiiBlocked`] when an entity of a [`Mode::Block`] type is found.
    pub fn redact(
        &self,
        text: &str,
        ctx: &mut RedactContext,
    ) -> Result<Option<String>, PiiBlocked> {
        let mut out: Option<String> = None;
        let mut last = 0;
        let mut blocked: Option<EntityType> = None;
        let mut kept_some = false;
        self.inner.detectors.detect_each(text, |range, entity| {
            if blocked.is_some() {
                return;
            }
            let mode = self.mode_of(entity);
            if mode == Mode::Block {
                blocked = Some(entity.clone());
                return;
            }
            if mode == Mode::Allow {
                return;
            }
            kept_some |= mode == Mode::Partial && !entity.is_secret();
            ctx.counts.add(entity);
            let o = out.get_or_insert_with(|| String::with_capacity(text.len() + 16));
            o.push_str(&text[last..range.start]);
            let value = &text[range.clone()];
            self.replace(o, entity, value, mode, ctx);
            last = range.end;
        });
        if let Some(entity) = blocked {
            return Err(PiiBlocked { entity });
        }
        Ok(out.map(|mut o| {
            o.push_str(&text[last..]);
            if kept_some {
                o = self.mask_new_matches(o);
            }
            o
        }))
    }

    /// A partial mask keeps a few characters (`110***********002X`); next to digits of the
    /// surrounding text they can form a new match (`3518019441 110…` is a Luhn-valid card
    /// number). Such spans are masked in full, until the output holds no match. Each round
    /// removes digits or letters, so it ends; it is not counted as PII found.
    fn mask_new_matches(&self, mut text: String) -> String {
        loop {
            let mut masked: Option<String> = None;
            let mut last = 0;
            self.inner.detectors.detect_each(&text, |range, entity| {
                if self.mode_of(entity) == Mode::Allow {
                    return;
                }
                let o = masked.get_or_insert_with(|| String::with_capacity(text.len()));
                o.push_str(&text[last..range.start]);
                o.push_str("***");
                last = range.end;
            });
            match masked {
                None => return text,
                Some(mut o) => {
                    o.push_str(&text[last..]);
                    text = o;
                }
            }
        }
    }

    fn replace(
        &self,
        o: &mut String,
        entity: &EntityType,
        value: &str,
        mode: Mode,
        ctx: &mut RedactContext,
    ) {
        let label = |o: &mut String| {
            o.push('[');
            o.push_str(entity.as_str());
            o.push(']');
        };
        match mode {
            Mode::Mask => o.push_str("***"),
            Mode::Label | Mode::Block => label(o),
            Mode::Allow => o.push_str(value),
            Mode::Partial if entity.is_secret() => label(o),
            Mode::Partial => partial(o, entity, value),
            Mode::Placeholder => o.push_str(ctx.vault.placeholder(entity, value)),
            Mode::Hash => {
                let key = match ctx.tenant_key {
                    Some(k) => k,
                    None => {
                        let master = self
                            .inner
                            .hash_key
                            .as_ref()
                            .map(|k| k.expose_secret())
                            .unwrap_or_default();
                        let mut mac = Hmac::<Sha256>::new_from_slice(master)
                            .expect("HMAC accepts any key length");
                        mac.update(b"tower-deepseek-redact tenant:");
                        mac.update(ctx.tenant.as_deref().unwrap_or("").as_bytes());
                        let k: [u8; 32] = mac.finalize().into_bytes().into();
                        ctx.tenant_key = Some(k);
                        k
                    }
                };
                let mut mac =
                    Hmac::<Sha256>::new_from_slice(&key).expect("HMAC accepts any key length");
                mac.update(entity.as_str().as_bytes());
                mac.update(&[0]);
                mac.update(value.as_bytes());
                let digest = mac.finalize().into_bytes();
                o.push('[');
                o.push_str(entity.as_str());
                o.push_str(":h");
                o.push_str(&hex::encode(&digest[..8]));
                o.push(']');
            }
        }
    }
}

fn partial(o: &mut String, entity: &EntityType, value: &str) {
    if *entity == EntityType::EMAIL {
        let (local, domain) = value.split_at(value.find('@').unwrap_or(0));
        if let Some(c) = local.chars().next() {
            o.push(c);
        }
        o.push_str("***");
        o.push_str(domain);
        return;
    }
    let alnum = value.chars().filter(|c| c.is_alphanumeric()).count();
    let (keep_head, keep_tail) = if alnum >= 11 {
        (3, 4)
    } else if alnum >= 7 {
        (0, 4)
    } else {
        (0, 0)
    };
    let mut seen = 0;
    for c in value.chars() {
        if c.is_alphanumeric() {
            seen += 1;
            if seen <= keep_head || seen > alnum - keep_tail {
                o.push(c);
            } else {
                o.push('*');
            }
        } else {
            o.push(c);
        }
    }
}
