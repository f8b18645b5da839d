//! Property tests for the classifier's JSON verdict: the classifier's probe (borrowed strings,
//! only the last `finish_reason` kept) must judge every body exactly as a plain serde probe
//! does (a `Vec` of choices, owned strings: the classifier's former code, kept here as the
//! reference), and extract the same summary. Bodies: realistic chat answers and random JSON
//! built from the keys the classifier looks at (so nested `error` and `finish_reason` keys,
//! wrong types, duplicates and keys inside content strings all occur), written with random
//! whitespace and escapes, whole, split at random, truncated at every byte, and mutated.

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use proptest::prelude::*;
use tower_deepseek_core::chat::FinishReason;
use tower_deepseek_core::classify::{ClassifiedResponse, Classifier, FailureClass};

#[path = "common/former_probe.rs"]
mod former_probe;
use former_probe::RefProbe;

/// What the tests compare: the verdict and every summary field the probe fills.
type UsageFacts = (
    u64,
    u64,
    u64,
    Option<u64>,
    Option<u64>,
    Option<Option<u64>>,
    Option<Option<u64>>,
);

#[derive(Debug, Clone, PartialEq, Default)]
struct Facts {
    in_band_error: bool,
    finish_reason: Option<FinishReason>,
    usage: Option<UsageFacts>,
    model: Option<String>,
    system_fingerprint: Option<String>,
}

impl Facts {
    fn absorb(&mut self, p: RefProbe) {
        if p.error.is_some() {
            self.in_band_error = true;
        }
        for c in p.choices.into_iter().flatten() {
            if let Some(r) = c.finish_reason {
                self.finish_reason = Some(r);
            }
        }
        if let Some(u) = p.usage {
            self.usage = Some((
                u.prompt_tokens,
                u.completion_tokens,
                u.total_tokens,
                u.prompt_cache_hit_tokens,
                u.prompt_cache_miss_tokens,
                u.prompt_tokens_details.map(|d| d.cached_tokens),
                u.completion_tokens_details.map(|d| d.reasoning_tokens),
            ));
        }
        if p.model.is_some() {
            self.model = p.model;
        }
        if p.system_fingerprint.is_some() {
            self.system_fingerprint = p.system_fingerprint;
        }
    }

    fn verdict(&self) -> Result<(), FailureClass> {
        if self.in_band_error {
            Err(FailureClass::InBandError)
        } else if self.finish_reason == Some(FinishReason::InsufficientSystemResource) {
            Err(FailureClass::InsufficientResources)
        } else {
            Ok(())
        }
    }
}

/// The former JSON verdict (whole body), with the facts it extracted.
fn reference_json(body: &[u8]) -> (Result<(), FailureClass>, Facts) {
    let mut facts = Facts::default();
    if body.iter().all(u8::is_ascii_whitespace) {
        return (Err(FailureClass::EmptyBody), facts);
    }
    // Two fixes over the former probe: only an object is probed (serde reads an array's
    // elements as a struct's fields in order), and a field of another type does not hide a
    // cut: the whole document must still parse.
    let whole = || match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
        Ok(_) => Ok(()),
        Err(_) => Err(FailureClass::Incomplete),
    };
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return (whole(), facts);
    }
    match serde_json::from_slice::<RefProbe>(body) {
        Ok(p) => {
            facts.absorb(p);
            (facts.verdict(), facts)
        }
        Err(e) if e.classify() == serde_json::error::Category::Data => (whole(), facts),
        Err(_) => (Err(FailureClass::Incomplete), facts),
    }
}

fn facts_of(s: &tower_deepseek_core::classify::ResponseSummary) -> Facts {
    Facts {
        in_band_error: s.in_band_error,
        finish_reason: s.finish_reason.clone(),
        usage: s.usage.as_ref().map(|u| {
            (
                u.prompt_tokens,
                u.completion_tokens,
                u.total_tokens,
                u.prompt_cache_hit_tokens,
                u.prompt_cache_miss_tokens,
                u.prompt_tokens_details.as_ref().map(|d| d.cached_tokens),
                u.completion_tokens_details
                    .as_ref()
                    .map(|d| d.reasoning_tokens),
            )
        }),
        model: s.model.clone(),
        system_fingerprint: s.system_fingerprint.clone(),
    }
}

/// Classifies with the summary filled in, and checks on the way that a verdict-only
/// classifier (`summary(false)`) reaches the same verdict, finish reason and error flag.
fn classify(content_type: &str, chunks: &[&[u8]]) -> (Result<(), FailureClass>, Facts) {
    let mut h = HeaderMap::new();
    h.insert("content-type", content_type.parse().unwrap());
    let run = |classifier: Classifier| {
        let ClassifiedResponse::RequiresEos(mut eos) = classifier.classify_head(StatusCode::OK, &h)
        else {
            panic!("a 2xx JSON or SSE body is read")
        };
        for c in chunks {
            eos.on_data(&Bytes::copy_from_slice(c));
        }
        let verdict = eos.finish();
        (verdict, facts_of(eos.summary()))
    };
    let full = run(Classifier::new());
    let (verdict, lean) = run(Classifier::new().summary(false));
    assert_eq!(verdict, full.0, "verdict-only classifier disagrees");
    assert_eq!(
        (lean.in_band_error, &lean.finish_reason),
        (full.1.in_band_error, &full.1.finish_reason)
    );
    assert_eq!(
        (lean.usage, lean.model, lean.system_fingerprint),
        (None, None, None)
    );
    full
}

fn classify_json(body: &[u8], cuts: &[usize]) -> (Result<(), FailureClass>, Facts) {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
    points.sort_unstable();
    points.dedup();
    let mut chunks = Vec::new();
    let mut start = 0;
    for p in points.into_iter().chain([body.len()]) {
        chunks.push(&body[start..p]);
        start = p;
    }
    classify("application/json", &chunks)
}

// --- random JSON, written with random whitespace and escapes ---

#[derive(Debug, Clone)]
enum J {
    Null,
    Bool(bool),
    Num(&'static str),
    Str(String),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
}

const KEYS: &[&str] = &[
    "error",
    "choices",
    "usage",
    "model",
    "system_fingerprint",
    "finish_reason",
    "message",
    "content",
    "delta",
    "index",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "prompt_cache_hit_tokens",
    "prompt_cache_miss_tokens",
    "prompt_tokens_details",
    "completion_tokens_details",
    "cached_tokens",
    "reasoning_tokens",
    "id",
    "x",
];

const NUMS: &[&str] = &[
    "0",
    "9",
    "10",
    "1234567",
    "-1",
    "1.5",
    "1e3",
    "-0",
    "18446744073709551615",
    "18446744073709551616",
];

const STRS: &[&str] = &[
    "stop",
    "length",
    "tool_calls",
    "content_filter",
    "insufficient_system_resource",
    "deepseek-chat",
    "fp_a49d71b8a1",
    "",
    "he wrote {\"error\":{\"message\":\"x\"}} in a string",
    "\"finish_reason\":\"insufficient_system_resource\"",
    "caf\u{e9} \u{1f600} \\ / \n\t end",
    "a\u{0}b",
];

fn string() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => proptest::sample::select(STRS).prop_map(str::to_owned),
        1 => "[a-z\"\\\\{}:, \u{e9}]{0,10}",
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => proptest::sample::select(KEYS).prop_map(str::to_owned),
        1 => string(),
    ]
}

fn value() -> impl Strategy<Value = J> {
    let leaf = prop_oneof![
        Just(J::Null),
        any::<bool>().prop_map(J::Bool),
        proptest::sample::select(NUMS).prop_map(J::Num),
        string().prop_map(J::Str),
    ];
    leaf.prop_recursive(4, 48, 5, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(J::Arr),
            proptest::collection::vec((key(), inner), 0..6).prop_map(J::Obj),
        ]
    })
}

fn opt_field<T: Strategy<Value = J> + 'static>(
    name: &'static str,
    v: T,
) -> BoxedStrategy<Option<(String, J)>> {
    proptest::option::weighted(0.8, v.prop_map(move |v| (name.to_owned(), v))).boxed()
}

/// A chat answer as DeepSeek writes it, with random contents and occasional oddities.
fn answer() -> impl Strategy<Value = J> {
    let reason = prop_oneof![
        Just(J::Null),
        proptest::sample::select(&STRS[..5]).prop_map(|s| J::Str(s.to_owned())),
        string().prop_map(J::Str),
    ];
    let choice =
        (string(), reason, proptest::option::of(value())).prop_map(|(content, reason, extra)| {
            let mut fields = vec![
                ("index".to_owned(), J::Num("0")),
                (
                    "message".to_owned(),
                    J::Obj(vec![
                        ("role".to_owned(), J::Str("assistant".to_owned())),
                        ("content".to_owned(), J::Str(content)),
                    ]),
                ),
                ("finish_reason".to_owned(), reason),
            ];
            if let Some(v) = extra {
                fields.push(("logprobs".to_owned(), v));
            }
            J::Obj(fields)
        });
    let num = || proptest::sample::select(NUMS).prop_map(J::Num);
    let usage = (
        num(),
        num(),
        num(),
        proptest::option::of(num()),
        proptest::option::of((num()).prop_map(|n| J::Obj(vec![("cached_tokens".to_owned(), n)]))),
    )
        .prop_map(|(p, c, t, hit, details)| {
            let mut f = vec![
                ("prompt_tokens".to_owned(), p),
                ("completion_tokens".to_owned(), c),
                ("total_tokens".to_owned(), t),
            ];
            if let Some(h) = hit {
                f.push(("prompt_cache_hit_tokens".to_owned(), h));
            }
            if let Some(d) = details {
                f.push(("prompt_tokens_details".to_owned(), d));
            }
            J::Obj(f)
        });
    (
        opt_field("id", string().prop_map(J::Str)),
        opt_field("model", string().prop_map(J::Str)),
        opt_field(
            "system_fingerprint",
            prop_oneof![Just(J::Null), string().prop_map(J::Str)],
        ),
        opt_field(
            "choices",
            proptest::collection::vec(choice, 0..3).prop_map(J::Arr),
        ),
        opt_field("usage", prop_oneof![4 => usage, 1 => Just(J::Null)]),
        proptest::option::weighted(0.15, prop_oneof![Just(J::Null), value()]),
        proptest::option::weighted(0.2, (key(), value())),
    )
        .prop_map(|(id, model, fp, choices, usage, error, extra)| {
            let mut f: Vec<(String, J)> = [id, model, fp, choices, usage]
                .into_iter()
                .flatten()
                .collect();
            if let Some(e) = error {
                f.push(("error".to_owned(), e));
            }
            if let Some(kv) = extra {
                f.push(kv);
            }
            J::Obj(f)
        })
}

/// Long text as answers carry it: words, the classifier's key names (quoted, as JSON writes
/// them inside a string), braces, escapes, control characters, CJK and emoji.
fn long_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => proptest::sample::select(&[
            "Tower middleware composes; ",
            "把限流放在重试层之外。",
            "\"error\": {\"message\": \"x\"}, ",
            "\"finish_reason\":\"insufficient_system_resource\"",
            "\"usage\":{\"total_tokens\":1}",
            "{\"choices\":[{\"finish_reason\":\"stop\"}]}",
            "\n\tline\r\n",
            "C:\\tmp\\x ",
            "\u{1f600} ",
            "\u{0} \u{1f}",
            "} ] \" , : ",
        ][..]).prop_map(str::to_owned),
        1 => string(),
    ];
    proptest::collection::vec(piece, 0..120).prop_map(|v| v.concat())
}

/// A value nested `depth` times in arrays and objects (around the serde scanner's and the
/// light check's depth limits).
fn nested(depth: usize, leaf: J) -> J {
    (0..depth).fold(leaf, |v, i| {
        if i % 2 == 0 {
            J::Arr(vec![v])
        } else {
            J::Obj(vec![("error".to_owned(), v)])
        }
    })
}

/// A chat answer of up to a few KB: long content and reasoning, nested extras.
fn long_answer() -> impl Strategy<Value = J> {
    (answer(), long_text(), long_text(), 0usize..80, value()).prop_map(
        |(a, content, reasoning, depth, leaf)| {
            let J::Obj(mut fields) = a else {
                unreachable!()
            };
            for (k, v) in &mut fields {
                if k == "choices" {
                    if let J::Arr(choices) = v {
                        for c in choices {
                            if let J::Obj(cf) = c {
                                // After the first field, when there is one.
                                let at = cf.len().min(1);
                                cf.insert(
                                    at,
                                    (
                                        "message".to_owned(),
                                        J::Obj(vec![
                                            ("role".to_owned(), J::Str("assistant".to_owned())),
                                            ("content".to_owned(), J::Str(content.clone())),
                                            (
                                                "reasoning_content".to_owned(),
                                                J::Str(reasoning.clone()),
                                            ),
                                        ]),
                                    ),
                                );
                            }
                        }
                    }
                }
            }
            fields.insert(0, ("logprobs".to_owned(), nested(depth, leaf)));
            J::Obj(fields)
        },
    )
}

fn body() -> impl Strategy<Value = J> {
    prop_oneof![
        4 => answer(),
        2 => proptest::collection::vec((key(), value()), 0..6).prop_map(J::Obj),
        1 => value(),
    ]
}

/// Writes `v` as JSON, drawing whitespace and escaping choices from `style`.
struct Writer<'a> {
    out: String,
    style: std::iter::Cycle<std::slice::Iter<'a, u8>>,
    newlines: bool,
    /// Whether characters that need no escape are escaped now and then (half the bodies:
    /// the others take the classifier's fast path more often).
    escapes: bool,
}

impl Writer<'_> {
    fn pick(&mut self) -> u8 {
        self.style.next().copied().unwrap_or(0)
    }

    fn ws(&mut self) {
        let ws: &[&str] = if self.newlines {
            &["", "", "", " ", "\n", "\t", "\r\n", "  "]
        } else {
            &["", "", "", " ", "\t", "  ", "", " "]
        };
        let w = ws[usize::from(self.pick()) % ws.len()];
        self.out.push_str(w);
    }

    fn string(&mut self, s: &str) {
        self.out.push('"');
        for ch in s.chars() {
            let escape_anyway = self.escapes && self.pick() % 8 == 0;
            match ch {
                '"' => self.out.push_str("\\\""),
                '\\' => self.out.push_str("\\\\"),
                '\n' => self.out.push_str("\\n"),
                '\t' => self.out.push_str("\\t"),
                c if (c as u32) < 0x20 || escape_anyway => {
                    let mut buf = [0u16; 2];
                    for u in c.encode_utf16(&mut buf) {
                        self.out.push_str(&format!("\\u{u:04x}"));
                    }
                }
                '/' if self.pick() % 2 == 0 => self.out.push_str("\\/"),
                c => self.out.push(c),
            }
        }
        self.out.push('"');
    }

    fn value(&mut self, v: &J) {
        self.ws();
        match v {
            J::Null => self.out.push_str("null"),
            J::Bool(b) => self.out.push_str(if *b { "true" } else { "false" }),
            J::Num(n) => self.out.push_str(n),
            J::Str(s) => self.string(s),
            J::Arr(items) => {
                self.out.push('[');
                for (i, it) in items.iter().enumerate() {
                    if i > 0 {
                        self.out.push(',');
                    }
                    self.value(it);
                }
                self.ws();
                self.out.push(']');
            }
            J::Obj(fields) => {
                self.out.push('{');
                for (i, (k, v)) in fields.iter().enumerate() {
                    if i > 0 {
                        self.out.push(',');
                    }
                    self.ws();
                    self.string(k);
                    self.ws();
                    self.out.push(':');
                    self.value(v);
                }
                self.ws();
                self.out.push('}');
            }
        }
        self.ws();
    }
}

fn write(v: &J, style: &[u8], newlines: bool) -> String {
    let zero = [0u8];
    let style = if style.is_empty() { &zero[..] } else { style };
    let mut w = Writer {
        out: String::new(),
        style: style.iter().cycle(),
        newlines,
        escapes: style[0] % 2 == 0,
    };
    w.value(v);
    w.out
}

fn check_json(body: &[u8], cuts: &[usize]) -> Result<(), TestCaseError> {
    let expected = reference_json(body);
    prop_assert_eq!(
        classify_json(body, &[]),
        expected.clone(),
        "whole: {:?}",
        String::from_utf8_lossy(body)
    );
    prop_assert_eq!(
        classify_json(body, cuts),
        expected,
        "split: {:?}",
        String::from_utf8_lossy(body)
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(768))]

    #[test]
    fn json_verdict_and_summary_match_the_serde_reference(
        v in body(),
        style in proptest::collection::vec(any::<u8>(), 1..64),
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
    ) {
        let text = write(&v, &style, true);
        check_json(text.as_bytes(), &cuts)?;
    }

    #[test]
    fn every_truncation_matches_the_serde_reference(
        v in answer(),
        style in proptest::collection::vec(any::<u8>(), 1..16),
    ) {
        let text = write(&v, &style, true);
        let bytes = text.as_bytes();
        for end in 0..bytes.len() {
            let cut = &bytes[..end];
            prop_assert_eq!(classify_json(cut, &[end / 2]), reference_json(cut), "cut at {}: {:?}", end, String::from_utf8_lossy(cut));
        }
    }

    #[test]
    fn mutated_bodies_match_the_serde_reference(
        v in body(),
        style in proptest::collection::vec(any::<u8>(), 1..16),
        edits in proptest::collection::vec((any::<usize>(), proptest::sample::select(&b"{}[]\",:\\ 0en\x80\xff"[..])), 1..3),
    ) {
        let mut bytes = write(&v, &style, true).into_bytes();
        for (at, b) in edits {
            if !bytes.is_empty() {
                let i = at % bytes.len();
                bytes[i] = b;
            }
        }
        check_json(&bytes, &[bytes.len() / 3])?;
    }

    #[test]
    fn long_answers_match_the_serde_reference_whole_split_and_cut(
        v in long_answer(),
        style in proptest::collection::vec(any::<u8>(), 1..32),
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
        ends in proptest::collection::vec(any::<usize>(), 1..8),
    ) {
        let text = write(&v, &style, style[0] % 3 == 0);
        let bytes = text.as_bytes();
        check_json(bytes, &cuts)?;
        for end in ends {
            let cut = &bytes[..end % (bytes.len() + 1)];
            prop_assert_eq!(classify_json(cut, &cuts), reference_json(cut), "cut: {:?}", String::from_utf8_lossy(cut));
        }
    }

    #[test]
    fn arbitrary_bytes_match_the_serde_reference(
        bytes in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..64),
            proptest::collection::vec(proptest::sample::select(&b"{}[]\",:\\ \t\n0123456789.eE+-truefalsn\x00\x1f\x7f\xc3\xa9u"[..]), 0..64),
        ],
        prefix in proptest::sample::select(&["", "{", "{\"choices\":[{\"finish_reason\":", "{\"usage\":", "{\"error\":", "{\"model\":"][..]),
    ) {
        let mut body = prefix.as_bytes().to_vec();
        body.extend_from_slice(&bytes);
        check_json(&body, &[body.len() / 2])?;
    }

    #[test]
    fn sse_event_summary_matches_the_serde_reference(
        v in body(),
        style in proptest::collection::vec(any::<u8>(), 1..32),
    ) {
        // One event (no raw newline inside, as SSE requires), then [DONE]: the event is probed
        // and absorbed when it parses. An event that is not a JSON object (every chat stream
        // event is one) makes the stream incomplete; an object of another shape does not.
        let text = write(&v, &style, false);
        let stream = format!("data: {text}\n\ndata: [DONE]\n\n");
        let mut expected = Facts::default();
        if text.trim_start().starts_with('{') {
            if let Ok(p) = serde_json::from_str::<RefProbe>(&text) {
                expected.absorb(p);
            }
        }
        let object = serde_json::from_str::<serde_json::Value>(&text).is_ok_and(|v| v.is_object());
        let (verdict, facts) = classify("text/event-stream", &[stream.as_bytes()]);
        if object {
            prop_assert_eq!(verdict, expected.verdict());
            prop_assert_eq!(facts, expected);
        } else {
            prop_assert_eq!(verdict, Err(FailureClass::Incomplete), "{}", text);
        }
    }
}

#[test]
fn hand_picked_bodies_match_the_serde_reference() {
    let bodies: &[&str] = &[
        "",
        " \n\t\r\n",
        "null",
        "[1,2,3]",
        // a five-element array deserializes as the probe struct (serde's sequence form)
        r#"[1,null,null,null,null]"#,
        r#"[null,[{"finish_reason":"insufficient_system_resource"}],null,"m",null]"#,
        r#"{"error":{"message":"Server Error"}}"#,
        r#"{"\u0065rror":1}"#,
        r#"{"error":null,"choices":[]}"#,
        r#"{"choices":[{"message":{"content":"{\"error\":1}"},"finish_reason":"stop"}]}"#,
        r#"{"choices":[{"finish_reason":"insufficient_system_resource"},{"finish_reason":null}]}"#,
        r#"{"choices":[{"finish_reason":"insufficient_system_resource"},{"finish_reason":"stop"}]}"#,
        r#"{"choices":[["insufficient_system_resource"]]}"#,
        r#"{"choices":[[]]}"#,
        r#"{"choices":{"finish_reason":"stop"}}"#,
        r#"{"model":5,"choices":["#,
        r#"{"model":"a","model":"b"}"#,
        r#"{"model":"deep\u0073eek","system_fingerprint":"fp\/1"}"#,
        r#"{"model":"\ud800"}"#,
        r#"{"m\ud800":1}"#,
        r#"{"usage":{"total_tokens":-1}}"#,
        r#"{"usage":{"total_tokens":1.0}}"#,
        r#"{"usage":{"prompt_tokens_details":{"cached_tokens":3,"reasoning_tokens":2}}}"#,
        r#"{"choices":[{"finish_reason":"stop"}]} trailing"#,
        r#"{"choices":[{"finish_reason":"stop"}]}{}"#,
        r#"{"choices":[{"finish_reason":"stop"}],}"#,
        "{\"model\":\"caf\u{e9}\"}",
    ];
    for b in bodies {
        assert_eq!(
            classify_json(b.as_bytes(), &[]),
            reference_json(b.as_bytes()),
            "{b}"
        );
    }
    // invalid UTF-8 in a key, in a value that is kept, in one that is skipped
    for b in [
        &b"{\"mo\xffdel\":1}"[..],
        &b"{\"model\":\"\xff\"}"[..],
        &b"{\"id\":\"\xff\"}"[..],
    ] {
        assert_eq!(classify_json(b, &[]), reference_json(b));
    }
}
