//! `State`'s names and `Display` (the `state` label of `deepseek_breaker_state`). Added for a
//! mutant of `state.rs` that `cargo mutants` found alive (`Display` returning nothing).

use tower_deepseek_breaker::State;

#[test]
fn every_state_displays_its_label() {
    let expected = [
        (State::Closed, "closed"),
        (State::Open, "open"),
        (State::HalfOpen, "half_open"),
        (State::Disabled, "disabled"),
        (State::ForcedOpen, "forced_open"),
        (State::MetricsOnly, "metrics_only"),
    ];
    for (state, name) in expected {
        assert_eq!(state.as_str(), name);
        assert_eq!(state.to_string(), name);
    }
}
