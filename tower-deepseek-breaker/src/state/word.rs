//! The state of a breaker, and the state word: the state and its generation packed into the one
//! atomic every call reads.

use std::fmt;

/// The state of a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum State {
    /// Calls pass and are recorded; the rates decide when to open.
    Closed,
    /// Calls are rejected until the wait is over.
    Open,
    /// A fixed number of probes pass; their outcome closes or reopens the breaker.
    HalfOpen,
    /// Calls pass and nothing is recorded (set by the handle).
    Disabled,
    /// Every call is rejected until the handle changes the state.
    ForcedOpen,
    /// Calls pass and are recorded, but the breaker never opens (set by the handle).
    MetricsOnly,
}

impl State {
    /// Every state, in gauge order.
    pub const ALL: [State; 6] = [
        State::Closed,
        State::Open,
        State::HalfOpen,
        State::Disabled,
        State::ForcedOpen,
        State::MetricsOnly,
    ];

    /// A stable snake_case name: the `state` label of `deepseek_breaker_state`.
    pub const fn as_str(&self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
            State::Disabled => "disabled",
            State::ForcedOpen => "forced_open",
            State::MetricsOnly => "metrics_only",
        }
    }

    pub(super) const fn index(self) -> usize {
        match self {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
            State::Disabled => 3,
            State::ForcedOpen => 4,
            State::MetricsOnly => 5,
        }
    }

    const fn from_index(i: u64) -> State {
        match i {
            0 => State::Closed,
            1 => State::Open,
            2 => State::HalfOpen,
            3 => State::Disabled,
            4 => State::ForcedOpen,
            _ => State::MetricsOnly,
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[inline]
pub(super) fn unpack(word: u64) -> (State, u64) {
    (State::from_index(word & 0xff), word >> 8)
}

#[inline]
pub(super) fn pack(state: State, generation: u64) -> u64 {
    (generation << 8) | state.index() as u64
}

/// The tag of a generation in the count window (see [`CountWindow`](crate::window::CountWindow)): its low 16 bits. A call
/// is checked against the full generation first; the tag only guards the moment between that
/// check and its write, during which 65,536 transitions cannot happen.
#[inline]
pub(super) fn tag(generation: u64) -> u16 {
    generation as u16
}
