//! Requests as the server received them.

use bytes::Bytes;
use http::{HeaderMap, Method};

/// One request as the server received it, recorded before any fault or answer.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// The request method.
    pub method: Method,
    /// The path with its query string, if any (`/v1/models?x=1`).
    pub path: String,
    /// Every request header.
    pub headers: HeaderMap,
    /// The whole request body.
    pub body: Bytes,
}

impl RecordedRequest {
    /// The body parsed as JSON, or `None` if it is not JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The token of an `Authorization: Bearer <token>` header, if any.
    pub fn bearer(&self) -> Option<&str> {
        let value = self
            .headers
            .get(http::header::AUTHORIZATION)?
            .to_str()
            .ok()?;
        let (scheme, token) = value.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim())
            .filter(|t| !t.is_empty())
    }

    /// The path without its query string.
    pub fn path_without_query(&self) -> &str {
        self.path.split_once('?').map_or(&self.path, |(p, _)| p)
    }

    /// The first value of a header, if it is present and visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)?.to_str().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accessors() {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", "bearer  sk-abc ".parse().unwrap());
        let r = RecordedRequest {
            method: Method::POST,
            path: "/a?b=c".into(),
            headers,
            body: Bytes::from_static(b"{\"x\":1}"),
        };
        assert_eq!(r.bearer(), Some("sk-abc"));
        assert_eq!(r.path_without_query(), "/a");
        assert_eq!(r.json().unwrap()["x"], 1);
        assert_eq!(r.header("authorization"), Some("bearer  sk-abc "));
        let r2 = RecordedRequest {
            body: Bytes::from_static(b"not json"),
            headers: HeaderMap::new(),
            ..r
        };
        assert!(r2.json().is_none());
        assert!(r2.bearer().is_none());
    }
}
