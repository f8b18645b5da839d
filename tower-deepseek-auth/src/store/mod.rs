//! Where fetched tokens are kept so that several layers (in one process or across a fleet)
//! share one token.
//!
//! The OAuth2 layer always keeps its current token in memory, behind a lock-free pointer; a
//! [`TokenStore`] is consulted only on the slow path, when that token is missing, expired,
//! due for refresh or was refused with a 401:
//!
//! 1. [`get`](TokenStore::get): a token stored by another instance is adopted as is;
//! 2. otherwise [`try_lock`](TokenStore::try_lock): the instance that takes the lock fetches,
//!    [`put`](TokenStore::put)s the token with a time-to-live of `expires_in` minus the refresh
//!    margin, and [`unlock`](TokenStore::unlock)s;
//! 3. the others poll [`get`](TokenStore::get) for a bounded time, then fetch for themselves.
//!
//! A store that fails (Redis down or slow) never fails a request: the layer fetches locally
//! (fail open), counts `deepseek_auth_token_store_errors_total{op}` and logs the operation and
//! error kind, never a token.
//!
//! [`MemoryTokenStore`] shares a token between layers of one process (clone it into each);
//! [`RedisTokenStore`] (feature `redis`) across processes.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use secrecy::{ExposeSecret, SecretString};
use tower_deepseek_core::BoxError;

#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::redis::{DEFAULT_KEY_PREFIX, DEFAULT_OP_TIMEOUT, RedisTokenStore};

/// A boxed future, as returned by [`TokenStore`] methods (slow path only).
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send + 'a>>;

/// An access token as kept in a store. `Debug` prints `[REDACTED]` for the token.
#[derive(Clone)]
pub struct StoredToken {
    access_token: SecretString,
    expires_at: SystemTime,
}

impl StoredToken {
    /// A token valid until `expires_at` (wall-clock time, so that it means the same on every
    /// machine of a fleet).
    pub fn new(access_token: SecretString, expires_at: SystemTime) -> Self {
        Self {
            access_token,
            expires_at,
        }
    }

    /// The token.
    pub fn access_token(&self) -> &SecretString {
        &self.access_token
    }

    /// When the token stops being valid.
    pub fn expires_at(&self) -> SystemTime {
        self.expires_at
    }

    /// How long the token stays valid from now (zero once expired).
    pub fn remaining(&self) -> Duration {
        self.expires_at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
    }

    /// A compact encoding for stores that keep strings: `<unix millis> <token>`.
    pub fn encode(&self) -> String {
        let millis = self
            .expires_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        format!("{millis} {}", self.access_token.expose_secret())
    }

    /// Decodes [`encode`](Self::encode)'s output; `None` if malformed.
    pub fn decode(value: &str) -> Option<Self> {
        let (millis, token) = value.split_once(' ')?;
        let millis: u64 = millis.parse().ok()?;
        if token.is_empty() {
            return None;
        }
        Some(Self {
            access_token: SecretString::from(token),
            expires_at: SystemTime::UNIX_EPOCH + Duration::from_millis(millis),
        })
    }
}

impl fmt::Debug for StoredToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredToken")
            .field("access_token", &"[REDACTED]")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Proof of holding a store's fetch lock, given back to [`TokenStore::unlock`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockToken(String);

impl LockToken {
    /// A random lock value.
    pub fn random() -> Self {
        Self(format!(
            "{:016x}{:016x}",
            fastrand::u64(..),
            fastrand::u64(..)
        ))
    }

    /// The lock's value, unique to its holder.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A place to share tokens between layer instances. Object safe; every method is only used on
/// the slow path (no token, or a refresh), so boxed futures cost nothing that matters.
///
/// Implementations must not log or put a token into an error.
pub trait TokenStore: fmt::Debug + Send + Sync + 'static {
    /// The token stored under `key`, if any and not expired.
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<StoredToken>>;

    /// Stores `token` under `key` for `ttl`.
    fn put<'a>(
        &'a self,
        key: &'a str,
        token: &'a StoredToken,
        ttl: Duration,
    ) -> StoreFuture<'a, ()>;

    /// Tries to take the fetch lock of `key` for at most `ttl`; `None` if another holder has it.
    fn try_lock<'a>(&'a self, key: &'a str, ttl: Duration) -> StoreFuture<'a, Option<LockToken>>;

    /// Releases the lock taken with [`try_lock`](Self::try_lock), if it is still `lock`'s.
    fn unlock<'a>(&'a self, key: &'a str, lock: LockToken) -> StoreFuture<'a, ()>;
}

fn _assert_object_safe(_: &dyn TokenStore) {}

/// A [`TokenStore`] in this process's memory. Clones share the same map, so layers built with
/// clones of one `MemoryTokenStore` share one token.
#[derive(Clone, Default)]
pub struct MemoryTokenStore {
    inner: Arc<Mutex<MemoryInner>>,
}

#[derive(Default)]
struct MemoryInner {
    tokens: HashMap<String, (StoredToken, tokio::time::Instant)>,
    locks: HashMap<String, (LockToken, tokio::time::Instant)>,
}

impl MemoryTokenStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<R>(&self, f: impl FnOnce(&mut MemoryInner) -> R) -> R {
        let mut guard = match self.inner.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }
}

impl fmt::Debug for MemoryTokenStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (tokens, locks) = self.with(|m| (m.tokens.len(), m.locks.len()));
        f.debug_struct("MemoryTokenStore")
            .field("tokens", &tokens)
            .field("locks", &locks)
            .finish()
    }
}

impl TokenStore for MemoryTokenStore {
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<StoredToken>> {
        let now = tokio::time::Instant::now();
        let found = self.with(|m| match m.tokens.get(key) {
            Some((token, until)) if now < *until => Some(token.clone()),
            Some(_) => {
                m.tokens.remove(key);
                None
            }
            None => None,
        });
        Box::pin(std::future::ready(Ok(found)))
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        token: &'a StoredToken,
        ttl: Duration,
    ) -> StoreFuture<'a, ()> {
        let until = tokio::time::Instant::now() + ttl;
        self.with(|m| m.tokens.insert(key.to_owned(), (token.clone(), until)));
        Box::pin(std::future::ready(Ok(())))
    }

    fn try_lock<'a>(&'a self, key: &'a str, ttl: Duration) -> StoreFuture<'a, Option<LockToken>> {
        let now = tokio::time::Instant::now();
        let taken = self.with(|m| match m.locks.get(key) {
            Some((_, until)) if now < *until => None,
            _ => {
                let lock = LockToken::random();
                m.locks.insert(key.to_owned(), (lock.clone(), now + ttl));
                Some(lock)
            }
        });
        Box::pin(std::future::ready(Ok(taken)))
    }

    fn unlock<'a>(&'a self, key: &'a str, lock: LockToken) -> StoreFuture<'a, ()> {
        self.with(|m| {
            if m.locks.get(key).is_some_and(|(held, _)| *held == lock) {
                m.locks.remove(key);
            }
        });
        Box::pin(std::future::ready(Ok(())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn memory_store_expires_tokens_and_locks() {
        let store = MemoryTokenStore::new();
        let token = StoredToken::new(
            SecretString::from("tok-1"),
            SystemTime::now() + Duration::from_secs(60),
        );
        store
            .put("k", &token, Duration::from_secs(10))
            .await
            .unwrap();
        let got = store.get("k").await.unwrap().unwrap();
        assert_eq!(got.access_token().expose_secret(), "tok-1");
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(store.get("k").await.unwrap().is_none());

        let lock = store
            .try_lock("k", Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap();
        assert!(
            store
                .try_lock("k", Duration::from_secs(5))
                .await
                .unwrap()
                .is_none()
        );
        // Someone else's lock value does not release it.
        store.unlock("k", LockToken::random()).await.unwrap();
        assert!(
            store
                .try_lock("k", Duration::from_secs(5))
                .await
                .unwrap()
                .is_none()
        );
        store.unlock("k", lock).await.unwrap();
        let lock2 = store.try_lock("k", Duration::from_secs(5)).await.unwrap();
        assert!(lock2.is_some());
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(
            store
                .try_lock("k", Duration::from_secs(5))
                .await
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn stored_token_round_trips_and_redacts() {
        let t = StoredToken::new(
            SecretString::from("tok with space"),
            SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
        );
        let back = StoredToken::decode(&t.encode()).unwrap();
        assert_eq!(back.access_token().expose_secret(), "tok with space");
        assert_eq!(back.expires_at(), t.expires_at());
        assert!(!format!("{t:?}").contains("with space"));
        assert!(StoredToken::decode("garbage").is_none());
        assert!(StoredToken::decode("12 ").is_none());
    }
}
