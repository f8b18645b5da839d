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

use std::net::{IpAddr, SocketAddr};

use http::{HeaderName, Request};
use ipnet::IpNet;

pub use crate::protocol::{ClientIp, PeerAddr, RequestId, TenantId, X_REQUEST_ID};

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
        ensure_request_id(req, &self.request_id_header, self.echo_request_id);
        if req.extensions().get::<ClientIp>().is_none() {
            if let Some(ip) = self.client_ip(req) {
                req.extensions_mut().insert(ClientIp(ip));
            }
        }
    }
}

/// Gives `req` a [`RequestId`] unless it has one: the caller's, from `header`, if acceptable
/// (see [`RequestId::parse`]), else a fresh one; with `echo`, the id is also written to
/// `header`, so that the upstream logs the same id. The one place this rule lives:
/// [`MetadataConfig::apply`] and the audit layer both call it.
pub fn ensure_request_id<B>(req: &mut Request<B>, header: &HeaderName, echo: bool) {
    if req.extensions().get::<RequestId>().is_some() {
        return;
    }
    let id = req
        .headers()
        .get(header)
        .and_then(|v| v.to_str().ok())
        .and_then(RequestId::parse)
        .unwrap_or_else(RequestId::generate);
    if echo {
        req.headers_mut()
            .insert(header.clone(), id.to_header_value());
    }
    req.extensions_mut().insert(id);
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
