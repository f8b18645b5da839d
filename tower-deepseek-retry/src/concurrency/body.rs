//! The response body of [`AdaptiveConcurrency`](super::AdaptiveConcurrency).

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::sync::OwnedSemaphorePermit;

use super::state::Shared;

/// What a request in flight holds.
pub(crate) enum Held {
    /// A permit of this process's semaphore.
    Local(OwnedSemaphorePermit),
    /// A fleet lease (given back when dropped).
    #[cfg(feature = "redis")]
    Lease(#[allow(dead_code)] super::fleet::Lease),
}

pub(crate) struct PermitGuard {
    pub(crate) shared: Arc<Shared>,
    pub(crate) permit: Option<Held>,
}

impl Drop for PermitGuard {
    fn drop(&mut self) {
        if let Some(Held::Local(p)) = self.permit.take() {
            self.shared.release(p);
        }
    }
}

pin_project! {
    /// Response body of [`AdaptiveConcurrency`](crate::AdaptiveConcurrency): holds the permit until the body ends or is
    /// dropped.
    pub struct ResponseBody<B> {
        #[pin]
        pub(crate) inner: B,
        pub(crate) permit: Option<PermitGuard>,
    }
}

impl<B> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseBody")
            .field("holds_permit", &self.permit.is_some())
            .finish_non_exhaustive()
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let r = this.inner.poll_frame(cx);
        if let Poll::Ready(None | Some(Err(_))) = &r {
            *this.permit = None; // the body ended: release now, not when it is dropped
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
