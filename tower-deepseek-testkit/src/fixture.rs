//! The fixtures of the benches that set the layers against their peers (issue 17): a 2 KB chat
//! request and a 2 KB JSON chat answer, the same bytes for every variant of every bench.
//!
//! Only `bytes` and `serde_json` are used, so a crate that cannot depend on the testkit (core)
//! includes this file with `#[path]`.

use bytes::Bytes;

/// Mixed English and Chinese prose with line breaks, as chat text is.
const PROSE: &str = "Tower middleware composes: each layer wraps a service and returns a service, \
so retries, timeouts and rate limits stack in the order you list them.\n\
把限流放在重试层之外，这样一次重试不会再占一个名额。\n\
Put the cache outside the retry layer: a hit never reaches it. \"Quoted\" words, a path \
C:\\tmp and a tab\there.\n";

/// `text` repeated and cut (at a character boundary) to `len` bytes.
fn text_of(len: usize) -> String {
    let mut s = String::with_capacity(len + PROSE.len());
    while s.len() < len {
        s.push_str(PROSE);
    }
    let mut cut = len;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
    s
}

/// The longest document `make(text)` of at most `size` bytes (its one text field cut to fit).
fn sized(size: usize, make: impl Fn(&str) -> serde_json::Value) -> Bytes {
    let doc = |len| serde_json::to_vec(&make(&text_of(len))).expect("a JSON value");
    let mut len = size.saturating_sub(doc(0).len());
    loop {
        let d = doc(len);
        if d.len() <= size || len == 0 {
            return Bytes::from(d);
        }
        len -= 1;
    }
}

/// A 2 KB non-streaming chat request: a system prompt and a user turn, `temperature` 0 (so
/// that the cache layer stores its answer).
pub fn chat_request_2k() -> Bytes {
    sized(2048, |text| {
        serde_json::json!({
            "model": "deepseek-chat",
            "messages": [
                {"role": "system", "content": "You are a concise assistant for Rust engineers."},
                {"role": "user", "content": text},
            ],
            "temperature": 0.0,
            "max_tokens": 512,
            "stream": false,
        })
    })
}

/// A 2 KB chat answer as DeepSeek writes it (`chat.completion`, one choice, `finish_reason`
/// `stop`, usage with its cache and reasoning fields).
pub fn answer_2k() -> Bytes {
    sized(2048, |text| {
        serde_json::json!({
            "id": "930c60df-bf64-41c9-a88e-3ec75f81e00e",
            "object": "chat.completion",
            "created": 1_705_651_092,
            "model": "deepseek-chat",
            "system_fingerprint": "fp_a49d71b8a1",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": null,
                "finish_reason": "stop",
            }],
            "usage": {
                "prompt_tokens": 412,
                "completion_tokens": 380,
                "total_tokens": 792,
                "prompt_tokens_details": {"cached_tokens": 0},
                "prompt_cache_hit_tokens": 0,
                "prompt_cache_miss_tokens": 412,
            },
        })
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn fixtures_are_2_kb_of_json() {
        for b in [super::chat_request_2k(), super::answer_2k()] {
            assert!((2040..=2048).contains(&b.len()), "{}", b.len());
            serde_json::from_slice::<serde_json::Value>(&b).unwrap();
        }
    }
}
