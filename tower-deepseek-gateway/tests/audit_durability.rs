//! The audit log through the real binary: no answer a client received completely is missing
//! its record after `kill -9`, one chain spans a restart (`audit verify`), and a full disk
//! fails closed with a clean 503 and no torn line.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use http_body_util::BodyExt;
use serde_json::json;
use tower_deepseek_testkit::MockServer;

/// The gateway binary, listening (the shared [`GatewayProcess`]).
struct Gw(GatewayProcess);

impl Gw {
    async fn start(upstream: &str, audit: &Path) -> Gw {
        Self::start_with(upstream, &["--audit-log".as_ref(), audit.as_os_str()]).await
    }

    async fn start_with(upstream: &str, args: &[&std::ffi::OsStr]) -> Gw {
        let args: Vec<&str> = args
            .iter()
            .map(|a| a.to_str().expect("UTF-8 arguments"))
            .collect();
        Gw(GatewayProcess::spawn(upstream, "", &args, &[]).await)
    }

    fn url(&self) -> String {
        self.0.url("/v1/chat/completions")
    }

    /// SIGKILL, and wait for the process to be gone.
    async fn kill(mut self) {
        self.0.kill().await;
    }
}

/// `GET /readyz`: its status and JSON.
async fn readyz(client: &TestClient, gw: &Gw) -> (u16, serde_json::Value) {
    let res = get(client, &format!("http://{}/readyz", gw.0.addr), None).await;
    let status = res.status().as_u16();
    let text = body_string(res).await;
    (status, serde_json::from_str(&text).unwrap())
}

fn body(stream: bool, content: &str) -> serde_json::Value {
    json!({"model": "deepseek-chat", "stream": stream, "stream_options": {"include_usage": true},
           "messages": [{"role": "user", "content": content}]})
}

/// One call: `Some((status, request id, headers))` when the answer arrived completely.
async fn call(
    client: &TestClient,
    url: &str,
    stream: bool,
    content: &str,
) -> Option<(u16, String, http::HeaderMap)> {
    let req = chat_request(url, None, body(stream, content));
    let res = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .ok()?
        .ok()?;
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let id = headers.get("x-request-id")?.to_str().ok()?.to_owned();
    let bytes = tokio::time::timeout(Duration::from_secs(10), res.into_body().collect())
        .await
        .ok()?
        .ok()?
        .to_bytes();
    // A stream is complete with its `[DONE]` (and the end of the chunked body, checked by
    // `collect`).
    if stream && status == 200 && !bytes.ends_with(b"data: [DONE]\n\n") {
        return None;
    }
    Some((status, id, headers))
}

/// The request ids of the whole records of a log (a torn last line is skipped).
fn recorded_ids(path: &Path) -> HashSet<String> {
    let text = std::fs::read(path).unwrap();
    text.split(|&b| b == b'\n')
        .filter_map(|l| serde_json::from_slice::<serde_json::Value>(l).ok())
        .filter_map(|v| v["request_id"].as_str().map(str::to_owned))
        .collect()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "gw-audit-{name}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `deepseek-gateway audit verify FILES...`: (exit code, stdout).
async fn verify(files: &[&Path]) -> (i32, String) {
    let out = tokio::process::Command::new(GATEWAY_BIN)
        .args(["audit", "verify"])
        .args(files)
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
    )
}

#[tokio::test]
async fn kill_9_mid_load_loses_no_delivered_record_and_one_chain_spans_the_restart() {
    let upstream = MockServer::builder()
        .api_key(UPSTREAM_KEY)
        .stream_chunk_delay(Duration::from_millis(2))
        .start()
        .await;
    let dir = temp_dir("kill");
    let log = dir.join("audit.jsonl");
    let gw = Gw::start(&upstream.url(), &log).await;

    // Concurrent streaming and non-streaming traffic; every answer received whole is noted.
    let delivered = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..8 {
        let (delivered, stop, url) = (delivered.clone(), stop.clone(), gw.url());
        workers.push(tokio::spawn(async move {
            let client = client();
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let stream = (w + i) % 2 == 0;
                match call(&client, &url, stream, &format!("worker {w} call {i}")).await {
                    Some((200, id, _)) => delivered.lock().unwrap().push(id),
                    Some((status, ..)) => panic!("unexpected status {status}"),
                    // Cut by the kill.
                    None => break,
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while delivered.lock().unwrap().len() < 60 {
        assert!(Instant::now() < deadline, "traffic too slow");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    gw.kill().await;
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    let delivered = delivered.lock().unwrap().clone();
    let recorded = recorded_ids(&log);
    eprintln!(
        "killed after {} delivered answers; {} records",
        delivered.len(),
        recorded.len()
    );
    let missing: Vec<_> = delivered
        .iter()
        .filter(|id| !recorded.contains(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} delivered answers have no record: {missing:?}",
        missing.len(),
        delivered.len()
    );

    // A new process on the same file: a torn line (if the kill made one) is set aside, and
    // the chain goes on.
    let gw = Gw::start(&upstream.url(), &log).await;
    let client = client();
    let mut after = Vec::new();
    for i in 0..6 {
        let (status, id, _) = call(&client, &gw.url(), i % 2 == 0, &format!("after {i}"))
            .await
            .expect("answered");
        assert_eq!(status, 200);
        after.push(id);
    }
    gw.kill().await;
    let recorded = recorded_ids(&log);
    assert!(after.iter().all(|id| recorded.contains(id)));
    let lines = std::fs::read_to_string(&log).unwrap().lines().count();
    assert!(lines >= delivered.len() + after.len());
    let (code, out) = verify(&[&log]).await;
    assert_eq!(
        (code, out.trim()),
        (0, format!("ok {lines} records").as_str())
    );

    // A tampered copy fails, naming the line.
    let tampered = dir.join("tampered.jsonl");
    let text = std::fs::read_to_string(&log).unwrap();
    let mut edited: Vec<String> = text.lines().map(str::to_owned).collect();
    edited[2] = edited[2].replacen("\"status\":200", "\"status\":201", 1);
    assert_ne!(edited[2], text.lines().nth(2).unwrap());
    std::fs::write(&tampered, edited.join("\n") + "\n").unwrap();
    let (code, out) = verify(&[&tampered]).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.starts_with(&format!("{}:3: ", tampered.display())),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A small tmpfs mounted for the test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts one, or says why not and gives `None` (not root, or `mount` failed). Under
    /// `CI=true`, as root, a failed mount fails the test.
    fn mount(size: &str) -> Option<Tmpfs> {
        let uid = std::process::Command::new("id").arg("-u").output().ok();
        let root = uid.is_some_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        if !root {
            eprintln!("NOTICE: skipping the disk-full test: it needs root to mount a tmpfs");
            return None;
        }
        let dir = temp_dir("tmpfs");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status();
        match status {
            Ok(s) if s.success() => Some(Tmpfs(dir)),
            other => {
                let _ = std::fs::remove_dir(&dir);
                assert!(
                    !ci,
                    "CI=true as root: mounting a tmpfs must work ({other:?})"
                );
                eprintln!("NOTICE: skipping the disk-full test: cannot mount a tmpfs ({other:?})");
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = std::process::Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Fills the file system holding `dir` with one file; returns its path.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = [0u8; 4096];
    while f.write_all(&block).is_ok() {}
    // Small writes too, down to the last byte.
    while f.write_all(&block[..1]).is_ok() {}
    path
}

#[tokio::test]
async fn a_full_disk_fails_closed_with_a_clean_503_and_no_torn_line() {
    let Some(fs) = Tmpfs::mount("256k") else {
        return;
    };
    let upstream = MockServer::builder().api_key(UPSTREAM_KEY).start().await;
    let log = fs.0.join("audit.jsonl");
    let gw = Gw::start(&upstream.url(), &log).await;
    let client = client();
    let mut delivered = Vec::new();
    for i in 0..3 {
        let (status, id, _) = call(&client, &gw.url(), false, &format!("before {i}"))
            .await
            .expect("answered");
        assert_eq!(status, 200);
        delivered.push(id);
    }

    let filler = fill(&fs.0);
    // Calls until the policy answers: an answer whose record cannot be written is cut before
    // its end, and then calls are refused with a clean 503.
    let mut refused = None;
    let mut cut = 0;
    for i in 0..30 {
        match call(&client, &gw.url(), i % 2 == 0, &format!("full {i}")).await {
            Some((200, id, _)) => delivered.push(id),
            Some((503, _, headers)) => {
                refused = Some(headers);
                break;
            }
            Some((status, ..)) => panic!("unexpected status {status}"),
            None => cut += 1,
        }
    }
    eprintln!("disk full: {cut} answers cut before their end, then a 503");
    let headers = refused.expect("a 503 once the disk is full");
    assert!(headers.contains_key("retry-after"), "{headers:?}");
    assert_eq!(headers["connection"], "close");
    // Not ready while the audit sink takes no records (the upstream is fine).
    let (status, ready) = readyz(&client, &gw).await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(
        (ready["audit"].as_str(), ready["usable_upstreams"].as_u64()),
        (Some("failing"), Some(1)),
        "{ready}"
    );

    // No torn line, no delivered answer without its record, and the chain holds.
    let text = std::fs::read(&log).unwrap();
    assert!(text.ends_with(b"\n"), "a torn last line");
    for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        serde_json::from_slice::<serde_json::Value>(line).expect("every line is a record");
    }
    let recorded = recorded_ids(&log);
    assert!(delivered.iter().all(|id| recorded.contains(id)));
    let (code, out) = verify(&[&log]).await;
    assert_eq!(code, 0, "{out}");

    // Room again: calls are served and recorded.
    std::fs::remove_file(&filler).unwrap();
    let (status, ready) = readyz(&client, &gw).await;
    assert_eq!(
        (status, ready["audit"].as_str()),
        (200, Some("ok")),
        "{ready}"
    );
    let (status, id, _) = call(&client, &gw.url(), false, "room again")
        .await
        .expect("answered");
    assert_eq!(status, 200);
    assert!(recorded_ids(&log).contains(&id));
    gw.kill().await;
    drop(fs);
}

/// Gateway throughput without the audit log, with it (default: records written through,
/// `fsync` every second) and with an `fsync` per record, in one run (figures in
/// BENCHMARKS.md):
///
/// ```text
/// cargo test --release -p tower-deepseek-gateway --test audit_durability -- --ignored --nocapture gateway_throughput
/// ```
#[ignore = "a measurement: run it by name in release mode"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_throughput_with_the_audit_log() {
    let upstream = MockServer::builder().api_key(UPSTREAM_KEY).start().await;
    let dir = temp_dir("throughput");
    let every = dir.join("every.toml");
    std::fs::write(&every, "[audit]\nfsync_interval_ms = 0\n").unwrap();
    let (a, b) = (dir.join("a.jsonl"), dir.join("b.jsonl"));
    let runs: [(&str, Vec<&std::ffi::OsStr>); 3] = [
        ("no audit log", vec![]),
        (
            "audit log, fsync every 1 s (default)",
            vec!["--audit-log".as_ref(), a.as_os_str()],
        ),
        (
            "audit log, fsync every record",
            vec![
                "--audit-log".as_ref(),
                b.as_os_str(),
                "--config".as_ref(),
                every.as_os_str(),
            ],
        ),
    ];
    for (name, args) in runs {
        let gw = Gw::start_with(&upstream.url(), &args).await;
        let calls = 4000;
        let tasks = 16;
        let start = Instant::now();
        let mut handles = Vec::new();
        for t in 0..tasks {
            let url = gw.url();
            handles.push(tokio::spawn(async move {
                let client = client();
                for i in 0..calls / tasks {
                    let (status, ..) = call(&client, &url, false, &format!("{name} {t} {i}"))
                        .await
                        .expect("answered");
                    assert_eq!(status, 200);
                }
            }));
        }
        for h in handles {
            h.await.unwrap();
        }
        let rate = calls as f64 / start.elapsed().as_secs_f64();
        println!("{name}: {rate:.0} calls/s");
        gw.kill().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}
