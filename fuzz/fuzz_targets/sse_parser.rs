//! The SSE parser: never panics, and gives the same events, comments and trailing state
//! whatever the chunking of the same bytes.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tower_deepseek_core::sse::SseParser;

mod split;

type Parsed = (Vec<String>, u64, u64, bool, bool);

fn parse(chunks: &[&[u8]]) -> Parsed {
    let mut p = SseParser::with_max_event_size(1 << 20);
    let mut events = Vec::new();
    let mut failed = false;
    for c in chunks {
        if p.push(&Bytes::copy_from_slice(c), |e| {
            events.push(format!("{e:?}|{:?}", e.data()))
        })
        .is_err()
        {
            failed = true;
            break;
        }
    }
    (
        events,
        p.comments_seen(),
        p.events_seen(),
        p.has_partial(),
        failed,
    )
}

fuzz_target!(|data: &[u8]| {
    let (chunks, payload) = split::chunked(data);
    let whole = parse(&[payload]);
    let split = parse(&chunks);
    assert_eq!(whole, split, "chunking changed the parse");
    let bytewise: Vec<&[u8]> = payload.chunks(1).collect();
    assert_eq!(
        whole,
        parse(&bytewise),
        "one byte at a time changed the parse"
    );
});
