//! The end-of-body classifier (`EosClassifier`), for JSON and SSE answers: never panics, and
//! gives the same verdict and summary whatever the chunking of the same body.
#![no_main]

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use libfuzzer_sys::fuzz_target;
use tower_deepseek_core::classify::{ClassifiedResponse, Classifier};

mod split;

fn run(content_type: &str, chunks: &[&[u8]], summary: bool) -> String {
    let mut h = HeaderMap::new();
    h.insert("content-type", content_type.parse().unwrap());
    let ClassifiedResponse::RequiresEos(mut eos) = Classifier::new()
        .summary(summary)
        .classify_head(StatusCode::OK, &h)
    else {
        panic!("a 2xx JSON or SSE body is read")
    };
    for c in chunks {
        eos.on_data(&Bytes::copy_from_slice(c));
    }
    let verdict = eos.finish();
    format!("{verdict:?} {:?} {}", eos.summary(), eos.has_content())
}

fuzz_target!(|data: &[u8]| {
    let (chunks, payload) = split::chunked(data);
    for ct in ["application/json", "text/event-stream"] {
        let whole = run(ct, &[payload], true);
        assert_eq!(
            whole,
            run(ct, &chunks, true),
            "{ct}: chunking changed the verdict"
        );
        // The verdict-only classifier agrees on the verdict.
        let lean = run(ct, &chunks, false);
        assert_eq!(
            whole.split(' ').next(),
            lean.split(' ').next(),
            "{ct}: summary(false) changed the verdict"
        );
    }
});
