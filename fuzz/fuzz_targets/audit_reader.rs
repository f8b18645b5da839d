//! The audit log readers: `verify_chain` over arbitrary bytes, and `JsonlFileSink` opening
//! (repairing a torn tail, resuming the chain from) a file of arbitrary bytes. Never panic;
//! after opening, the file ends at a line boundary and a new record lands as one whole line.
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use tower_deepseek_redact::audit::{AuditSink, JsonlFileSink, verify_chain};

fuzz_target!(|data: &[u8]| {
    if let Ok(n) = verify_chain(Cursor::new(data)) {
        assert!(n <= data.iter().filter(|&&b| b == b'\n').count() + 1);
    }

    let dir = std::env::temp_dir().join(format!("td-fuzz-audit-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("audit.jsonl");
    let _ = std::fs::remove_file(dir.join("audit.jsonl.torn"));
    std::fs::write(&path, data).unwrap();
    let sink = JsonlFileSink::builder(&path)
        .fsync_interval(std::time::Duration::ZERO)
        .open()
        .expect("open");
    let _ = sink.chain_tail();
    let repaired = std::fs::read(&path).unwrap();
    assert!(
        repaired.is_empty() || repaired.ends_with(b"\n"),
        "torn tail left in place"
    );
    assert!(
        data.starts_with(&repaired),
        "open changed more than the torn tail"
    );
    sink.write(b"{\"k\":1}").unwrap();
    drop(sink);
    let after = std::fs::read(&path).unwrap();
    assert_eq!(&after[repaired.len()..], b"{\"k\":1}\n");
});
