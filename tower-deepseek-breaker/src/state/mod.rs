//! The state machine shared by every clone of a breaker, and the handle to inspect it.
//!
//! Admission in the closed state is one atomic load (state and generation share one word). With
//! a count-based window, recording a closed-state outcome takes no lock either: one
//! compare-and-swap claims the window's next slot, and only a slot that changes (a failure, a
//! slow call, a success replacing a failure, a window not yet full) costs more (see
//! [`CountWindow`](crate::window::CountWindow)). Everything else (half-open probes, the
//! time-based window, a failsafe trip rule) takes a `std::sync::Mutex`. Every transition
//! happens under that mutex, bumps the generation, and updates the gauges in the same critical
//! section, so the exclusive state gauge is never seen with two states at 1.
//!
//! - `word`: the [`State`] enum and the state word (state and generation in one atomic);
//! - `machine`: the [`Breaker`] itself: its settings, admission and transitions;
//! - `record`: how a finished call's outcome is recorded and evaluated;
//! - `permit`: the [`Permit`] a call holds, packed small;
//! - `stripe`: the striped reference counts that permits hold;
//! - `handle`: the public [`BreakerHandle`] and its [`BreakerMetrics`] snapshot;
//! - `failsafe` (feature `failsafe`): a failsafe policy as the closed state's trip rule.

#[cfg(feature = "failsafe")]
mod failsafe;
mod handle;
mod machine;
mod permit;
mod record;
mod stripe;
mod word;

#[cfg(feature = "failsafe")]
pub(crate) use self::failsafe::{TripRule, TripRuleFactory};
pub use self::handle::{BreakerHandle, BreakerMetrics};
pub(crate) use self::machine::{Breaker, Spec};
pub(crate) use self::permit::Permit;
pub(crate) use self::stripe::{Stripe, Striped};
pub use self::word::State;
