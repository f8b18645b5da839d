//! The one configuration story: every setting from the file, the environment
//! (`DEEPSEEK_GATEWAY_*`) and the command line, flag over environment over file; and
//! `check-config` on good and broken files.

// figment::Jail closures return figment's own (large) error type.
#![allow(clippy::result_large_err)]

use std::path::Path;

use figment::Jail;
use tower_deepseek_gateway::sources::{self, LoadError, Overrides};
use tower_deepseek_gateway::{GatewayConfig, Options};

const FILE: &str = r#"
[server]
listen = "127.0.0.1:7001"
max_connections = 11

[retry]
max_attempts = 4

[cache]
redis_url = "redis://file:6379"

[audit]
path = "file.jsonl"

[[keys]]
sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
tenant = "from-file"

[[upstreams]]
url = "http://file.example"
weight = 2
"#;

fn load(file: Option<&str>, flags: &Overrides) -> Result<GatewayConfig, LoadError> {
    sources::load(file.map(Path::new), flags)
}

fn flags(set: &[&str]) -> Overrides {
    let mut o = Overrides::new();
    o.set = set
        .iter()
        .map(|s| Overrides::parse_set(s).unwrap())
        .collect();
    o
}

/// Each setting below, from each source in turn: the file alone, the environment over the
/// file, and the command line over both.
#[test]
fn flag_over_environment_over_file_for_every_source() {
    Jail::expect_with(|jail| {
        jail.create_file("gw.toml", FILE)?;
        let f = Some("gw.toml");

        // The file alone.
        let c = load(f, &Overrides::new()).unwrap();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:7001");
        assert_eq!(c.server.max_connections, 11);
        assert_eq!(c.retry.max_attempts, 4);
        assert_eq!(c.cache.redis_url.as_deref(), Some("redis://file:6379"));
        assert_eq!(c.audit.path.as_deref(), Some(Path::new("file.jsonl")));
        assert_eq!(c.keys[0].tenant.as_deref(), Some("from-file"));
        assert_eq!(c.upstreams[0].url, "http://file.example");
        // A setting no source names keeps its default.
        assert_eq!(c.server.drain_timeout_ms, 30_000);

        // The environment over the file (nested tables with `__`).
        jail.set_env("DEEPSEEK_GATEWAY_SERVER__LISTEN", "127.0.0.1:7002");
        jail.set_env("DEEPSEEK_GATEWAY_SERVER__MAX_CONNECTIONS", "22");
        jail.set_env("DEEPSEEK_GATEWAY_RETRY__MAX_ATTEMPTS", "3");
        jail.set_env("DEEPSEEK_GATEWAY_CACHE__REDIS_URL", "redis://env:6379");
        jail.set_env("DEEPSEEK_GATEWAY_AUDIT__PATH", "env.jsonl");
        jail.set_env(
            "DEEPSEEK_GATEWAY_KEYS",
            r#"[{sha256="60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752", tenant="from-env"}]"#,
        );
        jail.set_env(
            "DEEPSEEK_GATEWAY_UPSTREAMS",
            r#"[{url="http://env.example", weight=5}]"#,
        );
        jail.set_env("DEEPSEEK_GATEWAY_LAYERS__CACHE", "false");
        let c = load(f, &Overrides::new()).unwrap();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:7002");
        assert_eq!(c.server.max_connections, 22);
        assert_eq!(c.retry.max_attempts, 3);
        assert_eq!(c.cache.redis_url.as_deref(), Some("redis://env:6379"));
        assert_eq!(c.audit.path.as_deref(), Some(Path::new("env.jsonl")));
        assert_eq!(c.keys.len(), 1, "an array replaces the lower one whole");
        assert_eq!(c.keys[0].tenant.as_deref(), Some("from-env"));
        assert_eq!(c.upstreams.len(), 1);
        assert_eq!(
            (c.upstreams[0].url.as_str(), c.upstreams[0].weight),
            ("http://env.example", 5)
        );
        assert!(!c.layers.cache);
        // The rest of a table the environment touches still comes from the file.
        assert!(c.layers.retry);

        // The dedicated flags over the environment.
        let mut o = Overrides::new();
        o.listen = Some("127.0.0.1:7003".parse().unwrap());
        o.redis = Some("redis://flag:6379".to_owned());
        o.audit_log = Some("flag.jsonl".into());
        o.upstreams = vec!["http://a.flag".to_owned(), "http://b.flag".to_owned()];
        let c = load(f, &o).unwrap();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:7003");
        assert_eq!(c.cache.redis_url.as_deref(), Some("redis://flag:6379"));
        assert_eq!(c.audit.path.as_deref(), Some(Path::new("flag.jsonl")));
        let urls: Vec<_> = c.upstreams.iter().map(|u| u.url.as_str()).collect();
        assert_eq!(urls, ["http://a.flag", "http://b.flag"]);
        assert_eq!(c.upstreams[0].weight, 1);
        // Settings the flags do not name still come from the environment.
        assert_eq!(c.retry.max_attempts, 3);

        // `--set` over the environment, for any setting, and over a dedicated flag.
        o.set = flags(&[
            "retry.max_attempts=2",
            "server.max_connections=33",
            "cache.redis_url=redis://set:6379",
            "layers.cache=true",
        ])
        .set;
        let c = load(f, &o).unwrap();
        assert_eq!(c.retry.max_attempts, 2);
        assert_eq!(c.server.max_connections, 33);
        assert_eq!(c.cache.redis_url.as_deref(), Some("redis://set:6379"));
        assert!(c.layers.cache);
        Ok(())
    });
}

#[test]
fn without_a_file_the_environment_and_flags_still_apply() {
    Jail::expect_with(|jail| {
        let c = load(None, &Overrides::new()).unwrap();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
        assert!(c.cache.redis_url.is_none());
        jail.set_env("DEEPSEEK_GATEWAY_CACHE__L1_TTL_MS", "1234");
        // The file variable is the `--config` flag's, not a setting.
        jail.set_env("DEEPSEEK_GATEWAY_CONFIG", "nowhere.toml");
        let c = load(None, &flags(&["server.drain_timeout_ms=5"])).unwrap();
        assert_eq!(c.cache.l1_ttl.as_millis(), 1234);
        assert_eq!(c.server.drain_timeout_ms, 5);
        Ok(())
    });
}

#[test]
fn a_bad_value_names_its_variable_or_flag_and_never_the_value() {
    Jail::expect_with(|jail| {
        jail.set_env("DEEPSEEK_GATEWAY_RETRY__MAX_ATTEMPTS", "sk-not-a-number");
        let e = load(None, &Overrides::new()).unwrap_err().to_string();
        assert!(
            e.contains("DEEPSEEK_GATEWAY_RETRY__MAX_ATTEMPTS") && e.contains("retry.max_attempts"),
            "{e}"
        );
        assert!(!e.contains("sk-not-a-number"), "{e}");
        // The flag wins, so the bad variable is not read.
        assert!(load(None, &flags(&["retry.max_attempts=2"])).is_ok());

        let e = load(
            None,
            &flags(&["retry.max_attempts=2", "server.max_connections=sk-secret"]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("command line") && e.contains("server.max_connections"),
            "{e}"
        );
        assert!(!e.contains("sk-secret"), "{e}");

        jail.set_env("DEEPSEEK_GATEWAY_NO_SUCH_SETTING", "1");
        let e = load(None, &flags(&["retry.max_attempts=2"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no_such_setting"), "{e}");
        Ok(())
    });
}

#[test]
fn a_broken_file_is_reported_with_its_line_and_field() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "bad.toml",
            "[server]\nmax_connections = 5\n\n[retry]\nmax_atempts = 3\n",
        )?;
        let e = load(Some("bad.toml"), &Overrides::new()).unwrap_err();
        let LoadError::File { line, field, .. } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(*line, Some(5));
        assert_eq!(field.as_deref(), Some("retry.max_atempts"));
        assert_eq!(
            e.to_string(),
            "bad.toml:5: invalid configuration at field `retry.max_atempts`"
        );
        assert!(
            e.report().contains("unknown field `max_atempts`"),
            "{}",
            e.report()
        );

        jail.create_file("type.toml", "[server]\nmax_connections = \"many\"\n")?;
        let e = load(Some("type.toml"), &Overrides::new()).unwrap_err();
        assert!(e.to_string().starts_with("type.toml:2:"), "{e}");
        assert!(e.to_string().contains("server.max_connections"), "{e}");
        Ok(())
    });
}

/// `--redis` used to lose to the file's `[cache] redis_url`; `Options::redis` (the flag) now
/// wins like `Options::audit_log`.
#[tokio::test]
async fn the_redis_option_wins_over_the_file() {
    let cfg = GatewayConfig::from_toml("[cache]\nredis_url = \"not a url\"\n").unwrap();
    // The file's value alone is invalid ...
    assert!(
        Options::from_config(cfg.clone())
            .config
            .cache
            .redis_url
            .is_some()
    );
    assert!(tower_deepseek_gateway::Gateway::check(Options::from_config(cfg.clone())).is_err());
    // ... and the option replaces it.
    let layers = tower_deepseek_gateway::Gateway::check(
        Options::from_config(cfg).redis("redis://127.0.0.1:6379"),
    )
    .unwrap();
    assert!(layers.contains(&"cache_l1_l2"), "{layers:?}");
}

/// Several upstreams, from the flags or the file, are served as a pool (failover, then a
/// breaker per upstream); one plain upstream is the plain stack. The per-upstream settings are
/// checked at start: an unset `api_key_env` variable, both a key and `[upstreams.oauth2]`,
/// two upstreams of one name, a name unfit for a metric label, a probe that never runs.
#[tokio::test]
async fn upstreams_from_flags_and_file_are_served_and_checked() {
    let check = |o: Options| tower_deepseek_gateway::Gateway::check(o).map_err(|e| e.to_string());
    let pooled = |layers: &[&str]| {
        let i = layers.iter().position(|l| *l == "failover");
        i.is_some_and(|i| layers[i + 1] == "breaker" && layers.last() == Some(&"client"))
    };
    let layers = check(
        Options::from_config(GatewayConfig::from_toml("").unwrap())
            .add_upstream("http://127.0.0.1:1")
            .add_upstream("http://127.0.0.1:2"),
    )
    .unwrap();
    assert!(pooled(&layers), "{layers:?}");
    let file = |toml: &str| GatewayConfig::from_toml(toml).unwrap();
    let two = "[[upstreams]]\nurl = \"http://127.0.0.1:1\"\n[[upstreams]]\nurl = \"http://127.0.0.1:2\"\n";
    let layers = check(Options::from_config(file(two))).unwrap();
    assert!(pooled(&layers), "{layers:?}");
    assert!(!layers.contains(&"bearer_auth"), "per upstream: {layers:?}");
    // One upstream with a model map of its own: a pool of one.
    let models = "[[upstreams]]\nurl = \"http://127.0.0.1:1\"\n[upstreams.models]\n\"deepseek-chat\" = \"v3\"\n";
    assert!(pooled(&check(Options::from_config(file(models))).unwrap()));
    // One plain upstream: the plain stack.
    let one = check(Options::from_config(file(
        "[[upstreams]]\nurl = \"http://127.0.0.1:1\"\n",
    )))
    .unwrap();
    assert!(
        !one.contains(&"failover") && one.contains(&"breaker"),
        "{one:?}"
    );

    let refused = |toml: &str| check(Options::from_config(file(toml))).unwrap_err();
    let err = refused(
        "[[upstreams]]\nurl = \"http://127.0.0.1:1\"\napi_key_env = \"DEEPSEEK_GATEWAY_TEST_UNSET_KEY_41\"\n",
    );
    assert!(
        err.contains("[upstreams]") && err.contains("DEEPSEEK_GATEWAY_TEST_UNSET_KEY_41"),
        "{err}"
    );
    let err = refused(
        "[[upstreams]]\nurl = \"http://127.0.0.1:1\"\napi_key_env = \"X\"\n[upstreams.oauth2]\ntoken_url = \"http://127.0.0.1:1/token\"\nclient_id = \"c\"\nclient_secret = \"s\"\n",
    );
    assert!(err.contains("exclusive"), "{err}");
    let err = refused(
        "[[upstreams]]\nname = \"az\"\nurl = \"http://127.0.0.1:1\"\n[[upstreams]]\nname = \"az\"\nurl = \"http://127.0.0.1:2\"\n",
    );
    assert!(err.contains("two upstreams are named"), "{err}");
    let err = refused(
        "[[upstreams]]\nname = \"a b\"\nurl = \"http://127.0.0.1:1\"\n[[upstreams]]\nurl = \"http://127.0.0.1:2\"\n",
    );
    assert!(err.contains("name"), "{err}");
    let err = refused(
        "[[upstreams]]\nurl = \"http://127.0.0.1:1\"\n[upstreams.probe]\ninterval_ms = 0\n",
    );
    assert!(err.contains("interval_ms"), "{err}");
    let err = refused(
        "[[upstreams]]\nurl = \"127.0.0.1:1\"\n[[upstreams]]\nurl = \"http://127.0.0.1:2\"\n",
    );
    assert!(err.contains("upstream"), "{err}");
}

const BIN: &str = env!("CARGO_BIN_EXE_deepseek-gateway");

fn check_config(file: &str, env: &[(&str, &str)]) -> (i32, String) {
    let dir = std::env::temp_dir().join(format!(
        "deepseek-gateway-check-{}-{}",
        std::process::id(),
        fastrand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gateway.toml");
    std::fs::write(&path, file).unwrap();
    let mut cmd = std::process::Command::new(BIN);
    // Only the variables given: the Jail tests of this binary set others while this runs.
    cmd.arg("check-config").arg(&path).env_clear();
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let text = String::from_utf8_lossy(&out.stdout).replace(&path.display().to_string(), "FILE");
    (out.status.code().unwrap_or(-1), text)
}

fn fastrand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
}

#[test]
fn check_config_accepts_the_example() {
    let (code, out) = check_config(include_str!("../gateway.example.toml"), &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("ok: layers "), "{out}");
}

#[test]
fn check_config_on_a_broken_file_exits_1_with_the_line_and_the_field() {
    // A syntax error.
    let (code, out) = check_config("[server]\nmax_connections = \n", &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with("FILE:2: invalid configuration"), "{out}");
    assert!(out.contains("server.max_connections"), "{out}");

    // An unknown key.
    let (code, out) = check_config("[layers]\ncache = true\n[retry]\nmax_atempts = 3\n", &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.starts_with("FILE:4: invalid configuration at field `retry.max_atempts`"),
        "{out}"
    );

    // A value a layer's builder refuses: the table's line and the field.
    let (code, out) = check_config(
        "[server]\nmax_connections = 5\n\n[retry]\nmax_attempts = 0\n",
        &[],
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.starts_with("FILE:4: invalid [retry] configuration"),
        "{out}"
    );
    assert!(out.contains("max_attempts"), "{out}");

    // A bad key hash.
    let (code, out) = check_config("[[keys]]\nsha256 = \"abc\"\n", &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("keys[0].sha256"), "{out}");

    // The environment is merged as at start: its error names the variable.
    let (code, out) = check_config("", &[("DEEPSEEK_GATEWAY_RETRY__MAX_ATTEMPTS", "x")]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("DEEPSEEK_GATEWAY_RETRY__MAX_ATTEMPTS"),
        "{out}"
    );
}

#[test]
fn the_concurrency_table_comes_from_the_environment_and_flags_too() {
    Jail::expect_with(|jail| {
        assert!(load(None, &Overrides::new()).unwrap().concurrency.is_none());
        jail.set_env("DEEPSEEK_GATEWAY_CONCURRENCY__MAX", "8");
        jail.set_env("DEEPSEEK_GATEWAY_CONCURRENCY__INITIAL", "8");
        jail.set_env(
            "DEEPSEEK_GATEWAY_CONCURRENCY__REDIS__REDIS_URL",
            "redis://env:6379",
        );
        let c = load(None, &flags(&["concurrency.account=prod"])).unwrap();
        let cc = c.concurrency.unwrap();
        assert_eq!((cc.initial, cc.max, cc.account.as_str()), (8, 8, "prod"));
        assert_eq!(
            cc.redis.unwrap().redis_url.as_deref(),
            Some("redis://env:6379")
        );
        Ok(())
    });
}

#[test]
fn check_config_wires_the_concurrency_cap_around_the_client() {
    let (code, out) = check_config("[concurrency]\ninitial = 4\nmax = 4\n", &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("timeout, concurrency, client"), "{out}");
    let (code, out) = check_config(
        "[layers]\ncache = true\n[concurrency]\ninitial = 8\nmax = 4\n",
        &[],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with("FILE:3: "), "{out}");
    assert!(
        out.contains("concurrency") && out.contains("initial"),
        "{out}"
    );
}
