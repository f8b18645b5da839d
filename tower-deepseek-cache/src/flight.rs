//! Single-flight with live fan-out.
//!
//! The first request for a key (the leader) goes upstream; identical requests that arrive while
//! it is in flight (followers) subscribe to it. Once the response head arrives, a task drives
//! the upstream body and publishes every chunk as it arrives; every caller, the leader's
//! included, is a subscriber that reads from the published chunks at its own pace (a late
//! follower first gets what was already produced). So a slow or departed caller never stalls
//! the others. When every subscriber has left, the task stops reading (the upstream request is
//! cancelled). If the leader fails before its response head, the flight is abandoned and the
//! followers start over (one of them becomes the new leader).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::{HeaderMap, StatusCode, Version};

use crate::key::CacheKey;

/// What a flight is keyed on: the cache key and the shape of the answer the caller wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct FlightKey {
    pub(crate) key: CacheKey,
    pub(crate) stream: bool,
    pub(crate) include_usage: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct Head {
    pub(crate) status: StatusCode,
    pub(crate) version: Version,
    pub(crate) headers: HeaderMap,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    Complete,
    Failed,
}

#[derive(Debug, Default)]
struct State {
    head: Option<Head>,
    chunks: Vec<Bytes>,
    end: Option<End>,
    /// The leader went away or failed before a head: followers start over.
    abandoned: bool,
    followers: usize,
    next_id: u64,
    wakers: HashMap<u64, Waker>,
    /// Every subscriber left after the head: the driver stops reading upstream.
    cancelled: bool,
    driver: Option<Waker>,
}

#[derive(Debug, Default)]
pub(crate) struct Flight {
    state: Mutex<State>,
}

/// What a follower waiting for the head learns.
pub(crate) enum Joined {
    Head(Head),
    StartOver,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Flight {
    fn wake_all(state: &mut State) {
        for (_, w) in state.wakers.drain() {
            w.wake();
        }
    }

    /// Registers a follower. `None` if the flight is already over (start over).
    pub(crate) fn join(self: &Arc<Self>) -> Option<Follower> {
        let mut s = lock(&self.state);
        if s.abandoned || s.cancelled || s.end == Some(End::Failed) {
            return None;
        }
        s.followers += 1;
        s.next_id += 1;
        Some(Follower {
            flight: self.clone(),
            id: s.next_id,
            pos: 0,
        })
    }

    /// For the task driving the upstream body: whether every subscriber left (then stop);
    /// otherwise registers the driver to be woken if they do.
    pub(crate) fn poll_cancelled(&self, cx: &mut Context<'_>) -> bool {
        let mut s = lock(&self.state);
        if s.cancelled {
            return true;
        }
        s.driver = Some(cx.waker().clone());
        false
    }

    pub(crate) fn publish_head(&self, head: Head) {
        let mut s = lock(&self.state);
        s.head = Some(head);
        Self::wake_all(&mut s);
    }

    pub(crate) fn publish_chunk(&self, chunk: Bytes) {
        let mut s = lock(&self.state);
        s.chunks.push(chunk);
        Self::wake_all(&mut s);
    }

    pub(crate) fn end(&self, end: End) {
        let mut s = lock(&self.state);
        if s.end.is_none() {
            s.end = Some(end);
        }
        if s.head.is_none() {
            s.abandoned = true;
        }
        Self::wake_all(&mut s);
    }

    /// The leader failed before a head: followers start over.
    pub(crate) fn abandon(&self) {
        let mut s = lock(&self.state);
        if s.head.is_none() {
            s.abandoned = true;
        } else if s.end.is_none() {
            s.end = Some(End::Failed);
        }
        Self::wake_all(&mut s);
    }
}

/// A follower's subscription. Dropping it unsubscribes.
#[derive(Debug)]
pub(crate) struct Follower {
    flight: Arc<Flight>,
    id: u64,
    pos: usize,
}

impl Follower {
    pub(crate) fn poll_head(&mut self, cx: &mut Context<'_>) -> Poll<Joined> {
        let mut s = lock(&self.flight.state);
        if let Some(h) = &s.head {
            return Poll::Ready(Joined::Head(h.clone()));
        }
        if s.abandoned || s.end.is_some() {
            return Poll::Ready(Joined::StartOver);
        }
        s.wakers.insert(self.id, cx.waker().clone());
        Poll::Pending
    }

    /// The next chunk: `Some(Ok)` data, `Some(Err)` the leader's body failed, `None` the end.
    pub(crate) fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, ()>>> {
        let mut s = lock(&self.flight.state);
        if let Some(c) = s.chunks.get(self.pos) {
            self.pos += 1;
            return Poll::Ready(Some(Ok(c.clone())));
        }
        match s.end {
            Some(End::Complete) => Poll::Ready(None),
            Some(End::Failed) => Poll::Ready(Some(Err(()))),
            None => {
                s.wakers.insert(self.id, cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let mut s = lock(&self.flight.state);
        s.followers -= 1;
        s.wakers.remove(&self.id);
        if s.followers == 0 && s.head.is_some() && s.end.is_none() {
            s.cancelled = true;
            if let Some(w) = s.driver.take() {
                w.wake();
            }
        }
    }
}

/// The flights in progress.
#[derive(Debug, Default)]
pub(crate) struct Flights {
    map: Mutex<HashMap<FlightKey, Arc<Flight>>>,
}

pub(crate) enum Role {
    Leader(Arc<Flight>),
    Follower(Follower),
}

impl Flights {
    /// Joins the flight for `key`, or starts one.
    pub(crate) fn enter(&self, key: FlightKey) -> Role {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = map.get(&key) {
            if let Some(follower) = f.join() {
                return Role::Follower(follower);
            }
        }
        let flight = Arc::new(Flight::default());
        map.insert(key, flight.clone());
        Role::Leader(flight)
    }

    /// Removes `flight` (if it is still the one registered for `key`).
    pub(crate) fn remove(&self, key: &FlightKey, flight: &Arc<Flight>) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(key).is_some_and(|f| Arc::ptr_eq(f, flight)) {
            map.remove(key);
        }
    }
}
