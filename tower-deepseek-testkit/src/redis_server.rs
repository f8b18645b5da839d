//! [`RedisServer`]: a `redis-server` child process of a test's own, for chaos tests.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` child on a free loopback port of its own (no persistence), killed when
/// dropped. A test can kill and restart it ([`kill`](Self::kill), [`spawn`](Self::spawn)) or
/// freeze and thaw it ([`signal`](Self::signal) with `-STOP` / `-CONT`) during traffic.
///
/// ```no_run
/// use tower_deepseek_testkit::RedisServer;
///
/// let Some(mut redis) = RedisServer::start() else { return }; // skipped without the binary
/// let url = redis.url(); // redis://127.0.0.1:PORT
/// redis.signal("-STOP"); // frozen: connections open, nothing answers
/// redis.signal("-CONT");
/// redis.kill();
/// redis.spawn().unwrap(); // back on the same port, empty
/// # let _ = url;
/// ```
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
}

impl RedisServer {
    /// Starts one and waits until it answers `PING`. `None` (with a notice on stderr) when
    /// `redis-server` cannot be started, except under `CI=true`, where that panics: CI must not
    /// skip these tests.
    pub fn start() -> Option<RedisServer> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port");
        let mut server = RedisServer { child: None, port };
        match server.spawn() {
            Ok(()) => Some(server),
            Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
                panic!("cannot start redis-server ({e}) and CI=true")
            }
            Err(e) => {
                eprintln!("notice: cannot start redis-server ({e}); Redis chaos test skipped");
                None
            }
        }
    }

    /// Starts the process (again) on its port and waits (at most 5 s) until it answers `PING`.
    ///
    /// # Errors
    ///
    /// The error of starting `redis-server`.
    ///
    /// # Panics
    ///
    /// When it does not answer within 5 s.
    pub fn spawn(&mut self) -> std::io::Result<()> {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        let start = Instant::now();
        while !self.pings() {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "redis-server never answered PING"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether it answers `PING` within 200 ms.
    pub fn pings(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    /// Kills the process (SIGKILL) and reaps it; [`spawn`](Self::spawn) starts it again.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends a signal with `kill` (`"-STOP"`, `"-CONT"`, ...).
    ///
    /// # Panics
    ///
    /// When the process is not running or `kill` fails.
    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let st = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(st.success(), "kill {sig} {pid}");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
