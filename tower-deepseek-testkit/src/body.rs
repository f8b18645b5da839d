//! The response body: either complete bytes, or frames produced over time by a script.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::{mpsc, watch};

use crate::state::Phase;

/// Error yielded by a body that a fault aborts mid-way.
#[derive(Debug)]
pub(crate) struct Aborted;

impl fmt::Display for Aborted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("response aborted by a scripted fault")
    }
}

impl std::error::Error for Aborted {}

type Item = Result<Frame<Bytes>, Aborted>;

/// The body of every response of the mock server.
#[derive(Debug)]
pub(crate) enum MockBody {
    Full(Option<Bytes>),
    Channel(mpsc::Receiver<Item>),
}

impl MockBody {
    pub(crate) fn full(bytes: impl Into<Bytes>) -> MockBody {
        let bytes = bytes.into();
        MockBody::Full((!bytes.is_empty()).then_some(bytes))
    }

    pub(crate) fn empty() -> MockBody {
        MockBody::Full(None)
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = Aborted;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Aborted>>> {
        match self.get_mut() {
            MockBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            MockBody::Channel(rx) => rx.poll_recv(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, MockBody::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            MockBody::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            MockBody::Channel(_) => SizeHint::default(),
        }
    }
}

/// One step of a scripted body.
#[derive(Debug)]
pub(crate) enum Step {
    /// Send these bytes as one frame.
    Data(Bytes),
    /// Wait (tokio timer).
    Sleep(Duration),
    /// Abort the body: the client sees a body error.
    Abort,
}

/// Runs `steps` on a task feeding a channel-backed body, so that every `Data` step is its
/// own frame and pauses between them are real.
pub(crate) fn scripted(steps: Vec<Step>, mut phase: watch::Receiver<Phase>) -> MockBody {
    // Capacity 1: the producer runs at most one frame ahead of the connection.
    let (tx, rx) = mpsc::channel::<Item>(1);
    tokio::spawn(async move {
        for step in steps {
            match step {
                Step::Data(bytes) => {
                    if tx.send(Ok(Frame::data(bytes))).await.is_err() {
                        return;
                    }
                }
                Step::Sleep(d) => {
                    tokio::select! {
                        () = tokio::time::sleep(d) => {}
                        () = tx.closed() => return,
                        _ = phase.wait_for(|p| *p >= Phase::Stopped) => return,
                    }
                }
                Step::Abort => {
                    // Let the connection take and flush the frames sent so far, so that the
                    // client really receives them before the body fails.
                    let Ok(permit) = tx.reserve().await else {
                        return;
                    };
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    permit.send(Err(Aborted));
                    return;
                }
            }
        }
    });
    MockBody::Channel(rx)
}
