//! One body's verdict, shared by the layers that need it.

use std::fmt;
use std::sync::{Arc, OnceLock};

use super::*;

/// How a response body ended, as the layer that classified it saw it: the verdict and what
/// was learned on the way. Read from a [`SharedOutcome`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct BodyOutcome {
    /// The end-of-body verdict ([`EosClassifier::finish`] or [`EosClassifier::fail`]).
    pub result: Result<(), FailureClass>,
    /// What the classifier learned (usage, model, finish reason, counters).
    pub summary: ResponseSummary,
}

/// One response body's classification, shared by the layers that need it, so that the body
/// is parsed once however many layers classify it.
///
/// A response extension. The innermost layer that classifies the body puts an empty slot in
/// the response's extensions when it sees the head, and fills it when the body ends (complete
/// or failed), before that end reaches the layers above it; a layer above that finds the slot
/// reads it at the end instead of running a classifier of its own. A body dropped before its
/// end leaves the slot empty. Only the layer that inserted the slot sets it. A layer between
/// that may change the verdict (one that rewrites or cuts the body, like a content filter)
/// removes the slot from the response, so that the layers above classify what it sends.
///
/// Layers publish it when a layer above asks for call facts
/// ([`CollectCallFacts`](crate::meta::CollectCallFacts)), so that a layer alone pays nothing
/// for it. The verdict is the publisher's: with classifiers configured differently (say a
/// smaller [`Classifier::max_json_inspect`]) the layers above get the publisher's judgement.
///
/// ```
/// use tower_deepseek_core::classify::{FailureClass, ResponseSummary, SharedOutcome};
///
/// let slot = SharedOutcome::new();
/// let seen_above = slot.clone(); // what a layer above finds in the response's extensions
/// assert!(seen_above.get().is_none()); // the body has not ended yet
/// slot.set(Err(FailureClass::InBandError), ResponseSummary::default());
/// assert_eq!(seen_above.get().unwrap().result, Err(FailureClass::InBandError));
/// ```
#[derive(Clone, Default)]
pub struct SharedOutcome(Arc<OnceLock<BodyOutcome>>);

impl SharedOutcome {
    /// An empty slot.
    pub fn new() -> Self {
        Self::default()
    }

    /// The outcome, once the body has ended.
    pub fn get(&self) -> Option<&BodyOutcome> {
        self.0.get()
    }

    /// Fills the slot; `false` if it was already filled (the first outcome stays).
    pub fn set(&self, result: Result<(), FailureClass>, summary: ResponseSummary) -> bool {
        self.0.set(BodyOutcome { result, summary }).is_ok()
    }
}

impl fmt::Debug for SharedOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SharedOutcome").field(&self.get()).finish()
    }
}
