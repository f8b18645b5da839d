//! Property tests for the SSE codec: any split of a recorded DeepSeek stream parses to the same
//! events as the whole, and encoding then parsing gives the payload back.

use bytes::Bytes;
use proptest::prelude::*;
use tower_deepseek_core::classify::{ClassifiedResponse, Classifier};
use tower_deepseek_core::sse::{SseEvent, SseParser, encode_event};

const RECORDED: &[u8] = include_bytes!("fixtures/deepseek-stream.sse");

/// The same stream with every line end as CRLF, and as bare CR.
fn variants() -> Vec<Vec<u8>> {
    let lf = RECORDED.to_vec();
    let text = String::from_utf8(lf.clone()).unwrap().replace("\r\n", "\n");
    vec![
        lf,
        text.replace('\n', "\r\n").into_bytes(),
        text.replace('\n', "\r").into_bytes(),
    ]
}

fn parse_with_splits(input: &[u8], cuts: &[usize]) -> (Vec<SseEvent>, u64, bool) {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    points.sort_unstable();
    points.dedup();
    let mut parser = SseParser::new();
    let mut events = Vec::new();
    let mut start = 0;
    for p in points.into_iter().chain([input.len()]) {
        if p < start {
            continue;
        }
        parser
            .push(&Bytes::copy_from_slice(&input[start..p]), |e| {
                events.push(e)
            })
            .unwrap();
        start = p;
    }
    (events, parser.comments_seen(), parser.has_partial())
}

#[test]
fn whole_stream_parses_as_recorded() {
    for input in variants() {
        let (events, comments, partial) = parse_with_splits(&input, &[]);
        // 1 role + 6 reasoning + 4 tool-call + 1 multi-line + 6 content + finish + usage + DONE
        assert_eq!(events.len(), 21);
        assert_eq!(comments, 3);
        assert!(!partial);
        assert!(events.last().unwrap().is_done());
        let multi = events
            .iter()
            .find(|e| e.event() == Some(b"message"))
            .unwrap();
        assert_eq!(multi.data().as_ref(), b"{\"note\":\n\"multi-line\"}");
        assert_eq!(multi.id(), Some(&b"42"[..]));
        // no comment ever became an event
        assert!(events.iter().all(|e| !e.data().starts_with(b"keep-alive")));
    }
}

#[test]
fn one_byte_at_a_time_gives_the_same_events() {
    for input in variants() {
        let (whole, ..) = parse_with_splits(&input, &[]);
        let cuts: Vec<usize> = (0..input.len()).collect();
        let (bytewise, comments, partial) = parse_with_splits(&input, &cuts);
        assert_eq!(whole, bytewise);
        assert_eq!(comments, 3);
        assert!(!partial);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_split_gives_the_same_events(
        variant in 0usize..3,
        cuts in proptest::collection::vec(any::<usize>(), 0..64),
    ) {
        let input = &variants()[variant];
        let (whole, wc, _) = parse_with_splits(input, &[]);
        let (split, sc, partial) = parse_with_splits(input, &cuts);
        prop_assert_eq!(whole, split);
        prop_assert_eq!(wc, sc);
        prop_assert!(!partial);
    }

    #[test]
    fn classifier_reads_usage_whatever_the_split(
        cuts in proptest::collection::vec(any::<usize>(), 0..32),
    ) {
        let mut headers = http::HeaderMap::new();
        headers.insert("content-type", "text/event-stream".parse().unwrap());
        let ClassifiedResponse::RequiresEos(mut eos) =
            Classifier::new().classify_head(http::StatusCode::OK, &headers) else { unreachable!() };
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (RECORDED.len() + 1)).collect();
        points.sort_unstable();
        let mut start = 0;
        for p in points.into_iter().chain([RECORDED.len()]) {
            if p >= start {
                eos.on_data(&Bytes::copy_from_slice(&RECORDED[start..p]));
                start = p;
            }
        }
        prop_assert_eq!(eos.finish(), Ok(()));
        let usage = eos.summary().usage.clone().unwrap();
        prop_assert_eq!(usage.total_tokens, 89);
        prop_assert_eq!(usage.reasoning_tokens(), 40);
    }

    #[test]
    fn encode_then_parse_round_trips(
        data in "[^\r]{0,200}",
        event in proptest::option::of("[a-z]{1,10}"),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut buf = bytes::BytesMut::new();
        encode_event(&mut buf, event.as_deref(), data.as_bytes());
        let wire = buf.freeze();
        let (events, ..) = parse_with_splits(&wire, &cuts);
        prop_assert_eq!(events.len(), 1);
        prop_assert_eq!(events[0].data().as_ref(), data.as_bytes());
        prop_assert_eq!(events[0].event(), event.as_deref().map(str::as_bytes));
    }
}
