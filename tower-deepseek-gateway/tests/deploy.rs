//! The deployment files: the Grafana dashboard parses and uses only metrics the code emits;
//! the Prometheus alert rules are well-formed YAML with the guide's three alerts and the
//! quality-score alert (and pass
//! `promtool check rules` when promtool is installed).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under a `src/` directory of the workspace (each crate's sources).
fn workspace_sources() -> String {
    fn walk(dir: &Path, in_src: bool, out: &mut String) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                if name == "target" || name.starts_with('.') {
                    continue;
                }
                walk(&path, in_src || name == "src", out);
            } else if in_src && name.ends_with(".rs") {
                out.push_str(&std::fs::read_to_string(&path).unwrap_or_default());
                out.push('\n');
            }
        }
    }
    let root = manifest_dir().join("..");
    let mut out = String::new();
    walk(&root, false, &mut out);
    assert!(
        out.contains("deepseek_breaker_state"),
        "workspace sources found"
    );
    out
}

/// Metric names in a PromQL expression.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut cur = String::new();
    let mut in_quotes = false;
    for c in expr.chars().chain(std::iter::once(' ')) {
        if c == '"' {
            in_quotes = !in_quotes;
        }
        if !in_quotes && (c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            cur.push(c);
        } else {
            if cur.starts_with("deepseek_") || cur.starts_with("process_") {
                names.insert(std::mem::take(&mut cur));
            }
            cur.clear();
        }
    }
    names
}

/// Whether the sources emit `name` (as a string literal; histograms by their base name).
fn emitted(sources: &str, name: &str) -> bool {
    let mut candidates = vec![name];
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            candidates.push(base);
        }
    }
    candidates.iter().any(|n| {
        sources.contains(&format!("\"{n}\""))
            || sources.contains(&format!("\"{n} "))
            || sources.contains(&format!("\n{n} "))
            || sources.contains(&format!("\\n{n} "))
    })
}

#[test]
fn dashboard_uses_only_emitted_metrics() {
    let text =
        std::fs::read_to_string(manifest_dir().join("deploy/grafana-dashboard.json")).unwrap();
    let dash: Value = serde_json::from_str(&text).expect("the dashboard is valid JSON");
    let panels = dash["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10);
    let sources = workspace_sources();
    let mut all = BTreeSet::new();
    for p in panels {
        assert!(p["title"].is_string() && p["gridPos"].is_object());
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {} has queries", p["title"]);
        for t in targets {
            let expr = t["expr"].as_str().unwrap();
            assert_eq!(
                expr.matches('(').count(),
                expr.matches(')').count(),
                "{expr}"
            );
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{expr}");
            all.extend(names);
        }
    }
    for name in &all {
        assert!(
            emitted(&sources, name),
            "the dashboard uses {name}, which no source emits"
        );
    }
    // What the guide's monitoring section asks for.
    for needed in [
        "deepseek_gateway_responses_total",
        "deepseek_gateway_request_duration_seconds_bucket",
        "deepseek_gateway_tokens_total",
        "deepseek_cache_requests_total",
        "deepseek_breaker_state",
        "deepseek_retry_attempts_total",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        // The quality metric (issue 20): feedback and evaluator scores.
        "deepseek_review_score_sum",
        "deepseek_review_score_count",
        // Active-active upstreams (issue 18): the weight each gets now, attempts by outcome.
        "deepseek_gateway_upstream_weight",
        "deepseek_gateway_upstream_calls_total",
    ] {
        assert!(all.contains(needed), "the dashboard shows {needed}");
    }
    assert!(text.contains("prompt_cache_hit") || text.contains("{{kind}}"));
}

#[test]
fn the_name_check_catches_unknown_metrics() {
    let sources = workspace_sources();
    assert!(emitted(&sources, "deepseek_cache_requests_total"));
    assert!(emitted(
        &sources,
        "deepseek_gateway_request_duration_seconds_bucket"
    ));
    assert!(!emitted(&sources, "deepseek_cache_hits_total"));
    assert_eq!(
        metric_names(r#"sum(rate(deepseek_x_total{a="deepseek_y"}[5m])) / process_z"#)
            .into_iter()
            .collect::<Vec<_>>(),
        ["deepseek_x_total", "process_z"]
    );
}

/// One alert rule, as read by the minimal YAML reader below.
#[derive(Debug, Default)]
struct Rule {
    alert: String,
    expr: String,
    r#for: String,
    severity: String,
    summary: String,
}

/// A minimal reader for the alert file's subset of YAML: block mappings and sequences with
/// space indentation, plain or double-quoted scalars. Fails on anything else.
fn read_rules(text: &str) -> Vec<Rule> {
    let mut rules: Vec<Rule> = Vec::new();
    let mut saw_groups = false;
    let mut saw_name = false;
    let mut section = "";
    for (n, raw) in text.lines().enumerate() {
        let line_no = n + 1;
        assert!(!raw.contains('\t'), "line {line_no}: tab");
        let content = raw.trim_end();
        if content.trim_start().starts_with('#') || content.trim().is_empty() {
            continue;
        }
        let indent = content.len() - content.trim_start().len();
        assert_eq!(indent % 2, 0, "line {line_no}: odd indentation");
        let mut item = content.trim_start();
        if let Some(rest) = item.strip_prefix("- ") {
            item = rest;
        }
        let (key, value) = item
            .split_once(':')
            .unwrap_or_else(|| panic!("line {line_no}: not a `key: value` line: {raw}"));
        let key = key.trim();
        assert!(
            key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "line {line_no}: key {key:?}"
        );
        let value = value.trim();
        let value = if let Some(q) = value.strip_prefix('"') {
            let inner = q
                .strip_suffix('"')
                .unwrap_or_else(|| panic!("line {line_no}: unterminated string"));
            assert!(
                !inner.replace("\\\"", "").contains('"'),
                "line {line_no}: stray quote"
            );
            inner.to_owned()
        } else {
            assert!(
                !value.starts_with(['\'', '{', '[', '&', '*', '!', '|', '>']),
                "line {line_no}: unsupported YAML in {value:?}"
            );
            value.to_owned()
        };
        match (indent, key) {
            (0, "groups") => saw_groups = true,
            (2, "name") => saw_name = true,
            (4, "rules") => {}
            (6, "alert") => rules.push(Rule {
                alert: value,
                ..Rule::default()
            }),
            (8, "expr") => rules.last_mut().expect("a rule").expr = value,
            (8, "for") => rules.last_mut().expect("a rule").r#for = value,
            (8, "labels") | (8, "annotations") => section = key,
            (10, "severity") if section == "labels" => {
                rules.last_mut().expect("a rule").severity = value
            }
            (10, "summary") if section == "annotations" => {
                rules.last_mut().expect("a rule").summary = value
            }
            (10, _) => {}
            _ => panic!("line {line_no}: unexpected key {key:?} at indentation {indent}"),
        }
    }
    assert!(saw_groups && saw_name, "groups and a group name");
    rules
}

#[test]
fn alert_rules_are_well_formed_and_cover_the_guide() {
    let path = manifest_dir().join("deploy/alerts.yml");
    let text = std::fs::read_to_string(&path).unwrap();
    let rules = read_rules(&text);
    let sources = workspace_sources();
    for r in &rules {
        assert!(!r.alert.is_empty() && !r.expr.is_empty(), "{r:?}");
        assert!(r.r#for.ends_with('m') || r.r#for.ends_with('s'), "{r:?}");
        assert!(!r.severity.is_empty() && !r.summary.is_empty(), "{r:?}");
        assert_eq!(
            r.expr.matches('(').count(),
            r.expr.matches(')').count(),
            "{r:?}"
        );
        for name in metric_names(&r.expr) {
            assert!(emitted(&sources, &name), "alert {} uses {name}", r.alert);
        }
    }
    let find = |needle: &str| {
        rules
            .iter()
            .find(|r| r.expr.contains(needle))
            .unwrap_or_else(|| panic!("no alert on {needle}"))
    };
    let p99 = find("histogram_quantile(0.99");
    assert!(p99.expr.ends_with("> 0.8") && p99.r#for == "5m", "{p99:?}");
    let errors = find("deepseek_gateway_responses_total");
    assert!(errors.expr.ends_with("> 0.05"), "{errors:?}");
    let down = find("deepseek_breaker_state");
    assert!(down.expr.contains("open"), "{down:?}");
    // Active-active upstreams (issue 18): one out for 5 minutes, and all out.
    let one_out = find("deepseek_gateway_upstream_up");
    assert!(
        one_out.expr.ends_with("== 0")
            && one_out.r#for == "5m"
            && one_out.expr.contains("upstream"),
        "{one_out:?}"
    );
    let all_out = find("deepseek_gateway_upstreams_usable");
    assert!(
        all_out.expr.ends_with("== 0") && all_out.severity == "critical",
        "{all_out:?}"
    );
    // Quality: the 1-hour mean score (sum over count) below a threshold.
    let quality = find("deepseek_review_score_sum");
    assert!(
        quality
            .expr
            .contains("increase(deepseek_review_score_sum[1h])")
            && quality
                .expr
                .contains("increase(deepseek_review_score_count[1h])")
            && quality.expr.contains(") < 0."),
        "{quality:?}"
    );

    // The real check, where promtool is installed (never required).
    if let Ok(out) = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&path)
        .output()
    {
        assert!(
            out.status.success(),
            "promtool: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        println!("promtool not installed: checked with the built-in reader only");
    }
}

#[test]
fn the_yaml_reader_rejects_malformed_rules() {
    let bad = "groups:\n  - name: x\n    rules:\n      - alert: A\n        expr: \"up\n";
    assert!(std::panic::catch_unwind(|| read_rules(bad)).is_err());
    let bad = "groups:\n  - name: x\n    rules:\n      - alert: A\n\texpr: up\n";
    assert!(std::panic::catch_unwind(|| read_rules(bad)).is_err());
    let bad = "groups:\n  - name: x\n    rules:\n      - alert: A\n         expr: up\n";
    assert!(std::panic::catch_unwind(|| read_rules(bad)).is_err());
}
