//! The canonical cache key: never panics; the key straight from the bytes equals the key of
//! the parsed value; equivalent JSON (re-serialized compact or pretty) has the same key.
#![no_main]

use http::Method;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tower_deepseek_cache::{CacheKey, Scope};

fuzz_target!(|data: &[u8]| {
    let m = Method::POST;
    let path = "/chat/completions";
    let from_bytes = CacheKey::from_json(&m, path, Scope::Anonymous, data);
    let Ok(v) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let k = CacheKey::compute(&m, path, Scope::Anonymous, &v);
    assert_eq!(
        from_bytes.ok(),
        Some(k),
        "from_json disagrees with compute over the parsed value"
    );
    for text in [
        serde_json::to_string(&v).unwrap(),
        serde_json::to_string_pretty(&v).unwrap(),
    ] {
        // serde_json (without `float_roundtrip`) may read a number that is not exactly
        // representable to another f64 in another spelling (found here: a 23-digit integer
        // and its `e22` form): then the documents are not equal, and neither are the keys.
        if serde_json::from_str::<Value>(&text).ok().as_ref() != Some(&v) {
            continue;
        }
        let again = CacheKey::from_json(&m, path, Scope::Anonymous, text.as_bytes());
        assert_eq!(again.ok(), Some(k), "equivalent JSON, another key: {text}");
    }
    // Another scope is another key.
    assert_ne!(CacheKey::compute(&m, path, Scope::Tenant("t"), &v), k);
});
