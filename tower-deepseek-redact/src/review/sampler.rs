//! The deterministic sampler: which calls are reviewed.

use sha2::{Digest, Sha256};

use super::config::SamplingRule;

/// A point in `[0, 1)` for a request id: the first 53 bits of the id's SHA-256 digest. The
/// same id gives the same point in every process, so a fleet samples the same calls.
pub(super) fn sample_point(request_id: &str) -> f64 {
    let d = Sha256::digest(request_id.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    (u64::from_be_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// The path without a leading `/v1` (the gateway serves both forms).
fn normalise(path: &str) -> &str {
    match path.strip_prefix("/v1") {
        Some(rest) if rest.starts_with('/') => rest,
        _ => path,
    }
}

#[derive(Debug, Clone, Default)]
pub(super) struct Sampler {
    rules: Vec<SamplingRule>,
}

impl Sampler {
    pub(super) fn new(rules: Vec<SamplingRule>) -> Self {
        Self { rules }
    }

    /// Whether a rule needs the request's model to decide.
    pub(super) fn uses_model(&self) -> bool {
        self.rules.iter().any(|r| r.model.is_some())
    }

    /// The fraction of the first matching rule, 0 when none matches.
    pub(super) fn fraction(&self, route: &str, model: Option<&str>, tenant: Option<&str>) -> f64 {
        let route = normalise(route);
        self.rules
            .iter()
            .find(|r| {
                r.route.as_deref().is_none_or(|x| normalise(x) == route)
                    && r.model.as_deref().is_none_or(|x| Some(x) == model)
                    && r.tenant.as_deref().is_none_or(|x| Some(x) == tenant)
            })
            .map_or(0.0, |r| r.fraction)
    }

    pub(super) fn sampled(
        &self,
        request_id: &str,
        route: &str,
        model: Option<&str>,
        tenant: Option<&str>,
    ) -> bool {
        let f = self.fraction(route, model, tenant);
        f > 0.0 && (f >= 1.0 || sample_point(request_id) < f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower_deepseek_core::protocol::RequestId;

    #[test]
    fn points_are_stable_and_spread() {
        assert_eq!(sample_point("abc"), sample_point("abc"));
        assert_ne!(sample_point("abc"), sample_point("abd"));
        let p = sample_point("x");
        assert!((0.0..1.0).contains(&p));
    }

    #[test]
    fn ten_per_cent_holds_within_two_per_cent_over_10000_calls() {
        let s = Sampler::new(vec![SamplingRule::new(0.1)]);
        for _round in 0..3 {
            let n = (0..10_000)
                .filter(|_| {
                    let id = RequestId::generate();
                    s.sampled(id.as_str(), "/chat/completions", None, None)
                })
                .count();
            let share = n as f64 / 10_000.0;
            assert!((share - 0.1).abs() < 0.02, "sampled {share}");
        }
        // Sequential ids (as a caller may send) spread as well.
        let n = (0..10_000)
            .filter(|i| s.sampled(&format!("req-{i}"), "/chat/completions", None, None))
            .count();
        assert!((n as f64 / 10_000.0 - 0.1).abs() < 0.02, "sampled {n}");
    }

    #[test]
    fn first_matching_rule_wins_and_default_is_off() {
        let s = Sampler::new(vec![
            SamplingRule::new(1.0).tenant("a"),
            SamplingRule::new(0.0).tenant("b"),
            SamplingRule::new(0.5)
                .route("/chat/completions")
                .model("deepseek-chat"),
        ]);
        assert_eq!(
            s.fraction("/v1/chat/completions", Some("m"), Some("a")),
            1.0
        );
        assert_eq!(
            s.fraction("/chat/completions", Some("deepseek-chat"), Some("b")),
            0.0
        );
        assert_eq!(
            s.fraction("/v1/chat/completions", Some("deepseek-chat"), None),
            0.5
        );
        assert_eq!(s.fraction("/chat/completions", Some("other"), None), 0.0);
        assert_eq!(
            s.fraction("/beta/completions", Some("deepseek-chat"), None),
            0.0
        );
        assert!(!Sampler::default().sampled("id", "/chat/completions", None, None));
        assert!(s.sampled("anything", "/chat/completions", None, Some("a")));
    }
}
