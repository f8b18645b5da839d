//! Inbound authentication: which clients may use the gateway, and which tenant each one is;
//! and the layer that admits a request (`InboundLayer`: header size, client key).

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use futures_util::future::BoxFuture;
use http::header::AUTHORIZATION;
use http::{HeaderMap, Request, Response, StatusCode};
use sha2::{Digest, Sha256};
use tower::{Layer, Service};
use tower_deepseek::core::meta::TenantId;

use crate::Shared;
use crate::config::ClientKey;
use crate::error;
use crate::handler::{header_bytes, refuse};

/// A configured key is not 64 hex digits.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct InvalidKeyHash {
    /// Its position in `[[keys]]` (0-based).
    pub index: usize,
}

impl fmt::Display for InvalidKeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "keys[{}].sha256 is not a SHA-256 in hex (64 hex digits); compute it with `printf %s \"$KEY\" | sha256sum`",
            self.index
        )
    }
}

impl std::error::Error for InvalidKeyHash {}

/// What a known client key stands for.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    pub(crate) tenant: TenantId,
}

/// The allowed keys, by their SHA-256.
#[derive(Clone)]
pub(crate) struct Keys {
    by_hash: Arc<HashMap<[u8; 32], Client>>,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keys")
            .field("count", &self.by_hash.len())
            .finish()
    }
}

/// The outcome of checking a request's credential.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// A known client (or, with no keys configured, anyone).
    Allowed(Option<Client>),
    /// No credential.
    Missing,
    /// A credential that is not allowed.
    Unknown,
}

/// The tenant id of a key hash: `key-` and 16 hex digits of SHA-256 over the hash, so that the
/// id neither is nor reveals the stored hash.
fn derived_tenant(hash: &[u8; 32]) -> TenantId {
    let mut h = Sha256::new();
    // The domain string predates the crate's rename; changing it would change every derived
    // tenant id (limits, budgets and audit records are keyed by it).
    h.update(b"example-gateway tenant v1\0");
    h.update(hash);
    let d = h.finalize();
    TenantId::new(format!("key-{}", hex::encode(&d[..8])))
}

fn decode(k: &ClientKey, index: usize) -> Result<([u8; 32], TenantId), InvalidKeyHash> {
    let mut hash = [0u8; 32];
    hex::decode_to_slice(k.sha256.trim(), &mut hash).map_err(|_| InvalidKeyHash { index })?;
    let tenant = match &k.tenant {
        Some(name) => TenantId::new(name.as_str()),
        None => derived_tenant(&hash),
    };
    Ok((hash, tenant))
}

/// The tenant a configured key stands for.
pub(crate) fn tenant_for(k: &ClientKey) -> Result<TenantId, InvalidKeyHash> {
    decode(k, 0).map(|(_, t)| t)
}

impl Keys {
    pub(crate) fn new(keys: &[ClientKey]) -> Result<Self, InvalidKeyHash> {
        let mut by_hash = HashMap::with_capacity(keys.len());
        for (index, k) in keys.iter().enumerate() {
            let (hash, tenant) = decode(k, index)?;
            by_hash.insert(hash, Client { tenant });
        }
        Ok(Self {
            by_hash: Arc::new(by_hash),
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// Checks the request's `Authorization: Bearer <key>` (or `api-key`/`x-api-key`).
    pub(crate) fn check(&self, headers: &HeaderMap) -> Verdict {
        let key = presented_key(headers);
        if self.by_hash.is_empty() {
            // Open mode (loopback only): a presented key still separates tenants.
            let client = key.map(|k| Client {
                tenant: derived_tenant(&Sha256::digest(k).into()),
            });
            return Verdict::Allowed(client);
        }
        let Some(key) = key else {
            return Verdict::Missing;
        };
        let hash: [u8; 32] = Sha256::digest(key).into();
        match self.by_hash.get(&hash) {
            Some(c) => Verdict::Allowed(Some(c.clone())),
            None => Verdict::Unknown,
        }
    }
}

/// The key a client presents, without its scheme.
fn presented_key(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(v) = headers.get(AUTHORIZATION) {
        let v = v.as_bytes();
        let rest = v
            .get(..7)
            .filter(|p| p.eq_ignore_ascii_case(b"bearer "))
            .map(|_| &v[7..])?;
        let rest = rest.trim_ascii();
        return (!rest.is_empty()).then_some(rest);
    }
    for name in ["x-api-key", "api-key"] {
        if let Some(v) = headers.get(name) {
            let v = v.as_bytes().trim_ascii();
            return (!v.is_empty()).then_some(v);
        }
    }
    None
}

/// Admits a request to a proxied route, or answers it (through the audit layer, like any
/// call): headers larger than `server.max_header_bytes` get a 431, a missing or unknown client
/// key a 401. An admitted request carries its tenant ([`TenantId`]) and the running keys and
/// stack it was checked against (one reload's snapshot) in its extensions.
#[derive(Clone)]
pub(crate) struct InboundLayer {
    shared: Arc<Shared>,
}

impl fmt::Debug for InboundLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboundLayer").finish_non_exhaustive()
    }
}

impl InboundLayer {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

impl<S> Layer<S> for InboundLayer {
    type Service = Inbound<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Inbound {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service of [`InboundLayer`].
#[derive(Clone)]
pub(crate) struct Inbound<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> fmt::Debug for Inbound<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inbound").finish_non_exhaustive()
    }
}

impl<S> Service<Request<Body>> for Inbound<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        // The service made ready is the one that serves this request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let s = self.shared.clone();
        Box::pin(async move {
            if header_bytes(req.headers()) > s.max_header_bytes {
                let res = error::json_error(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "invalid_request_error",
                    "request_header_fields_too_large",
                    "the request's headers are too large for this gateway (server.max_header_bytes)",
                    None,
                );
                return Ok(refuse(&s, req, res).await);
            }
            let live = s.live();
            let message = match live.keys.check(req.headers()) {
                Verdict::Allowed(client) => {
                    if let Some(c) = client {
                        req.extensions_mut().insert(c.tenant);
                    }
                    req.extensions_mut().insert(live);
                    return inner.call(req).await;
                }
                Verdict::Missing => {
                    "missing API key: send `Authorization: Bearer <your gateway key>`"
                }
                Verdict::Unknown => "invalid API key: this key is not allowed on this gateway",
            };
            let res = error::json_error(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "invalid_api_key",
                message,
                None,
            );
            Ok(refuse(&s, req, res).await)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash_hex(key: &str) -> String {
        hex::encode(Sha256::digest(key.as_bytes()))
    }

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, auth.parse().unwrap());
        h
    }

    #[test]
    fn known_keys_map_to_their_tenant() {
        let keys = Keys::new(&[
            ClientKey::new(hash_hex("sk-a")).tenant("acme"),
            ClientKey::new(hash_hex("sk-b")).requests_per_minute(5),
        ])
        .unwrap();
        match keys.check(&headers("Bearer sk-a")) {
            Verdict::Allowed(Some(c)) => {
                assert_eq!(c.tenant.as_str(), "acme");
            }
            v => panic!("{v:?}"),
        }
        match keys.check(&headers("bearer   sk-b ")) {
            Verdict::Allowed(Some(c)) => {
                assert!(c.tenant.as_str().starts_with("key-"));
                assert!(!c.tenant.as_str().contains("sk-b"));
                assert!(!hash_hex("sk-b").contains(&c.tenant.as_str()[4..]));
            }
            v => panic!("{v:?}"),
        }
        assert!(matches!(
            keys.check(&headers("Bearer sk-c")),
            Verdict::Unknown
        ));
        assert!(matches!(
            keys.check(&headers("Basic abc")),
            Verdict::Missing
        ));
        assert!(matches!(keys.check(&HeaderMap::new()), Verdict::Missing));
        let mut h = HeaderMap::new();
        h.insert("x-api-key", "sk-a".parse().unwrap());
        assert!(matches!(keys.check(&h), Verdict::Allowed(Some(_))));
    }

    #[test]
    fn open_mode_allows_anyone_and_still_separates_keys() {
        let keys = Keys::new(&[]).unwrap();
        assert!(matches!(
            keys.check(&HeaderMap::new()),
            Verdict::Allowed(None)
        ));
        let (Verdict::Allowed(Some(a)), Verdict::Allowed(Some(b))) = (
            keys.check(&headers("Bearer one")),
            keys.check(&headers("Bearer two")),
        ) else {
            panic!()
        };
        assert_ne!(a.tenant, b.tenant);
    }

    #[test]
    fn bad_hashes_are_rejected_with_their_index() {
        let err = Keys::new(&[ClientKey::new(hash_hex("x")), ClientKey::new("abc")]).unwrap_err();
        assert_eq!(err.index, 1);
        assert!(err.to_string().contains("keys[1]"));
    }
}
