//! Property equivalent of the `cache_key` fuzz target: for any bytes, `CacheKey::from_json`
//! never panics and agrees with `CacheKey::compute` over what `serde_json` parses, and
//! `CacheKey::from_view` (the layer's path, over core's `ChatView`) agrees with both (duplicate
//! keys, escapes, odd numbers and deep nesting included); re-serialized JSON, compact or
//! pretty, has the same key.

use bytes::Bytes;
use http::Method;
use proptest::prelude::*;
use serde_json::Value;
use tower_deepseek_cache::{CacheKey, Scope};
use tower_deepseek_core::view::ChatView;

fn check(data: &[u8]) -> Result<(), TestCaseError> {
    let (m, path) = (Method::POST, "/chat/completions");
    let from_bytes = CacheKey::from_json(&m, path, Scope::Anonymous, data);
    // The layer's path: core's shared view of the body, then the key from the view. The same
    // key as from the bytes, and no key exactly where there is none from the bytes.
    let from_view = ChatView::parse(Bytes::copy_from_slice(data))
        .ok()
        .and_then(|v| CacheKey::from_view(&m, path, Scope::Anonymous, &v));
    prop_assert_eq!(
        from_view,
        from_bytes.as_ref().ok().copied(),
        "from_view disagrees with from_json on {:?}",
        String::from_utf8_lossy(data)
    );
    let Ok(v) = serde_json::from_slice::<Value>(data) else {
        return Ok(());
    };
    let k = CacheKey::compute(&m, path, Scope::Anonymous, &v);
    prop_assert_eq!(
        from_bytes.ok(),
        Some(k),
        "from_json disagrees with compute on {:?}",
        String::from_utf8_lossy(data)
    );
    for text in [
        serde_json::to_string(&v).unwrap(),
        serde_json::to_string_pretty(&v).unwrap(),
    ] {
        // serde_json (without `float_roundtrip`) may read a number that is not exactly
        // representable to another f64 in another spelling (the fuzzer found a 23-digit
        // integer and its `e22` form): those documents differ, and so do their keys.
        if serde_json::from_str::<Value>(&text).ok().as_ref() != Some(&v) {
            continue;
        }
        let again = CacheKey::from_json(&m, path, Scope::Anonymous, text.as_bytes()).ok();
        prop_assert_eq!(again, Some(k), "equivalent JSON, another key: {}", text);
    }
    Ok(())
}

/// JSON text built from pieces, with repeated keys, escapes and number forms.
fn json_text() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_owned()),
        Just("true".to_owned()),
        prop::sample::select(vec![
            "0",
            "-0",
            "1",
            "1.0",
            "1e2",
            "100",
            "-1.5E-3",
            "12345678901234567890",
            "0.1"
        ])
        .prop_map(str::to_owned),
        "[a-z\\\\\"\u{e9}\u{1F600}]{0,6}".prop_map(|s| serde_json::to_string(&s).unwrap()),
        Just("\"\\u00e9\\n\\/\"".to_owned()),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::vec(
                (
                    prop::sample::select(vec![
                        "model",
                        "a",
                        "b",
                        "temperature",
                        "stream",
                        "\\u0061"
                    ]),
                    inner
                ),
                0..4
            )
            .prop_map(|v| format!(
                "{{ {} }}",
                v.into_iter()
                    .map(|(k, x)| format!("\"{k}\" : {x}"))
                    .collect::<Vec<_>>()
                    .join(" ,\n")
            )),
        ]
    })
}

/// The fuzzer's case: the same key from the bytes and from the parsed value.
#[test]
fn a_23_digit_integer() {
    check(b"33333333333336666664646").unwrap();
    check(b"[33333333333336666664646, 3.3333333333333667e22]").unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, .. ProptestConfig::default() })]

    #[test]
    fn from_json_agrees_with_compute(text in json_text()) {
        check(text.as_bytes())?;
    }

    #[test]
    fn from_json_on_random_bytes(data in prop::collection::vec(prop::sample::select(b"{}[]\",:01e.-\\u a".to_vec()), 0..60)) {
        check(&data)?;
    }
}
