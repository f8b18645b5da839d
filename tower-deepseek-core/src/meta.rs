//! Request metadata carried in [`http::Extensions`]: a request id, the client IP, a tenant id.
//!
//! Layers read these values, never globals: audit records the request id and client IP, the cache
//! scopes its keys by tenant, the limiter keys quotas by tenant. [`MetadataConfig::apply`] fills in
//! what is missing, once, at the edge of the stack (a gateway calls it for every inbound request;
//! a client may insert [`TenantId`] itself).
//!
//! ```
//! use std::net::SocketAddr;
//! use tower_deepseek_core::meta::{ClientIp, MetadataConfig, PeerAddr, RequestId};
//!
//! let config = MetadataConfig::new().trust_proxy("10.0.0.0/8".parse().unwrap());
//! let mut req = http::Request::builder()
//!     .header("x-forwarded-for", "203.0.113.7, 10.1.2.3")
//!     .body(())
//!     .unwrap();
//! req.extensions_mut().insert(PeerAddr("10.9.9.9:4000".parse::<SocketAddr>().unwrap()));
//! config.apply(&mut req);
//! assert_eq!(req.extensions().get::<ClientIp>().unwrap().0.to_string(), "203.0.113.7");
//! assert!(req.extensions().get::<RequestId>().is_some());
//! ```

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::{HeaderName, HeaderValue, Request};
use ipnet::IpNet;

/// The standard request-id header.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The id of one call, kept from the caller's `x-request-id` or generated.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RequestId(Arc<str>);

impl RequestId {
    /// A fresh random id: 32 lowercase hex digits (128 random bits).
    pub fn generate() -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let v = fastrand::u128(..);
        // Hex by table into a stack buffer: one allocation (the `Arc<str>`), no formatter.
        let mut buf = [0u8; 32];
        for (i, b) in buf.iter_mut().enumerate() {
            *b = HEX[((v >> (124 - 4 * i)) & 0xf) as usize];
        }
        Self(std::str::from_utf8(&buf).expect("hex digits").into())
    }

    /// Takes a caller-supplied id if it is acceptable: 1 to 128 visible ASCII characters.
    pub fn parse(value: &str) -> Option<Self> {
        let ok =
            !value.is_empty() && value.len() <= 128 && value.bytes().all(|b| b.is_ascii_graphic());
        ok.then(|| Self(value.into()))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id as a header value.
    pub fn to_header_value(&self) -> HeaderValue {
        HeaderValue::from_str(&self.0).expect("ids are visible ASCII")
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RequestId").field(&&*self.0).finish()
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The address of the TCP peer, inserted by the server that accepted the connection.
///
/// axum users can copy it from `ConnectInfo<SocketAddr>`; a plain `SocketAddr` in the
/// extensions is accepted too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerAddr(pub SocketAddr);

/// The IP address of the client that made the call (after trusted proxies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientIp(pub IpAddr);

/// The tenant a call belongs to. Caches, limits and audit records are scoped by it.
///
/// It is an identifier, not a secret: derive it from a credential with a hash, never use the
/// credential itself.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(Arc<str>);

impl TenantId {
    /// A tenant id.
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        Self(id.into())
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TenantId").field(&&*self.0).finish()
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A request extension by which an outer layer (audit) asks the layers below for the facts
/// they can put on the response for it ([`UpstreamAttempts`], [`BreakerStatus`]).
///
/// Without it, those layers skip that work: inserting a response extension costs an
/// allocation per call (tens of nanoseconds), which a stack without an audit layer should not
/// pay. `AuditLayer` inserts it; insert it yourself to read those facts in your own layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CollectCallFacts;

/// How many times an inner layer sent the request upstream (1 when it was not retried).
///
/// Set on the response by the retry layer when the request carries [`CollectCallFacts`]; read
/// by outer layers (audit) that cannot depend on the retry crate. Facts about a call travel in
/// response extensions, never in headers that would leak to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UpstreamAttempts(pub u32);

/// The state of the circuit breaker that let the call through (`closed`, `half_open`, ...).
///
/// Set on the response by the breaker layer when the request carries [`CollectCallFacts`];
/// read by outer layers (audit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BreakerStatus(pub &'static str);

/// A request extension by which a layer above offers to send the request again after a 401
/// that a credential layer below answered with [`CredentialRefreshed`].
///
/// The retry layer sets it on each attempt whose body it keeps; `OAuth2Layer` then keeps no
/// copy of its own: after a 401 it obtains a new token, marks the 401 [`CredentialRefreshed`]
/// and lets the retry layer replay the request (once, at once, outside its budget). In the
/// recommended stack the request head is thus copied once per attempt, not twice. Layers that
/// see neither extension behave on their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ReplayOn401 {
    /// The layer above will replay this request once if its 401 is marked
    /// [`CredentialRefreshed`].
    Offered,
    /// This request is that replay: a 401 to it is final (nothing to invalidate, nothing to
    /// mark).
    Replaying,
}

/// A response extension on a 401: the credential layer below has replaced the credential the
/// upstream refused, so sending the request again would use a new one. Set only on a request
/// that carried [`ReplayOn401::Offered`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CredentialRefreshed;

/// How to fill in request metadata. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct MetadataConfig {
    request_id_header: HeaderName,
    forwarded_header: HeaderName,
    trusted_proxies: Vec<IpNet>,
    echo_request_id: bool,
}

impl Default for MetadataConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl MetadataConfig {
    /// Request ids from `x-request-id`; no proxy trusted, so the client IP is the TCP peer.
    pub fn new() -> Self {
        Self {
            request_id_header: X_REQUEST_ID.clone(),
            forwarded_header: HeaderName::from_static("x-forwarded-for"),
            trusted_proxies: Vec::new(),
            echo_request_id: true,
        }
    }

    /// Reads and writes the request id in `header` instead of `x-request-id`.
    #[must_use]
    pub fn request_id_header(mut self, header: HeaderName) -> Self {
        self.request_id_header = header;
        self
    }

    /// Reads forwarded client addresses from `header` (default `x-forwarded-for`).
    #[must_use]
    pub fn forwarded_header(mut self, header: HeaderName) -> Self {
        self.forwarded_header = header;
        self
    }

    /// Trusts proxies in `net`: when the peer is one, the forwarded header names the client.
    #[must_use]
    pub fn trust_proxy(mut self, net: IpNet) -> Self {
        self.trusted_proxies.push(net);
        self
    }

    /// Whether [`apply`](Self::apply) also sets the request-id header on the request, so that
    /// the upstream sees the same id (default true).
    #[must_use]
    pub fn echo_request_id(mut self, yes: bool) -> Self {
        self.echo_request_id = yes;
        self
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|n| n.contains(&ip))
    }

    /// The client IP of `req`: the peer, or, when the peer is a trusted proxy, the right-most
    /// address of the forwarded header that is not itself a trusted proxy.
    pub fn client_ip<B>(&self, req: &Request<B>) -> Option<IpAddr> {
        let peer = req
            .extensions()
            .get::<PeerAddr>()
            .map(|p| p.0)
            .or_else(|| req.extensions().get::<SocketAddr>().copied())
            .map(|a| a.ip());
        match peer {
            Some(p) if !self.is_trusted(p) => return Some(p),
            None if self.trusted_proxies.is_empty() => return None,
            _ => {}
        }
        let mut candidate = peer;
        for value in req.headers().get_all(&self.forwarded_header).iter().rev() {
            let Ok(s) = value.to_str() else { break };
            for part in s.rsplit(',') {
                let Ok(ip) = part.trim().parse::<IpAddr>() else {
                    return candidate;
                };
                candidate = Some(ip);
                if !self.is_trusted(ip) {
                    return Some(ip);
                }
            }
        }
        candidate
    }

    /// Fills in [`RequestId`] and [`ClientIp`] where the request does not carry them yet.
    pub fn apply<B>(&self, req: &mut Request<B>) {
        if req.extensions().get::<RequestId>().is_none() {
            let id = req
                .headers()
                .get(&self.request_id_header)
                .and_then(|v| v.to_str().ok())
                .and_then(RequestId::parse)
                .unwrap_or_else(RequestId::generate);
            if self.echo_request_id {
                req.headers_mut()
                    .insert(self.request_id_header.clone(), id.to_header_value());
            }
            req.extensions_mut().insert(id);
        }
        if req.extensions().get::<ClientIp>().is_none() {
            if let Some(ip) = self.client_ip(req) {
                req.extensions_mut().insert(ClientIp(ip));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(xff: &[&str], peer: Option<&str>) -> Request<()> {
        let mut b = Request::builder();
        for v in xff {
            b = b.header("x-forwarded-for", *v);
        }
        let mut r = b.body(()).unwrap();
        if let Some(p) = peer {
            r.extensions_mut().insert(PeerAddr(p.parse().unwrap()));
        }
        r
    }

    #[test]
    fn untrusted_peer_wins_over_header() {
        let c = MetadataConfig::new();
        let r = req(&["1.2.3.4"], Some("198.51.100.1:5"));
        assert_eq!(c.client_ip(&r), Some("198.51.100.1".parse().unwrap()));
    }

    #[test]
    fn trusted_chain_is_walked_from_the_right() {
        let c = MetadataConfig::new().trust_proxy("10.0.0.0/8".parse().unwrap());
        let r = req(&["6.6.6.6, 203.0.113.7", "10.0.0.2"], Some("10.0.0.1:5"));
        assert_eq!(c.client_ip(&r), Some("203.0.113.7".parse().unwrap()));
        // garbage stops the walk at the last good address
        let r = req(&["nonsense, 10.0.0.3"], Some("10.0.0.1:5"));
        assert_eq!(c.client_ip(&r), Some("10.0.0.3".parse().unwrap()));
    }

    #[test]
    fn request_id_is_kept_or_generated() {
        let c = MetadataConfig::new();
        let mut r = Request::builder()
            .header("x-request-id", "abc-123")
            .body(())
            .unwrap();
        c.apply(&mut r);
        assert_eq!(
            r.extensions().get::<RequestId>().unwrap().as_str(),
            "abc-123"
        );

        let mut r = Request::builder()
            .header("x-request-id", "bad id with spaces")
            .body(())
            .unwrap();
        c.apply(&mut r);
        let id = r.extensions().get::<RequestId>().unwrap().clone();
        assert_eq!(id.as_str().len(), 32);
        assert_eq!(r.headers()["x-request-id"], id.as_str());
        assert_ne!(RequestId::generate(), RequestId::generate());
    }

    /// The table encoding writes the same 32 digits as `format!("{:032x}")`, leading zeros,
    /// nibble order and all.
    #[test]
    fn generated_ids_are_the_random_value_in_hex() {
        for seed in [0u64, 1, 7, 42, 1 << 40, u64::MAX] {
            fastrand::seed(seed);
            let expected = format!("{:032x}", fastrand::u128(..));
            fastrand::seed(seed);
            assert_eq!(RequestId::generate().as_str(), expected);
        }
    }
}
