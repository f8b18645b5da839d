//! The JSON line of a record, written by hand (exactly serde_json's bytes for the equivalent
//! [`AuditRecord`](super::AuditRecord)), and its hex helpers.

use tower_deepseek_core::meta::RequestId;

use super::record::Facts;
use crate::redactor::PiiCounts;

/// A record as one JSON line's bytes: exactly what `serde_json::to_vec` gives for the
/// equivalent [`AuditRecord`] (a test checks this on arbitrary records), written by hand into a
/// buffer sized for a typical record. Member names are literals here, not escaped at run time,
/// and values are escaped only when they hold a byte that needs it; serde's generic path over
/// an [`AuditRecord`] of owned strings cost several times as much. With `prev`, the record
/// carries `prev_hash` (the hash chain), without its own `hash`.
pub(super) fn to_json(f: &Facts, prev: Option<&[u8; 32]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(640);
    out.extend_from_slice(b"{\"timestamp\":\"");
    out.extend_from_slice(&f.timestamp);
    out.extend_from_slice(b"\",\"request_id\":");
    json_opt_str(&mut out, f.request_id.as_ref().map(RequestId::as_str));
    out.extend_from_slice(b",\"client_ip\":");
    match f.client_ip {
        Some(ip) => {
            use std::io::Write as _;
            out.push(b'"');
            write!(out, "{ip}").expect("writing to a Vec");
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"tenant\":");
    json_opt_hex(&mut out, f.tenant.as_ref().map(|h| &h[..]));
    out.extend_from_slice(b",\"key_id\":");
    json_opt_hex(&mut out, f.key_id.as_ref().map(|h| &h[..]));
    out.extend_from_slice(b",\"method\":");
    json_str(&mut out, f.method.as_str());
    out.extend_from_slice(b",\"endpoint\":");
    json_str(&mut out, &f.endpoint);
    out.extend_from_slice(b",\"model\":");
    json_opt_str(&mut out, f.model.as_deref());
    out.extend_from_slice(b",\"prompt_hash\":");
    json_opt_hex(&mut out, f.prompt_hash.as_ref().map(|h| &h[..]));
    out.extend_from_slice(b",\"status\":");
    json_opt_u64(&mut out, f.status.map(u64::from));
    out.extend_from_slice(b",\"outcome\":");
    json_str(&mut out, f.outcome);
    out.extend_from_slice(b",\"latency_ms\":");
    json_u64(&mut out, f.latency_ms);
    out.extend_from_slice(b",\"prompt_tokens\":");
    json_opt_u64(&mut out, f.prompt_tokens);
    out.extend_from_slice(b",\"completion_tokens\":");
    json_opt_u64(&mut out, f.completion_tokens);
    out.extend_from_slice(b",\"cache_hit_tokens\":");
    json_opt_u64(&mut out, f.cache_hit_tokens);
    out.extend_from_slice(b",\"pii\":{");
    // In the order of the record's `BTreeMap<String, u32>`: entity types order by their names.
    for (i, (k, v)) in f.pii.iter().flat_map(PiiCounts::iter).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json_str(&mut out, k.as_str());
        out.push(b':');
        json_u64(&mut out, u64::from(v));
    }
    out.extend_from_slice(b"},\"cache\":");
    json_opt_str(&mut out, f.cache.as_deref());
    out.extend_from_slice(b",\"retries\":");
    json_opt_u64(&mut out, f.retries.map(u64::from));
    out.extend_from_slice(b",\"breaker\":");
    json_opt_str(&mut out, f.breaker.as_deref());
    if let Some((amount, currency)) = &f.cost {
        use std::io::Write as _;
        write!(out, ",\"cost\":\"{amount}\",\"currency\":").expect("writing to a Vec");
        json_str(&mut out, currency);
    }
    if let Some(p) = prev {
        out.extend_from_slice(b",\"prev_hash\":");
        json_opt_hex(&mut out, Some(p));
    }
    out.push(b'}');
    out
}

/// Lower-case hex in a JSON string, or `null`.
fn json_opt_hex(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        Some(b) => {
            out.push(b'"');
            hex_into(out, b);
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
}

/// A JSON string, escaped as `serde_json` escapes it (`\"`, `\\`, `\b\f\n\r\t`, other control
/// characters as `\u00xx`; everything else, non-ASCII included, as it is).
fn json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    if !needs_escape(bytes) {
        out.extend_from_slice(bytes);
    } else {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut last = 0;
        for (i, &b) in bytes.iter().enumerate() {
            let esc: &[u8] = match b {
                b'"' => b"\\\"",
                b'\\' => b"\\\\",
                0x08 => b"\\b",
                0x0c => b"\\f",
                b'\n' => b"\\n",
                b'\r' => b"\\r",
                b'\t' => b"\\t",
                0..0x20 => {
                    out.extend_from_slice(&bytes[last..i]);
                    out.extend_from_slice(b"\\u00");
                    out.push(HEX[usize::from(b >> 4)]);
                    out.push(HEX[usize::from(b & 15)]);
                    last = i + 1;
                    continue;
                }
                _ => continue,
            };
            out.extend_from_slice(&bytes[last..i]);
            out.extend_from_slice(esc);
            last = i + 1;
        }
        out.extend_from_slice(&bytes[last..]);
    }
    out.push(b'"');
}

/// Whether `bytes` holds a control character, `"` or `\\`: eight bytes at a time (the
/// classic "has a zero byte" / "has a byte less than n" word tests, exact for this question).
fn needs_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH != 0;
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        let v = u64::from_ne_bytes(w.try_into().expect("8 bytes"));
        // Below 0x20: `v - 0x20..20` borrows into a byte's high bit only for such a byte
        // (bytes of 0x80 and above are excluded by `!v`).
        let control = v.wrapping_sub(ONES * 0x20) & !v & HIGH != 0;
        if control
            || has_zero(v ^ (ONES * u64::from(b'"')))
            || has_zero(v ^ (ONES * u64::from(b'\\')))
        {
            return true;
        }
    }
    words
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

fn json_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => json_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

fn json_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

fn json_opt_u64(out: &mut Vec<u8>, v: Option<u64>) {
    match v {
        Some(v) => json_u64(out, v),
        None => out.extend_from_slice(b"null"),
    }
}

/// Appends lower-case hex (formatted on the stack, appended at once: the hashes here are at
/// most 32 bytes).
pub(super) fn hex_into(out: &mut Vec<u8>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 64];
    for chunk in bytes.chunks(32) {
        for (pair, b) in buf.chunks_exact_mut(2).zip(chunk) {
            pair[0] = DIGITS[usize::from(b >> 4)];
            pair[1] = DIGITS[usize::from(b & 15)];
        }
        out.extend_from_slice(&buf[..chunk.len() * 2]);
    }
}

/// Lower-case hex.
pub(super) fn hex_lower(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len() * 2);
    hex_into(&mut out, bytes);
    String::from_utf8(out).expect("ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::AuditRecord;
    use crate::audit::date::rfc3339_bytes;
    use std::borrow::Cow;
    use std::time::UNIX_EPOCH;
    use tower_deepseek_core::protocol::Money;

    fn any_text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            any::<String>(),
            "[ -~]{0,12}",
            proptest::collection::vec(
                prop_oneof![
                    (0u8..0x20).prop_map(char::from),
                    Just('"'),
                    Just('\\'),
                    Just('\u{7f}'),
                    Just('é'),
                    Just('字'),
                    Just('a')
                ],
                0..12
            )
            .prop_map(|v| v.into_iter().collect()),
        ]
    }

    /// The record that `facts` stand for, as serde would write it.
    fn to_record(f: &Facts, prev: Option<&[u8; 32]>) -> AuditRecord {
        AuditRecord {
            timestamp: String::from_utf8(f.timestamp.to_vec()).unwrap(),
            request_id: f.request_id.as_ref().map(|r| r.as_str().to_owned()),
            client_ip: f.client_ip.map(|ip| ip.to_string()),
            tenant: f.tenant.map(hex::encode),
            key_id: f.key_id.map(hex::encode),
            method: f.method.as_str().to_owned(),
            endpoint: f.endpoint.clone(),
            model: f.model.clone(),
            prompt_hash: f.prompt_hash.map(hex::encode),
            status: f.status,
            outcome: f.outcome.to_owned(),
            latency_ms: f.latency_ms,
            prompt_tokens: f.prompt_tokens,
            completion_tokens: f.completion_tokens,
            cache_hit_tokens: f.cache_hit_tokens,
            pii: f
                .pii
                .iter()
                .flat_map(PiiCounts::iter)
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            cache: f.cache.clone(),
            retries: f.retries,
            breaker: f.breaker.as_deref().map(str::to_owned),
            cost: f.cost.as_ref().map(|(m, _)| m.to_string()),
            currency: f.cost.as_ref().map(|(_, c)| c.to_string()),
            prev_hash: prev.map(hex::encode),
            hash: None,
        }
    }

    proptest::proptest! {
        /// The hand-written serializer gives exactly serde_json's bytes for the equivalent
        /// record, escapes included.
        #[test]
        fn to_json_is_serde_json_of_the_record(
            texts in proptest::collection::vec(any_text(), 5),
            id in "[!-~]{1,40}",
            some in proptest::collection::vec(proptest::prelude::any::<bool>(), 17),
            nums in proptest::collection::vec(proptest::prelude::any::<u64>(), 6),
            bytes in proptest::prelude::any::<[u8; 32]>(),
            ip in proptest::prelude::any::<std::net::IpAddr>(),
            pii in proptest::collection::vec(0usize..13, 0..6),
            method in proptest::sample::select(vec!["GET", "POST", "PATCH", "X-CUSTOM"]),
            secs in 0u64..=253_402_300_799,
        ) {
            let short: [u8; 8] = bytes[..8].try_into().unwrap();
            let mut counts = PiiCounts::default();
            for i in &pii {
                counts.add(&crate::EntityType::builtin()[*i]);
            }
            let facts = Facts {
                timestamp: rfc3339_bytes(UNIX_EPOCH + std::time::Duration::from_millis(secs * 1000 + nums[5] % 1000)),
                request_id: some[0].then(|| RequestId::parse(&id).unwrap()),
                client_ip: some[1].then_some(ip),
                tenant: some[2].then_some(short),
                key_id: some[3].then_some(short),
                method: http::Method::from_bytes(method.as_bytes()).unwrap(),
                endpoint: texts[0].clone(),
                model: some[4].then(|| texts[1].clone()),
                prompt_hash: some[5].then_some(bytes),
                status: some[6].then_some(nums[0] as u16),
                outcome: if some[7] { "ok" } else { "rate_limited" },
                latency_ms: nums[1],
                prompt_tokens: some[8].then_some(nums[2]),
                completion_tokens: some[9].then_some(nums[3]),
                cache_hit_tokens: some[10].then_some(0),
                pii: some[11].then_some(counts),
                cache: some[12].then(|| texts[2].clone()),
                retries: some[13].then_some(nums[4] as u32),
                breaker: some[14].then(|| Cow::Owned(texts[3].clone())),
                cost: some[16].then(|| {
                    (Money::from_picos(u128::from(nums[4]) * 1_000 + 7), texts[4].as_str().into())
                }),
            };
            let prev = some[15].then_some(&bytes);
            proptest::prop_assert_eq!(
                String::from_utf8(to_json(&facts, prev)).unwrap(),
                serde_json::to_string(&to_record(&facts, prev)).unwrap()
            );
        }
    }

    #[test]
    fn needs_escape_finds_every_such_byte_at_every_offset() {
        for len in 0..24 {
            for at in 0..len {
                for b in 0u8..=255 {
                    let mut v = vec![b'a'; len];
                    v[at] = b;
                    let want = b < 0x20 || b == b'"' || b == b'\\';
                    assert_eq!(needs_escape(&v), want, "byte {b:#x} at {at} of {len}");
                    // Neighbours that are high or just above the control range change nothing.
                    for n in [0x20u8, 0x21, 0x7f, 0x80, 0xff] {
                        let mut w = vec![n; len];
                        w[at] = b;
                        assert_eq!(needs_escape(&w), want, "byte {b:#x} among {n:#x}");
                    }
                }
            }
        }
    }

    #[test]
    fn hex_is_lower_case() {
        assert_eq!(hex_lower(&[0x00, 0x9f, 0xa0, 0xff]), "009fa0ff");
        assert_eq!(hex_lower(&[]), "");
        let long: Vec<u8> = (0..=255).collect();
        assert_eq!(hex_lower(&long), hex::encode(&long));
    }
}
