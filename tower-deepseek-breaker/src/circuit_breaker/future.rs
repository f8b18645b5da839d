//! The response future of the breaker services.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::Response;
use pin_project_lite::pin_project;
use tower_deepseek_core::BoxError;
use tower_deepseek_core::classify::{ClassifiedResponse, SharedOutcome};
use tower_deepseek_core::error::BreakerOpen;
use tower_deepseek_core::protocol::{BreakerStatus, CollectCallFacts, ShareVerdict};

use super::body::{EndObserver, ResponseBody};
use crate::state::Permit;

pin_project! {
    /// The response future of [`CircuitBreaker`](crate::CircuitBreaker) and
    /// [`KeyedCircuitBreaker`](crate::KeyedCircuitBreaker).
    ///
    /// Either an immediate [`BreakerOpen`] error, or the inner future. Dropping it before the
    /// response head arrives records nothing and gives a half-open probe slot back.
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Rejected { error: Option<BreakerOpen> },
        Called { #[pin] future: F, permit: Option<Permit>, asks: Asks },
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn rejected(error: BreakerOpen) -> Self {
        Self {
            kind: Kind::Rejected { error: Some(error) },
        }
    }

    /// `asks`: what the layers above asked this breaker for (see [`Asks`]).
    pub(crate) fn called(future: F, permit: Permit, asks: Asks) -> Self {
        Self {
            kind: Kind::Called {
                future,
                permit: Some(permit),
                asks,
            },
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rejected = matches!(self.kind, Kind::Rejected { .. });
        f.debug_struct("ResponseFuture")
            .field("rejected", &rejected)
            .finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<ResponseBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Rejected { error } => {
                let e = error
                    .take()
                    .expect("ResponseFuture polled after completion");
                Poll::Ready(Err(Box::new(e)))
            }
            KindProj::Called {
                future,
                permit,
                asks,
            } => {
                let result = ready!(future.poll(cx));
                let permit = permit
                    .take()
                    .expect("ResponseFuture polled after completion");
                Poll::Ready(complete(result, permit, *asks))
            }
        }
    }
}

/// Classifies the head (or the error) and records the outcome now, or wraps the body to record
/// it at its end. When a layer above collects call facts, the response gets a
/// [`BreakerStatus`]; when one judges the answer's end (or collects facts), a body whose
/// outcome depends on its end gets a [`SharedOutcome`] this breaker fills at that end (unless a
/// layer below already shares one), so that the layers above do not parse the same body again.
#[inline]
pub(crate) fn complete<B, E>(
    result: Result<Response<B>, E>,
    permit: Permit,
    asks: Asks,
) -> Result<Response<ResponseBody<B>>, BoxError>
where
    E: Into<BoxError>,
{
    let Asks { facts, share } = asks;
    let mut classifier = *permit.breaker().classifier();
    if share {
        // The layers above read usage and model from the shared outcome.
        classifier = classifier.summary(true);
    }
    match result {
        Ok(mut resp) => match classifier.classify_head(resp.status(), resp.headers()) {
            ClassifiedResponse::Ready(outcome) => {
                let now = permit.breaker().now();
                let outcome = outcome.as_ref().map(|_| ());
                if facts {
                    let state = permit.record_then_state(outcome, now, now);
                    // Core's type, for outer layers (audit) that do not depend on this crate.
                    resp.extensions_mut().insert(BreakerStatus(state.as_str()));
                } else {
                    permit.record(outcome, now, now);
                }
                Ok(resp.map(ResponseBody::plain))
            }
            ClassifiedResponse::RequiresEos(eos) => {
                let mut slot = None;
                let ext = resp.extensions_mut();
                if facts {
                    ext.insert(BreakerStatus(permit.breaker().state().as_str()));
                }
                if share && ext.get::<SharedOutcome>().is_none() {
                    let s = SharedOutcome::new();
                    ext.insert(s.clone());
                    slot = Some(s);
                }
                let observer = EndObserver::new(eos, permit, slot);
                Ok(resp.map(|b| ResponseBody::observed(b, observer)))
            }
        },
        Err(e) => {
            let e: BoxError = e.into();
            let class = classifier.classify_error(&*e);
            let now = permit.breaker().now();
            permit.record(Err(&class), now, now);
            Err(e)
        }
    }
}

/// What the layers above asked a breaker for, read from the request's extensions.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Asks {
    /// [`CollectCallFacts`]: put the [`BreakerStatus`] on the response (and share the verdict).
    pub(crate) facts: bool,
    /// [`ShareVerdict`] (or `facts`): publish the verdict on the body's end.
    pub(crate) share: bool,
}

impl Asks {
    #[inline]
    pub(crate) fn of(ext: &http::Extensions) -> Self {
        let facts = ext.get::<CollectCallFacts>().is_some();
        Self {
            facts,
            share: facts || ext.get::<ShareVerdict>().is_some(),
        }
    }
}
