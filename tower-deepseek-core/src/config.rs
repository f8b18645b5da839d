//! What every layer's configuration shares: one [`ConfigError`] and the serde helpers that
//! write durations as integer milliseconds.
//!
//! Every builder validates at `build()` and refuses a setting that cannot work with a
//! [`ConfigError`] that names the field (as it is spelled in the serde config) and the reason.
//! In Rust, durations are [`Duration`]s; in serde configs they are integer milliseconds in
//! fields whose names end in `_ms`, through [`duration_ms`] and [`option_duration_ms`]:
//!
//! ```
//! use std::time::Duration;
//! use serde::Deserialize;
//! use tower_deepseek_core::config::{duration_ms, option_duration_ms};
//!
//! #[derive(Deserialize)]
//! struct Settings {
//!     #[serde(rename = "wait_ms", with = "duration_ms")]
//!     wait: Duration,
//!     #[serde(rename = "deadline_ms", with = "option_duration_ms", default)]
//!     deadline: Option<Duration>,
//! }
//!
//! let s: Settings = serde_json::from_str(r#"{"wait_ms": 1500, "deadline_ms": null}"#).unwrap();
//! assert_eq!(s.wait, Duration::from_millis(1500));
//! assert_eq!(s.deadline, None);
//! ```

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

/// A setting that cannot work, refused when a layer, builder or store is built.
///
/// It names the field as the serde config spells it and says why. It never repeats the value of
/// a secret or a URL that may hold a password.
///
/// ```
/// use tower_deepseek_core::config::ConfigError;
///
/// let err = ConfigError::new("max_attempts", "must be at least 1");
/// assert_eq!(err.field(), "max_attempts");
/// assert_eq!(err.to_string(), "invalid configuration: `max_attempts` must be at least 1");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConfigError {
    field: Cow<'static, str>,
    reason: Cow<'static, str>,
}

impl ConfigError {
    /// `field` (as in the serde config) is refused for `reason` (a phrase that reads after the
    /// field's name: "must be at least 1").
    pub fn new(field: impl Into<Cow<'static, str>>, reason: impl Into<Cow<'static, str>>) -> Self {
        ConfigError {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The refused field, as the serde config spells it.
    pub fn field(&self) -> &str {
        &self.field
    }

    /// Why it was refused.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration: `{}` {}", self.field, self.reason)
    }
}

impl std::error::Error for ConfigError {}

/// `#[serde(with = "duration_ms")]`: a [`Duration`] as integer milliseconds.
pub mod duration_ms {
    use super::*;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Reads integer milliseconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }

    /// Writes integer milliseconds (saturating at `u64::MAX`).
    pub fn serialize<S: Serializer>(v: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(v.as_millis()).unwrap_or(u64::MAX))
    }
}

/// `#[serde(with = "option_duration_ms")]`: an optional [`Duration`] as integer milliseconds or
/// `null` (none: the setting is off).
pub mod option_duration_ms {
    use super::*;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Reads integer milliseconds or `null`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }

    /// Writes integer milliseconds or `null`.
    pub fn serialize<S: Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(d) => super::duration_ms::serialize(d, s),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct S {
        #[serde(rename = "a_ms", with = "duration_ms")]
        a: Duration,
        #[serde(rename = "b_ms", with = "option_duration_ms", default)]
        b: Option<Duration>,
    }

    #[test]
    fn durations_round_trip_as_milliseconds() {
        let s = S {
            a: Duration::from_millis(1500),
            b: Some(Duration::from_secs(2)),
        };
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, r#"{"a_ms":1500,"b_ms":2000}"#);
        assert_eq!(serde_json::from_str::<S>(&json).unwrap(), s);
        let none: S = serde_json::from_str(r#"{"a_ms":0}"#).unwrap();
        assert_eq!(none.b, None);
        let null: S = serde_json::from_str(r#"{"a_ms":0,"b_ms":null}"#).unwrap();
        assert_eq!(null.b, None);
        assert!(serde_json::from_str::<S>(r#"{"a_ms":-1}"#).is_err());
    }

    #[test]
    fn config_error_names_field_and_reason() {
        let e = ConfigError::new(String::from("redis_url"), "does not parse");
        assert_eq!(e.field(), "redis_url");
        assert_eq!(e.reason(), "does not parse");
        assert_eq!(
            e.to_string(),
            "invalid configuration: `redis_url` does not parse"
        );
    }
}
