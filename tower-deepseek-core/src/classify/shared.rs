//! One body's verdict, shared by the layers that need it, and never about other bytes.
//!
//! The lowest layer that classifies an answer (the publisher) puts a [`SharedOutcome`] slot in
//! the response's extensions and fills it when the body ends, with its verdict and the
//! [`FrameTrace`] of the data frames it passed up. A layer above (a reader) keeps the trace of
//! the frames it sees, in an [`EndJudge`], and takes the shared verdict only when the two traces
//! are the same buffers in the same order. Any layer in between that rewrites, cuts, splits or
//! merges the body, ours or a user's that knows nothing of this protocol, makes new buffers, so
//! the traces differ and the reader classifies the bytes it saw itself.
//!
//! Why buffer identity is exact: both traces hold their `Bytes` handles until the comparison,
//! so no buffer they name can be freed and reused in between, and a live `Bytes` is immutable.
//! Two live handles with the same address and length see the same bytes.

use std::error::Error as StdError;
use std::fmt;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use super::*;

/// How a response body ended, as the layer that classified it saw it: the verdict and what
/// was learned on the way. Read from a [`SharedOutcome`] (through [`EndJudge`]).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct BodyOutcome {
    /// The end-of-body verdict ([`EosClassifier::finish`] or [`EosClassifier::fail`]).
    pub result: Result<(), FailureClass>,
    /// What the classifier learned (usage, model, finish reason, counters).
    pub summary: ResponseSummary,
}

/// The data frames a body passed, as shared handles (no copy): which bytes a verdict is about.
///
/// Empty frames are skipped. One frame (most JSON answers) is held without allocating.
///
/// ```
/// use bytes::Bytes;
/// use tower_deepseek_core::classify::FrameTrace;
///
/// let frame = Bytes::from_static(b"{\"id\":1}");
/// let (mut below, mut above) = (FrameTrace::new(), FrameTrace::new());
/// below.record(&frame);
/// above.record(&frame.clone()); // passed up unchanged: the same buffer
/// assert!(below.same_frames(&above));
///
/// let mut rewritten = FrameTrace::new();
/// rewritten.record(&Bytes::copy_from_slice(&frame)); // equal bytes, another buffer
/// assert!(!below.same_frames(&rewritten));
/// ```
#[derive(Clone, Default)]
pub struct FrameTrace {
    first: Option<Bytes>,
    rest: Vec<Bytes>,
}

impl FrameTrace {
    /// An empty trace.
    pub fn new() -> Self {
        Self::default()
    }

    /// Notes one data frame as it passes (a handle, not a copy).
    #[inline]
    pub fn record(&mut self, chunk: &Bytes) {
        if chunk.is_empty() {
            return;
        }
        if self.first.is_none() {
            self.first = Some(chunk.clone());
        } else {
            self.rest.push(chunk.clone());
        }
    }

    /// The number of (non-empty) frames noted.
    pub fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }

    /// Whether no frame was noted.
    pub fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    /// The frames, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Bytes> {
        self.first.iter().chain(self.rest.iter())
    }

    /// Whether `other` holds the very same buffers, in the same order (address and length of
    /// each frame): the same bytes, passed up unchanged.
    pub fn same_frames(&self, other: &FrameTrace) -> bool {
        self.len() == other.len()
            && self
                .iter()
                .zip(other.iter())
                .all(|(a, b)| a.as_ptr() == b.as_ptr() && a.len() == b.len())
    }
}

impl fmt::Debug for FrameTrace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameTrace")
            .field("frames", &self.len())
            .field("bytes", &self.iter().map(Bytes::len).sum::<usize>())
            .finish()
    }
}

#[derive(Debug)]
struct Published {
    outcome: BodyOutcome,
    frames: FrameTrace,
}

/// One response body's classification, shared by the layers that need it, so that the body
/// is parsed once however many layers classify it: a response extension.
///
/// The innermost layer that classifies the body (the publisher) puts an empty slot in the
/// response's extensions when it sees the head, and [publishes](Self::publish) into it when the
/// body ends (complete or failed), before that end reaches the layers above, with the
/// [`FrameTrace`] of what it passed up. A body dropped before its end leaves the slot empty.
/// Only the layer that inserted the slot fills it.
///
/// A layer above reads it through an [`EndJudge`], which takes the verdict only when it is
/// about the very frames that layer saw ([`verdict_for`](Self::verdict_for)); otherwise (a
/// layer in between rewrote or cut the body, the body below did not end) it classifies the
/// frames itself. No layer has to remove the slot when it changes the body, and a layer that
/// knows nothing of it cannot make the layers above act on a verdict about other bytes.
///
/// Layers publish it when a layer above asks for call facts
/// ([`CollectCallFacts`](crate::protocol::CollectCallFacts)), so that a layer alone pays nothing
/// for it. The verdict is the publisher's: with classifiers configured differently (say a
/// smaller [`Classifier::max_json_inspect`]) the layers above get the publisher's judgement.
///
/// ```
/// use bytes::Bytes;
/// use tower_deepseek_core::classify::{FailureClass, FrameTrace, ResponseSummary, SharedOutcome};
///
/// let slot = SharedOutcome::new();
/// let seen_above = slot.clone(); // what a layer above finds in the response's extensions
/// let frame = Bytes::from_static(b"{\"error\":{}}");
/// let (mut passed, mut seen) = (FrameTrace::new(), FrameTrace::new());
/// passed.record(&frame);
/// seen.record(&frame);
/// assert!(seen_above.verdict_for(&seen).is_none()); // the body has not ended yet
/// slot.publish(Err(FailureClass::InBandError), ResponseSummary::default(), passed);
/// let outcome = seen_above.verdict_for(&seen).unwrap();
/// assert_eq!(outcome.result, Err(FailureClass::InBandError));
/// // Above a layer that rewrote the body, the verdict is not there.
/// let mut other = FrameTrace::new();
/// other.record(&Bytes::from_static(b"{\"choices\":[]}"));
/// assert!(seen_above.verdict_for(&other).is_none());
/// ```
#[derive(Clone, Default)]
pub struct SharedOutcome(Arc<OnceLock<Published>>);

impl SharedOutcome {
    /// An empty slot.
    pub fn new() -> Self {
        Self::default()
    }

    /// The publisher's side: fills the slot with the verdict on `frames`, the data frames it
    /// passed up. `false` if it was already filled (the first outcome stays).
    pub fn publish(
        &self,
        result: Result<(), FailureClass>,
        summary: ResponseSummary,
        frames: FrameTrace,
    ) -> bool {
        self.0
            .set(Published {
                outcome: BodyOutcome { result, summary },
                frames,
            })
            .is_ok()
    }

    /// The outcome, if the body has ended below and `seen` are the very frames the publisher
    /// passed up. `None` otherwise: then the verdict is not about the bytes `seen` names.
    pub fn verdict_for(&self, seen: &FrameTrace) -> Option<&BodyOutcome> {
        self.0
            .get()
            .filter(|p| p.frames.same_frames(seen))
            .map(|p| &p.outcome)
    }

    /// Whether the publisher has filled the slot (its body ended).
    pub fn is_published(&self) -> bool {
        self.0.get().is_some()
    }

    /// The publisher's outcome, whatever bytes it is about: for tests and diagnostics. A layer
    /// that acts on the verdict reads it with [`verdict_for`](Self::verdict_for) or an
    /// [`EndJudge`].
    pub fn publisher_outcome(&self) -> Option<&BodyOutcome> {
        self.0.get().map(|p| &p.outcome)
    }
}

impl fmt::Debug for SharedOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SharedOutcome")
            .field(&self.publisher_outcome())
            .finish()
    }
}

/// How a layer judges an answer's end: by the verdict a layer below shares, when that verdict
/// is about exactly the frames this layer saw, else by its own classifier, run over the frames
/// it kept (or fed as they passed, without a slot).
///
/// With a slot, frames are only noted as they pass ([`on_data`](Self::on_data), a handle each,
/// no parse); [`on_data_now`](Self::on_data_now) also feeds the own classifier at once, for a
/// layer that must decide before the end (say, on the first event).
///
/// ```
/// use bytes::Bytes;
/// use http::{HeaderMap, StatusCode};
/// use tower_deepseek_core::classify::{
///     ClassifiedResponse, Classifier, EndJudge, FailureClass, FrameTrace, ResponseSummary,
///     SharedOutcome,
/// };
///
/// let eos = || match Classifier::new().classify_head(StatusCode::OK, &HeaderMap::new()) {
///     ClassifiedResponse::RequiresEos(eos) => eos,
///     ClassifiedResponse::Ready(_) => unreachable!(),
/// };
/// let answer = Bytes::from_static(br#"{"choices":[{"finish_reason":"stop"}]}"#);
///
/// // Below: the publisher passed the whole answer up and judged it a success.
/// let slot = SharedOutcome::new();
/// let mut passed = FrameTrace::new();
/// passed.record(&answer);
/// slot.publish(Ok(()), ResponseSummary::default(), passed);
///
/// // Above, the same frame: the shared verdict, no parse.
/// let mut judge = EndJudge::new(eos(), Some(slot.clone()));
/// judge.on_data(&answer);
/// assert_eq!(judge.finish(), Ok(()));
/// assert!(judge.used_shared());
///
/// // Above a layer that cut it in half: its own verdict on what it saw.
/// let mut judge = EndJudge::new(eos(), Some(slot));
/// judge.on_data(&Bytes::copy_from_slice(&answer[..10]));
/// assert_eq!(judge.finish(), Err(FailureClass::Incomplete));
/// assert!(!judge.used_shared());
/// ```
#[derive(Debug)]
pub struct EndJudge {
    eos: EosClassifier,
    shared: Option<Box<Reader>>,
}

#[derive(Debug)]
struct Reader {
    slot: SharedOutcome,
    seen: FrameTrace,
    /// How many of `seen`'s frames the own classifier has been fed.
    fed: usize,
    /// The shared outcome was taken (at the end).
    accepted: Option<BodyOutcome>,
    /// The end was judged by the own classifier: the slot is not looked at again, so that a
    /// verdict published later cannot change an answer already given.
    own: bool,
}

impl EndJudge {
    /// Judges with `eos`, or by `shared` when it turns out to be about the same frames.
    pub fn new(eos: EosClassifier, shared: Option<SharedOutcome>) -> Self {
        Self {
            eos,
            shared: shared.map(|slot| {
                Box::new(Reader {
                    slot,
                    seen: FrameTrace::new(),
                    fed: 0,
                    accepted: None,
                    own: false,
                })
            }),
        }
    }

    /// Judges with `eos`, or by the [`SharedOutcome`] in `extensions` if a layer below put one
    /// there.
    pub fn from_extensions(eos: EosClassifier, extensions: &http::Extensions) -> Self {
        Self::new(eos, extensions.get::<SharedOutcome>().cloned())
    }

    /// Whether a shared slot is there to be read at the end.
    pub fn has_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// One data frame passes: noted (with a slot) or fed to the own classifier (without).
    #[inline]
    pub fn on_data(&mut self, chunk: &Bytes) {
        match &mut self.shared {
            Some(r) => r.seen.record(chunk),
            None => self.eos.on_data(chunk),
        }
    }

    /// One data frame passes and the own classifier reads it now (after any frame noted
    /// before), for a layer that decides before the end.
    pub fn on_data_now(&mut self, chunk: &Bytes) {
        if let Some(r) = &mut self.shared {
            r.seen.record(chunk);
            self.catch_up();
        } else {
            self.eos.on_data(chunk);
        }
    }

    /// The own classifier, as fed so far (by [`on_data_now`](Self::on_data_now), or by
    /// [`on_data`](Self::on_data) without a slot): for progress checks such as
    /// [`EosClassifier::has_content`].
    pub fn classifier(&self) -> &EosClassifier {
        &self.eos
    }

    fn catch_up(&mut self) {
        if let Some(r) = &mut self.shared {
            for f in r.seen.iter().skip(r.fed) {
                self.eos.on_data(f);
            }
            r.fed = r.seen.len();
        }
    }

    /// The body ended cleanly: the verdict. Idempotent.
    pub fn finish(&mut self) -> Result<(), FailureClass> {
        if let Some(r) = &mut self.shared {
            if let Some(o) = &r.accepted {
                return o.result.clone();
            }
            if !r.own {
                if let Some(o) = r.slot.verdict_for(&r.seen) {
                    r.accepted = Some(o.clone());
                    return o.result.clone();
                }
                r.own = true;
            }
        }
        self.catch_up();
        self.eos.finish()
    }

    /// Reading the body failed with `err`: the failure class. The shared one when the layer
    /// below failed on the same frames; else the own classifier's.
    pub fn fail(&mut self, err: &(dyn StdError + 'static)) -> FailureClass {
        if let Some(r) = &mut self.shared {
            if let Some(Err(c)) = r.accepted.as_ref().map(|o| &o.result) {
                return c.clone();
            }
            if !r.own {
                if let Some(o) = r.slot.verdict_for(&r.seen) {
                    if let Err(c) = &o.result {
                        let c = c.clone();
                        r.accepted = Some(o.clone());
                        return c;
                    }
                }
                r.own = true;
            }
        }
        self.catch_up();
        self.eos.fail(err)
    }

    /// Whether the verdict came from the layer below (after [`finish`](Self::finish) or
    /// [`fail`](Self::fail)).
    pub fn used_shared(&self) -> bool {
        self.shared.as_ref().is_some_and(|r| r.accepted.is_some())
    }

    /// What was learned: the shared summary when the verdict came from below, else the own
    /// classifier's.
    pub fn summary(&self) -> &ResponseSummary {
        match self.shared.as_ref().and_then(|r| r.accepted.as_ref()) {
            Some(o) => &o.summary,
            None => self.eos.summary(),
        }
    }

    /// Takes the summary out (see [`summary`](Self::summary)).
    pub fn take_summary(&mut self) -> ResponseSummary {
        match self.shared.as_mut().and_then(|r| r.accepted.as_mut()) {
            Some(o) => std::mem::take(&mut o.summary),
            None => self.eos.take_summary(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, StatusCode};

    fn eos(content_type: &str) -> EosClassifier {
        let mut h = HeaderMap::new();
        h.insert(http::header::CONTENT_TYPE, content_type.parse().unwrap());
        match Classifier::new().classify_head(StatusCode::OK, &h) {
            ClassifiedResponse::RequiresEos(e) => e,
            ClassifiedResponse::Ready(_) => unreachable!(),
        }
    }

    fn sse(events: &[&'static str]) -> Vec<Bytes> {
        events
            .iter()
            .map(|e| Bytes::from_static(e.as_bytes()))
            .collect()
    }

    const E1: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n";
    const E2: &str = "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n";
    const DONE: &str = "data: [DONE]\n\n";

    fn published(frames: &[Bytes], result: Result<(), FailureClass>) -> SharedOutcome {
        let slot = SharedOutcome::new();
        let mut t = FrameTrace::new();
        frames.iter().for_each(|f| t.record(f));
        let summary = ResponseSummary {
            events: 99,
            ..Default::default()
        };
        assert!(slot.publish(result, summary, t));
        slot
    }

    #[test]
    fn same_frames_take_the_shared_verdict_and_summary_without_parsing() {
        let frames = sse(&[E1, E2, DONE]);
        // The publisher says failure although the bytes are a whole stream: taking its
        // verdict shows that no own parse happened.
        let slot = published(&frames, Err(FailureClass::InBandError));
        let mut j = EndJudge::new(eos("text/event-stream"), Some(slot));
        for f in &frames {
            j.on_data(f);
        }
        assert_eq!(j.finish(), Err(FailureClass::InBandError));
        assert!(j.used_shared());
        assert_eq!(j.summary().events, 99);
        assert_eq!(
            j.classifier().summary().events,
            0,
            "the own classifier was not fed"
        );
        assert_eq!(j.take_summary().events, 99);
    }

    #[test]
    fn other_frames_are_judged_by_the_own_classifier() {
        let frames = sse(&[E1, E2, DONE]);
        let slot = published(&frames, Ok(()));
        // Same content, other buffers (a layer that copies): judged again, same answer.
        let mut j = EndJudge::new(eos("text/event-stream"), Some(slot.clone()));
        for f in &frames {
            j.on_data(&Bytes::copy_from_slice(f));
        }
        assert_eq!(j.finish(), Ok(()));
        assert!(!j.used_shared());
        assert_eq!(j.summary().events, 3);
        // The [DONE] dropped above the publisher: incomplete, whatever the publisher said.
        let mut j = EndJudge::new(eos("text/event-stream"), Some(slot.clone()));
        j.on_data(&frames[0]);
        j.on_data(&frames[1]);
        assert_eq!(j.finish(), Err(FailureClass::Incomplete));
        // A frame more than the publisher passed (one added above it).
        let mut j = EndJudge::new(eos("text/event-stream"), Some(slot));
        for f in &frames {
            j.on_data(f);
        }
        j.on_data(&Bytes::from_static(b"data: {\"error\":{}}\n\n"));
        assert_eq!(j.finish(), Err(FailureClass::InBandError));
        assert!(!j.used_shared());
    }

    #[test]
    fn an_unpublished_slot_is_judged_by_the_own_classifier() {
        let frames = sse(&[E1, E2, DONE]);
        let mut j = EndJudge::new(eos("text/event-stream"), Some(SharedOutcome::new()));
        for f in &frames {
            j.on_data(f);
        }
        assert_eq!(j.finish(), Ok(()));
        assert!(!j.used_shared());
        // Without a slot at all, frames are fed as they pass.
        let mut j = EndJudge::new(eos("text/event-stream"), None);
        j.on_data(&frames[0]);
        assert_eq!(j.classifier().summary().events, 1);
        assert!(!j.has_shared());
    }

    #[test]
    fn an_end_judged_here_stays_judged_here() {
        let frames = sse(&[E1, E2, DONE]);
        let slot = SharedOutcome::new();
        let mut j = EndJudge::new(eos("text/event-stream"), Some(slot.clone()));
        for f in &frames {
            j.on_data(f);
        }
        // Not published yet: judged by the own classifier.
        assert_eq!(j.finish(), Ok(()));
        // Published afterwards (about the same frames): the answer given does not change.
        let mut t = FrameTrace::new();
        frames.iter().for_each(|f| t.record(f));
        slot.publish(
            Err(FailureClass::InBandError),
            ResponseSummary::default(),
            t,
        );
        assert_eq!(j.finish(), Ok(()));
        assert!(!j.used_shared());
    }

    #[test]
    fn frames_read_now_are_not_fed_twice() {
        let frames = sse(&[E1, E2, DONE]);
        let mut j = EndJudge::new(eos("text/event-stream"), Some(SharedOutcome::new()));
        j.on_data(&frames[0]);
        j.on_data_now(&frames[1]);
        assert_eq!(j.classifier().summary().events, 2);
        j.on_data(&frames[2]);
        assert_eq!(j.finish(), Ok(()));
        assert_eq!(j.summary().events, 3);
    }

    #[test]
    fn a_failure_takes_only_a_shared_failure() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        let frames = sse(&[E1]);
        // Below failed on the same frames: its class.
        let slot = published(&frames, Err(FailureClass::Timeout));
        let mut j = EndJudge::new(eos("text/event-stream"), Some(slot));
        j.on_data(&frames[0]);
        assert_eq!(j.fail(&io), FailureClass::Timeout);
        assert!(j.used_shared());
        // Below ended well, yet this layer sees an error (one made in between): its own.
        let slot = published(&frames, Ok(()));
        let mut j = EndJudge::new(eos("text/event-stream"), Some(slot));
        j.on_data(&frames[0]);
        assert_eq!(j.fail(&io), FailureClass::Transport);
        assert!(!j.used_shared());
    }

    #[test]
    fn traces_compare_buffers_not_contents() {
        let whole = Bytes::from_static(b"abcdef");
        let (mut a, mut b) = (FrameTrace::new(), FrameTrace::new());
        a.record(&whole);
        // Split without copying: other frames (address and length), though the same memory.
        b.record(&whole.slice(..3));
        b.record(&whole.slice(3..));
        assert!(!a.same_frames(&b));
        // Empty frames do not count.
        let mut c = FrameTrace::new();
        c.record(&Bytes::new());
        c.record(&whole);
        c.record(&Bytes::new());
        assert!(a.same_frames(&c));
        assert_eq!(c.len(), 1);
    }
}
