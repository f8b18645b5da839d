//! [`BearerAuthLayer`]: the key, checked and made into a sensitive header once.

use std::fmt;

use http::HeaderValue;
use secrecy::{ExposeSecret, SecretString};
use tower_layer::Layer;

use super::service::BearerAuth;
use crate::error::KeyError;

/// Adds `Authorization: Bearer <key>` to every request. See the [module docs](crate::bearer).
#[derive(Clone)]
pub struct BearerAuthLayer {
    header: HeaderValue,
    overwrite: bool,
}

impl BearerAuthLayer {
    /// A layer that sends `key` as a bearer token.
    ///
    /// # Errors
    ///
    /// [`KeyError`] when the key is empty or cannot be sent in a header (control characters,
    /// non-ASCII). The error never contains the key.
    pub fn new(key: impl Into<SecretString>) -> Result<Self, KeyError> {
        Self::from_secret(&key.into(), None)
    }

    /// A layer reading its key from the environment variable `var` (e.g. `DEEPSEEK_API_KEY`).
    ///
    /// # Errors
    ///
    /// [`KeyError`] naming the variable when it is unset, empty, not Unicode, or not a valid
    /// header value. The value never appears in the error.
    pub fn from_env(var: &str) -> Result<Self, KeyError> {
        match std::env::var(var) {
            Ok(value) => {
                let value = SecretString::from(value);
                Self::from_secret(&value, Some(var))
            }
            Err(std::env::VarError::NotPresent) => Err(KeyError::unset(var)),
            Err(std::env::VarError::NotUnicode(_)) => Err(KeyError::invalid(Some(var))),
        }
    }

    fn from_secret(key: &SecretString, var: Option<&str>) -> Result<Self, KeyError> {
        let key = key.expose_secret().trim();
        if key.is_empty() {
            return Err(KeyError::empty(var));
        }
        let mut header =
            HeaderValue::try_from(format!("Bearer {key}")).map_err(|_| KeyError::invalid(var))?;
        header.set_sensitive(true);
        Ok(Self {
            header,
            overwrite: false,
        })
    }

    /// Whether to replace an `Authorization` header the request already carries
    /// (default `false`: a request with its own credential keeps it).
    #[must_use]
    pub fn overwrite(mut self, overwrite: bool) -> Self {
        self.overwrite = overwrite;
        self
    }
}

impl fmt::Debug for BearerAuthLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BearerAuthLayer")
            .field("key", &"[REDACTED]")
            .field("overwrite", &self.overwrite)
            .finish()
    }
}

impl<S> Layer<S> for BearerAuthLayer {
    type Service = BearerAuth<S>;

    fn layer(&self, inner: S) -> BearerAuth<S> {
        BearerAuth {
            inner,
            header: self.header.clone(),
            overwrite: self.overwrite,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_empty_and_invalid_keys_without_echoing_them() {
        let err = BearerAuthLayer::new("  ").unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
        let err = BearerAuthLayer::new("sk-sec\nret").unwrap_err();
        assert!(!err.to_string().contains("sk-sec"), "{err}");
        assert!(!format!("{err:?}").contains("sk-sec"));
    }

    #[test]
    fn from_env_names_the_variable_never_the_value() {
        let unset = "TOWER_DEEPSEEK_AUTH_TEST_UNSET_7f3a";
        let err = BearerAuthLayer::from_env(unset).unwrap_err();
        assert!(err.is_unset());
        assert!(err.to_string().contains(unset), "{err}");
    }

    /// `set_var` is `unsafe` in edition 2024 (and unsafe code is forbidden here), so the
    /// variables are set on a child run of this very test binary.
    #[test]
    fn from_env_reads_set_variables_in_a_child_process() {
        const CHILD: &str = "TOWER_DEEPSEEK_AUTH_TEST_CHILD";
        if std::env::var_os(CHILD).is_some() {
            let err = BearerAuthLayer::from_env("TD_AUTH_EMPTY").unwrap_err();
            assert!(
                err.is_empty() && err.to_string().contains("TD_AUTH_EMPTY"),
                "{err}"
            );
            let err = BearerAuthLayer::from_env("TD_AUTH_BAD").unwrap_err();
            let shown = format!("{err} {err:?}");
            assert!(
                shown.contains("TD_AUTH_BAD") && !shown.contains("sk-bad"),
                "{shown}"
            );
            let layer = BearerAuthLayer::from_env("TD_AUTH_GOOD").unwrap();
            assert_eq!(layer.header, "Bearer sk-good-value");
            assert!(!format!("{layer:?}").contains("sk-good"));
            return;
        }
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "bearer::layer::tests::from_env_reads_set_variables_in_a_child_process",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .env("TD_AUTH_EMPTY", "")
            .env("TD_AUTH_BAD", "sk-bad\u{1}value")
            .env("TD_AUTH_GOOD", "sk-good-value")
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
    }
}
