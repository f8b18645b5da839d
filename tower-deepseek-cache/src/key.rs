//! Canonical cache keys.
//!
//! A key is a SHA-256 digest over, in order and each length-prefixed:
//!
//! 1. the key schema version ([`KEY_SCHEMA`]),
//! 2. the HTTP method and the endpoint path (without the query),
//! 3. the tenant scope ([`Scope`]): an explicit [`TenantId`], else the `Authorization`
//!    credential (hashed into the key, never stored), else "anonymous",
//! 4. the request body as JSON in canonical form: object members sorted by key, whitespace
//!    gone, the top-level `stream` and `stream_options` removed (they change the shape of the
//!    answer, not the answer).
//!
//! The canonical form is written straight into the hasher, never built as a string: each value
//! is a type tag followed by its content, strings and containers carry their length, so two
//! different documents can never produce the same input. Numbers are compared by value:
//! `0`, `0.0`, `-0.0` and `0e5` are the same temperature; other floats are hashed by their
//! IEEE-754 bits as serde_json reads them. String escapes are decoded first (`"\u0041"` and
//! `"A"` are the same string).
//!
//! Everything else of the body is part of the key, including fields this crate does not know:
//! the API grows, and a field we do not understand may well change the answer.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use http::{Method, Request, header::AUTHORIZATION};
use serde_json::{Map, Number, Value};
use sha2::{Digest, Sha256};
use tower_deepseek_core::meta::TenantId;
use tower_deepseek_core::view::{ChatView, JsonKind, JsonRef};

/// The version of the key schema, hashed into every key. Bumped when the canonical form
/// changes, so that old entries are never read with a new meaning.
pub const KEY_SCHEMA: &str = "tower-deepseek-cache/key/v1";

/// A cache key: the SHA-256 digest of a request's canonical form.
///
/// `Debug` and `Display` print it as lowercase hex; it reveals nothing of the prompt.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey([u8; 32]);

impl CacheKey {
    /// The raw digest.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The digest as 64 lowercase hex characters (the Redis key suffix).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Computes the key of a request from its parts. `body` is the parsed JSON body.
    pub fn compute(method: &Method, path: &str, scope: Scope<'_>, body: &Value) -> CacheKey {
        let mut h = Sink::new();
        prefix(&mut h, method, path, scope);
        match body {
            Value::Object(map) => write_object(&mut h, map, true),
            other => write_value(&mut h, other),
        }
        CacheKey(h.finalize())
    }

    /// Computes the key straight from the JSON bytes of a body, without building a
    /// [`Value`]: strings are borrowed from `body` where they have no escapes. Equal to
    /// [`compute`](Self::compute) over the parsed body.
    ///
    /// # Errors
    ///
    /// The body is not valid JSON.
    pub fn from_json(
        method: &Method,
        path: &str,
        scope: Scope<'_>,
        body: &[u8],
    ) -> Result<CacheKey, serde_json::Error> {
        let doc: Canon<'_> = serde_json::from_slice(body)?;
        Ok(CacheKey::from_canon(method, path, scope, &doc))
    }

    /// Computes the key from a request body already parsed into core's shared
    /// [`ChatView`] (what the layer does: the body is not parsed again). Equal to
    /// [`from_json`](Self::from_json) over the view's bytes: `None` exactly where `from_json`
    /// fails (a string whose escapes do not decode, a number out of range, nesting deeper
    /// than serde_json reads).
    pub fn from_view(
        method: &Method,
        path: &str,
        scope: Scope<'_>,
        view: &ChatView,
    ) -> Option<CacheKey> {
        if view.depth() > SERDE_MAX_DEPTH {
            return None;
        }
        let mut h = Sink::new();
        prefix(&mut h, method, path, scope);
        view_value(&mut h, view.root(), true)?;
        Some(CacheKey(h.finalize()))
    }

    pub(crate) fn from_canon(
        method: &Method,
        path: &str,
        scope: Scope<'_>,
        doc: &Canon<'_>,
    ) -> CacheKey {
        let mut h = Sink::new();
        prefix(&mut h, method, path, scope);
        match doc {
            Canon::Obj(members) => canon_object(&mut h, members, true),
            other => canon_value(&mut h, other),
        }
        CacheKey(h.finalize())
    }

    /// Computes the key of `req`, whose body is the JSON `body`: method, path and scope are
    /// read from the request.
    pub fn for_request<B>(req: &Request<B>, body: &Value) -> CacheKey {
        CacheKey::compute(req.method(), req.uri().path(), Scope::of(req), body)
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey({self})")
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Whose answers a key belongs to. One scope never reads another scope's entries.
#[derive(Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Scope<'a> {
    /// An explicit tenant, from [`TenantId`] in the request extensions.
    Tenant(&'a str),
    /// The caller's credential (the `Authorization` header value): hashed into the key, never
    /// stored or logged.
    Credential(&'a [u8]),
    /// Neither: all anonymous callers share entries.
    Anonymous,
}

impl<'a> Scope<'a> {
    /// The scope of `req`: its [`TenantId`] extension, else its `Authorization` header, else
    /// anonymous.
    pub fn of<B>(req: &'a Request<B>) -> Scope<'a> {
        if let Some(t) = req.extensions().get::<TenantId>() {
            return Scope::Tenant(t.as_str());
        }
        if let Some(v) = req.headers().get(AUTHORIZATION) {
            return Scope::Credential(v.as_bytes());
        }
        Scope::Anonymous
    }
}

impl fmt::Debug for Scope<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Tenant(t) => f.debug_tuple("Tenant").field(t).finish(),
            Scope::Credential(_) => f.write_str("Credential([REDACTED])"),
            Scope::Anonymous => f.write_str("Anonymous"),
        }
    }
}

fn prefix(h: &mut Sink, method: &Method, path: &str, scope: Scope<'_>) {
    put_bytes(h, KEY_SCHEMA.as_bytes());
    put_bytes(h, method.as_str().as_bytes());
    put_bytes(h, path.as_bytes());
    match scope {
        Scope::Tenant(t) => {
            h.update(b"T");
            put_bytes(h, t.as_bytes());
        }
        Scope::Credential(c) => {
            h.update(b"C");
            put_bytes(h, c);
        }
        Scope::Anonymous => h.update(b"A"),
    }
}

/// Feeds the hasher in blocks: the canonical form is made of many tiny pieces (tags,
/// lengths, short strings), and each `Sha256::update` call has a fixed cost.
struct Sink {
    h: Sha256,
    buf: [u8; 512],
    len: usize,
}

impl Sink {
    fn new() -> Self {
        Sink {
            h: Sha256::new(),
            buf: [0; 512],
            len: 0,
        }
    }

    #[inline]
    fn update(&mut self, data: impl AsRef<[u8]>) {
        let data = data.as_ref();
        if self.len + data.len() <= self.buf.len() {
            self.buf[self.len..self.len + data.len()].copy_from_slice(data);
            self.len += data.len();
        } else {
            self.h.update(&self.buf[..self.len]);
            self.len = 0;
            if data.len() >= self.buf.len() / 2 {
                self.h.update(data);
            } else {
                self.buf[..data.len()].copy_from_slice(data);
                self.len = data.len();
            }
        }
    }

    fn finalize(mut self) -> [u8; 32] {
        self.h.update(&self.buf[..self.len]);
        self.h.finalize().into()
    }
}

#[inline]
fn put_len(h: &mut Sink, len: usize) {
    h.update((len as u64).to_le_bytes());
}

#[inline]
fn put_bytes(h: &mut Sink, b: &[u8]) {
    put_len(h, b.len());
    h.update(b);
}

fn write_value(h: &mut Sink, v: &Value) {
    match v {
        Value::Null => h.update(b"z"),
        Value::Bool(true) => h.update(b"t"),
        Value::Bool(false) => h.update(b"f"),
        Value::Number(n) => write_number(h, n),
        Value::String(s) => {
            h.update(b"s");
            put_bytes(h, s.as_bytes());
        }
        Value::Array(items) => {
            h.update(b"a");
            put_len(h, items.len());
            for item in items {
                write_value(h, item);
            }
        }
        Value::Object(map) => write_object(h, map, false),
    }
}

/// Integral floats within the exactly representable range are integers.
fn float_as_int(f: f64) -> Option<i128> {
    (f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0).then_some(f as i128)
}

fn put_int(h: &mut Sink, i: i128) {
    h.update(b"i");
    h.update(i.to_le_bytes());
}

fn put_float(h: &mut Sink, f: f64) {
    h.update(b"d");
    h.update(f.to_bits().to_le_bytes());
}

fn write_number(h: &mut Sink, n: &Number) {
    if let Some(i) = n.as_i64() {
        put_int(h, i128::from(i));
    } else if let Some(u) = n.as_u64() {
        put_int(h, i128::from(u));
    } else {
        let f = n.as_f64().unwrap_or(f64::NAN);
        match float_as_int(f) {
            Some(i) => put_int(h, i),
            None => put_float(h, f),
        }
    }
}

fn is_shape_only(key: &str) -> bool {
    key == "stream" || key == "stream_options"
}

fn write_object(h: &mut Sink, map: &Map<String, Value>, top: bool) {
    // serde_json's map is sorted by key unless `preserve_order` is enabled somewhere in the
    // build; check rather than assume, and sort only when needed.
    let sorted = map
        .keys()
        .zip(map.keys().skip(1))
        .all(|(a, b)| a.as_bytes() < b.as_bytes());
    h.update(b"o");
    let count = if top {
        map.keys().filter(|k| !is_shape_only(k)).count()
    } else {
        map.len()
    };
    put_len(h, count);
    let member = |h: &mut Sink, k: &String, v: &Value| {
        if top && is_shape_only(k) {
            return;
        }
        put_bytes(h, k.as_bytes());
        write_value(h, v);
    };
    if sorted {
        for (k, v) in map {
            member(h, k, v);
        }
    } else {
        let mut members: Vec<(&String, &Value)> = map.iter().collect();
        members.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        for (k, v) in members {
            member(h, k, v);
        }
    }
}

// ---------------------------------------------------------------- from core's shared view

/// A number of the view in canonical form, as serde_json reads it.
pub(crate) fn view_number(raw: &str) -> Option<Canon<'static>> {
    // The common case without serde_json: plain integers read the same either way.
    if let Ok(u) = raw.parse::<u64>() {
        Some(Canon::Int(i128::from(u)))
    } else if let Ok(i) = raw.parse::<i64>() {
        Some(Canon::Int(i128::from(i)))
    } else {
        // Fractions, exponents, huge integers: as serde_json reads them (its float parsing,
        // its range errors).
        match serde_json::from_str::<Canon<'_>>(raw).ok()? {
            Canon::Int(i) => Some(Canon::Int(i)),
            Canon::Float(f) => Some(Canon::Float(f)),
            _ => None,
        }
    }
}

/// Hashes a value of the view exactly as [`canon_value`] hashes the same document read by
/// serde_json (`top`: the document itself, whose shape-only members are left out), without
/// building the canonical tree. `None` where serde_json would fail.
fn view_value(h: &mut Sink, r: JsonRef<'_>, top: bool) -> Option<()> {
    match r.kind() {
        JsonKind::Null => h.update(b"z"),
        JsonKind::Bool => h.update(if r.as_bool()? { b"t" } else { b"f" }),
        JsonKind::Number => match view_number(r.raw())? {
            Canon::Int(i) => put_int(h, i),
            Canon::Float(f) => put_float(h, f),
            _ => return None,
        },
        JsonKind::String => {
            h.update(b"s");
            put_bytes(h, &r.str_bytes()?);
        }
        JsonKind::Array => {
            h.update(b"a");
            put_len(h, r.len());
            for item in r.items() {
                view_value(h, item, false)?;
            }
        }
        JsonKind::Object => {
            let mut list: Vec<(Cow<'_, str>, JsonRef<'_>)> = Vec::with_capacity(r.len());
            for (k, v) in r.members() {
                list.push((k.as_str()?, v));
            }
            // Sorted by key, the last of duplicate keys kept (as serde_json's map does).
            let sorted_unique = list
                .windows(2)
                .all(|w| w[0].0.as_bytes() < w[1].0.as_bytes());
            if top {
                list.retain(|(k, _)| !is_shape_only(k));
            }
            if !sorted_unique {
                list.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
                list.dedup_by(|later, earlier| {
                    if later.0 == earlier.0 {
                        std::mem::swap(later, earlier);
                        true
                    } else {
                        false
                    }
                });
            }
            h.update(b"o");
            put_len(h, list.len());
            for (k, v) in list {
                put_bytes(h, k.as_bytes());
                view_value(h, v, false)?;
            }
        }
        _ => return None,
    }
    Some(())
}

// ---------------------------------------------------------------- borrowed fast path

/// A JSON document parsed for hashing: strings borrowed from the input when they carry no
/// escapes, numbers already in canonical form.
#[derive(Debug)]
pub(crate) enum Canon<'a> {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(Cow<'a, str>),
    Arr(Vec<Canon<'a>>),
    Obj(Vec<(Cow<'a, str>, Canon<'a>)>),
}

/// How deep serde_json reads (its recursion limit): a deeper document is an error there, so it
/// is no key here either.
const SERDE_MAX_DEPTH: usize = 127;

impl<'a> Canon<'a> {
    pub(crate) fn is_zero(&self) -> bool {
        matches!(self, Canon::Int(0))
    }
}

struct CanonVisitor;

impl<'de> Visitor<'de> for CanonVisitor {
    type Value = Canon<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Canon<'de>, E> {
        Ok(Canon::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Canon<'de>, E> {
        Ok(Canon::Int(i128::from(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Canon<'de>, E> {
        Ok(Canon::Int(i128::from(v)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Canon<'de>, E> {
        Ok(match float_as_int(v) {
            Some(i) => Canon::Int(i),
            None => Canon::Float(v),
        })
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Canon<'de>, E> {
        Ok(Canon::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Canon<'de>, E> {
        Ok(Canon::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Canon<'de>, E> {
        Ok(Canon::Str(Cow::Owned(v)))
    }
    fn visit_unit<E>(self) -> Result<Canon<'de>, E> {
        Ok(Canon::Null)
    }
    fn visit_none<E>(self) -> Result<Canon<'de>, E> {
        Ok(Canon::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Canon<'de>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(v) = seq.next_element()? {
            items.push(v);
        }
        Ok(Canon::Arr(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Canon<'de>, A::Error> {
        let mut members = Vec::with_capacity(map.size_hint().unwrap_or(0));
        while let Some(KeyStr(k)) = map.next_key()? {
            let v: Canon<'de> = map.next_value()?;
            members.push((k, v));
        }
        Ok(Canon::Obj(members))
    }
}

impl<'de> Deserialize<'de> for Canon<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CanonVisitor)
    }
}

/// An object key, borrowed when it has no escapes (serde's `Cow<str>` always copies).
struct KeyStr<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for KeyStr<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeyStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<KeyStr<'de>, E> {
                Ok(KeyStr(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<KeyStr<'de>, E> {
                Ok(KeyStr(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<KeyStr<'de>, E> {
                Ok(KeyStr(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

fn canon_value(h: &mut Sink, v: &Canon<'_>) {
    match v {
        Canon::Null => h.update(b"z"),
        Canon::Bool(true) => h.update(b"t"),
        Canon::Bool(false) => h.update(b"f"),
        Canon::Int(i) => put_int(h, *i),
        Canon::Float(f) => put_float(h, *f),
        Canon::Str(s) => {
            h.update(b"s");
            put_bytes(h, s.as_bytes());
        }
        Canon::Arr(items) => {
            h.update(b"a");
            put_len(h, items.len());
            for item in items {
                canon_value(h, item);
            }
        }
        Canon::Obj(members) => canon_object(h, members, false),
    }
}

fn canon_object(h: &mut Sink, members: &[(Cow<'_, str>, Canon<'_>)], top: bool) {
    // Sorted by key, the last of duplicate keys kept (as serde_json's map does).
    let sorted_unique = members
        .windows(2)
        .all(|w| w[0].0.as_bytes() < w[1].0.as_bytes());
    if sorted_unique && !top {
        // The common case: no copy of the member list.
        h.update(b"o");
        put_len(h, members.len());
        for (k, v) in members {
            put_bytes(h, k.as_bytes());
            canon_value(h, v);
        }
        return;
    }
    let mut list: Vec<&(Cow<'_, str>, Canon<'_>)> = members
        .iter()
        .filter(|(k, _)| !(top && is_shape_only(k)))
        .collect();
    if !sorted_unique {
        list.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        list.dedup_by(|later, earlier| {
            if later.0 == earlier.0 {
                // Keep the later value in the earlier slot.
                std::mem::swap(later, earlier);
                true
            } else {
                false
            }
        });
    }
    h.update(b"o");
    put_len(h, list.len());
    for (k, v) in list {
        put_bytes(h, k.as_bytes());
        canon_value(h, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(body: &str) -> CacheKey {
        let v: Value = serde_json::from_str(body).unwrap();
        let k = CacheKey::compute(&Method::POST, "/chat/completions", Scope::Anonymous, &v);
        let fast = CacheKey::from_json(
            &Method::POST,
            "/chat/completions",
            Scope::Anonymous,
            body.as_bytes(),
        )
        .unwrap();
        assert_eq!(k, fast, "both paths agree on {body}");
        let view = ChatView::parse(bytes::Bytes::copy_from_slice(body.as_bytes())).unwrap();
        let from_view =
            CacheKey::from_view(&Method::POST, "/chat/completions", Scope::Anonymous, &view);
        assert_eq!(Some(k), from_view, "the view's path agrees on {body}");
        k
    }

    #[test]
    fn duplicate_keys_keep_the_last_like_serde_json() {
        assert_eq!(key(r#"{"a":1,"a":2}"#), key(r#"{"a":2}"#));
        assert_eq!(key(r#"{"b":0,"a":1,"a":2}"#), key(r#"{"a":2,"b":0}"#));
    }

    #[test]
    fn order_whitespace_stream_do_not_matter() {
        let a = key(r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0}"#);
        let b = key(r#" { "temperature" : 0.0 ,
                 "messages" : [ { "content" : "hi", "role" : "user" } ], "model":"m",
                 "stream": true, "stream_options": {"include_usage": true} } "#);
        assert_eq!(a, b);
        assert_eq!(
            a,
            key(
                r#"{"model":"m","messages":[{"role":"user","content":"\u0068i"}],"temperature":-0}"#
            )
        );
    }

    #[test]
    fn meaningful_fields_change_the_key() {
        let base = json!({"model":"m","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hi"}],"temperature":0});
        let k =
            |v: &Value| CacheKey::compute(&Method::POST, "/chat/completions", Scope::Anonymous, v);
        let k0 = k(&base);
        let mut t = base.clone();
        t["temperature"] = json!(0.7);
        assert_ne!(k0, k(&t));
        let mut s = base.clone();
        s["messages"][0]["content"] = json!("be verbose");
        assert_ne!(k0, k(&s));
        let mut tools = base.clone();
        tools["tools"] = json!([{"type":"function","function":{"name":"f"}}]);
        assert_ne!(k0, k(&tools));
        let mut unknown = base.clone();
        unknown["future_field"] = json!(1);
        assert_ne!(k0, k(&unknown));
        // `stream` nested elsewhere is content, not shape.
        let mut nested = base.clone();
        nested["messages"][1]["stream"] = json!(true);
        assert_ne!(k0, k(&nested));
        assert_ne!(
            k0,
            CacheKey::compute(&Method::POST, "/beta/completions", Scope::Anonymous, &base)
        );
        assert_ne!(
            k0,
            CacheKey::compute(
                &Method::POST,
                "/chat/completions",
                Scope::Tenant("a"),
                &base
            )
        );
        assert_ne!(
            CacheKey::compute(
                &Method::POST,
                "/chat/completions",
                Scope::Tenant("a"),
                &base
            ),
            CacheKey::compute(
                &Method::POST,
                "/chat/completions",
                Scope::Tenant("b"),
                &base
            )
        );
        assert_ne!(
            CacheKey::compute(
                &Method::POST,
                "/chat/completions",
                Scope::Credential(b"Bearer x"),
                &base
            ),
            CacheKey::compute(
                &Method::POST,
                "/chat/completions",
                Scope::Credential(b"Bearer y"),
                &base
            )
        );
    }

    #[test]
    fn no_ambiguity_between_strings_and_structure() {
        assert_ne!(key(r#"{"a":"b","c":"d"}"#), key(r#"{"a":"b\",\"c\":\"d"}"#));
        assert_ne!(key(r#"{"a":["x","y"]}"#), key(r#"{"a":["xy"]}"#));
        assert_ne!(key(r#"{"a":1}"#), key(r#"{"a":"1"}"#));
        assert_ne!(key(r#"{"a":1.5}"#), key(r#"{"a":1}"#));
    }

    #[test]
    fn scope_reads_tenant_then_credential() {
        let mut req = Request::new(());
        assert_eq!(Scope::of(&req), Scope::Anonymous);
        req.headers_mut()
            .insert(AUTHORIZATION, "Bearer sk-1".parse().unwrap());
        assert_eq!(Scope::of(&req), Scope::Credential(b"Bearer sk-1"));
        assert!(!format!("{:?}", Scope::of(&req)).contains("sk-1"));
        req.extensions_mut().insert(TenantId::new("acme"));
        assert_eq!(Scope::of(&req), Scope::Tenant("acme"));
    }

    #[test]
    fn the_view_path_refuses_what_serde_json_refuses() {
        let refused = |body: String| {
            let from_json = CacheKey::from_json(
                &Method::POST,
                "/chat/completions",
                Scope::Anonymous,
                body.as_bytes(),
            );
            let view = ChatView::parse(bytes::Bytes::from(body.clone())).unwrap();
            let from_view =
                CacheKey::from_view(&Method::POST, "/chat/completions", Scope::Anonymous, &view);
            assert_eq!(from_json.ok(), from_view, "{body}");
            from_view.is_none()
        };
        // serde_json's recursion limit, on both sides of it.
        for depth in [126, 127, 128, 129] {
            let body = "[".repeat(depth) + &"]".repeat(depth);
            assert_eq!(refused(body), depth > SERDE_MAX_DEPTH, "depth {depth}");
        }
        assert!(refused(r#"{"a":"\ud800"}"#.to_owned()), "a lone surrogate");
        assert!(
            refused(r#"{"\udc00":1}"#.to_owned()),
            "a lone surrogate in a key"
        );
        assert!(
            refused(r#"{"t":1e400}"#.to_owned()),
            "a number out of range"
        );
        assert!(!refused(
            r#"{"t":-0,"u":1e2,"v":123456789012345678901234}"#.to_owned()
        ));
    }

    #[test]
    fn hex_and_display_agree() {
        let k = key("{}");
        assert_eq!(k.to_hex(), k.to_string());
        assert_eq!(k.to_hex().len(), 64);
    }
}
