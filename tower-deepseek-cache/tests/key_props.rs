//! Property tests of the canonical key.

use http::Method;
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use tower_deepseek_cache::{CacheKey, Scope};

fn key(v: &Value, scope: Scope<'_>) -> CacheKey {
    CacheKey::compute(&Method::POST, "/chat/completions", scope, v)
}

/// Writes `v` as JSON with object members in the order given by `perm` (a seed) and random
/// whitespace.
fn write_shuffled(v: &Value, seed: &mut u64, ws: bool, out: &mut String) {
    fn next(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }
    let pad = |out: &mut String, n: u64| {
        if ws {
            for _ in 0..(n % 3) {
                out.push_str([" ", "\n", "\t"][(n % 3) as usize]);
            }
        }
    };
    match v {
        Value::Object(m) => {
            let mut members: Vec<(&String, &Value)> = m.iter().collect();
            for i in (1..members.len()).rev() {
                let j = (next(seed) % (i as u64 + 1)) as usize;
                members.swap(i, j);
            }
            out.push('{');
            for (i, (k, val)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                pad(out, next(seed));
                out.push_str(&serde_json::to_string(k).unwrap());
                pad(out, next(seed));
                out.push(':');
                pad(out, next(seed));
                write_shuffled(val, seed, ws, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                pad(out, next(seed));
                write_shuffled(item, seed, ws, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

fn request() -> impl Strategy<Value = Value> {
    let text = "[a-zA-Z0-9 \"\\\\é\u{1F600}\n]{0,40}";
    (
        text,
        text,
        prop::option::of(0u32..200),
        prop::option::of(text),
        any::<bool>(),
        prop::collection::vec(("[a-z_]{1,8}", text), 0..4),
    )
        .prop_map(|(system, user, max_tokens, tool, thinking, extra)| {
            let mut v = json!({
                "model": "deepseek-chat",
                "temperature": 0,
                "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            });
            let m = v.as_object_mut().unwrap();
            if let Some(n) = max_tokens {
                m.insert("max_tokens".into(), json!(n));
            }
            if let Some(t) = tool {
                m.insert(
                    "tools".into(),
                    json!([{"type": "function", "function": {"name": "f", "description": t}}]),
                );
            }
            if thinking {
                m.insert("thinking".into(), json!({"type": "enabled"}));
            }
            for (k, val) in extra {
                if !m.contains_key(&k) && k != "stream" && k != "stream_options" {
                    m.insert(k, json!(val));
                }
            }
            v
        })
}

proptest! {
    #[test]
    fn order_whitespace_and_stream_flags_keep_the_key(v in request(), seed in 1u64.., ws in any::<bool>(), stream in any::<bool>(), usage in any::<bool>()) {
        let mut s = seed;
        let mut text = String::new();
        let mut with_stream = v.clone();
        let m = with_stream.as_object_mut().unwrap();
        m.insert("stream".into(), json!(stream));
        if usage {
            m.insert("stream_options".into(), json!({"include_usage": true}));
        }
        write_shuffled(&with_stream, &mut s, ws, &mut text);
        let reparsed: Value = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(key(&v, Scope::Anonymous), key(&reparsed, Scope::Anonymous));
        // The borrowed fast path agrees with the `Value` path.
        let fast = CacheKey::from_json(&Method::POST, "/chat/completions", Scope::Anonymous, text.as_bytes()).unwrap();
        prop_assert_eq!(key(&v, Scope::Anonymous), fast);
        // So does the layer's path, over core's shared view of the body.
        let view = tower_deepseek_core::view::ChatView::parse(bytes::Bytes::from(text)).unwrap();
        let from_view = CacheKey::from_view(&Method::POST, "/chat/completions", Scope::Anonymous, &view);
        prop_assert_eq!(Some(key(&v, Scope::Anonymous)), from_view);
    }

    #[test]
    fn meaningful_changes_change_the_key(v in request(), t in 1u32..200, sys in "[a-z]{1,10}", tenant in "[a-z]{1,8}") {
        let k = key(&v, Scope::Anonymous);
        let mut warmer = v.clone();
        warmer["temperature"] = json!(f64::from(t) / 100.0);
        prop_assert_ne!(k, key(&warmer, Scope::Anonymous));
        let mut system = v.clone();
        let old = system["messages"][0]["content"].as_str().unwrap().to_owned();
        system["messages"][0]["content"] = json!(format!("{old}{sys}"));
        prop_assert_ne!(k, key(&system, Scope::Anonymous));
        let mut tools = v.clone();
        tools["tools"] = json!([{"type": "function", "function": {"name": sys}}]);
        prop_assert_ne!(k, key(&tools, Scope::Anonymous));
        prop_assert_ne!(k, key(&v, Scope::Tenant(&tenant)));
        let other = format!("{tenant}x");
        prop_assert_ne!(key(&v, Scope::Tenant(&tenant)), key(&v, Scope::Tenant(&other)));
    }
}

#[test]
fn equal_numbers_are_one_key() {
    let k = |t: Value| {
        let mut m = Map::new();
        m.insert("temperature".into(), t);
        key(&Value::Object(m), Scope::Anonymous)
    };
    assert_eq!(k(json!(0)), k(json!(0.0)));
    assert_eq!(k(json!(0)), k(serde_json::from_str("-0.0").unwrap()));
    assert_eq!(k(json!(1)), k(serde_json::from_str("1e0").unwrap()));
    assert_ne!(k(json!(0.5)), k(json!(0.25)));
}
