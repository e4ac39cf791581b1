//! Test harness: real processes on real sockets. Starts the Node fixture app
//! (`tests/fixture/app.mjs`) and the `sockgate` binary in front of it, and speaks HTTP to them.
#![allow(dead_code)] // each test file uses its own part of the harness

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

/// A port that was free a moment ago, chosen below the kernel's ephemeral range (Linux:
/// 32768–60999). A port from that range (what binding port 0 gives) can be taken by any
/// outgoing connection between this check and the test's own bind: seen as "Address already
/// in use" when the machine was busy. Ports of one test process are spread from a per-process
/// start so parallel tests and test processes rarely try the same one.
pub fn free_port() -> u16 {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static START: OnceLock<u32> = OnceLock::new();
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = *START.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        (std::process::id().wrapping_mul(7_919) ^ nanos) % SPAN
    });
    for _ in 0..SPAN {
        let offset = (start + NEXT.fetch_add(97, Ordering::Relaxed)) % SPAN;
        let port = u16::try_from(LOW + offset).expect("below 32768");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {LOW}..{}", LOW + SPAN)
}

/// Waits until `port` accepts TCP connections, or panics after `limit`.
pub fn wait_for_port(port: u16, limit: Duration, what: &str) {
    let deadline = Instant::now() + limit;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on {port} within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A child process that is killed when dropped.
pub struct Proc {
    pub child: Child,
    pub port: u16,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([format!("-{name}"), self.pid().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{name} failed");
    }

    /// Waits for exit, up to `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the Node fixture app on a free port.
pub fn fixture(env: &[(&str, &str)]) -> Proc {
    fixture_on(free_port(), env)
}

pub fn fixture_on(port: u16, env: &[(&str, &str)]) -> Proc {
    let child = Command::new("node")
        .arg(repo().join("tests/fixture/app.mjs"))
        .env("PORT", port.to_string())
        .env("HOST", "127.0.0.1")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node runs (is Node.js installed?)");
    let proc = Proc { child, port };
    wait_for_port(port, Duration::from_secs(10), "fixture app");
    proc
}

/// A running sockgate with its publish socket in a private temp dir.
pub struct Sockgate {
    pub proc: Proc,
    pub socket: PathBuf,
    dir: PathBuf,
}

impl Sockgate {
    pub fn port(&self) -> u16 {
        self.proc.port
    }

    /// What sockgate has logged so far (empty with `SOCKGATE_TEST_LOG` set).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("sockgate.log")).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port())
    }
}

/// Where sockgate's output goes: a file in its temp dir, shown only when the test fails (a
/// passing run prints no WARN/ERROR lines), or the terminal with `SOCKGATE_TEST_LOG` set.
fn sockgate_log(dir: &std::path::Path) -> (Stdio, Stdio) {
    if std::env::var_os("SOCKGATE_TEST_LOG").is_some() {
        return (Stdio::inherit(), Stdio::inherit());
    }
    let file = std::fs::File::create(dir.join("sockgate.log")).expect("log file");
    let copy = file.try_clone().expect("log file");
    (file.into(), copy.into())
}

impl Drop for Sockgate {
    fn drop(&mut self) {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
        if std::thread::panicking()
            && let Ok(log) = std::fs::read_to_string(self.dir.join("sockgate.log"))
        {
            eprintln!("--- sockgate output ---\n{log}");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "sockgate-test-{tag}-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

pub fn sockgate_bin() -> &'static str {
    env!("CARGO_BIN_EXE_sockgate")
}

/// Starts sockgate in front of `upstream_port`; `env` adds or overrides `SIDECAR_*` settings.
pub fn sockgate(upstream_port: u16, env: &[(&str, &str)]) -> Sockgate {
    sockgate_with_args(upstream_port, env, &[])
}

/// The same, with command-line arguments (e.g. `--` and an app command to supervise).
pub fn sockgate_with_args(upstream_port: u16, env: &[(&str, &str)], args: &[&str]) -> Sockgate {
    let port = free_port();
    let dir = temp_dir("sg");
    let socket = dir.join("sockgate.sock");
    let (out, err) = sockgate_log(&dir);
    let child = Command::new(sockgate_bin())
        .current_dir(&dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SIDECAR_SERVER__HOST", "127.0.0.1")
        .env("SIDECAR_SERVER__PORT", port.to_string())
        .env(
            "SIDECAR_UPSTREAM__URL",
            format!("http://127.0.0.1:{upstream_port}"),
        )
        .env("SIDECAR_PUBLISH__SOCKET", &socket)
        .env("SIDECAR_LOG__FILTER", "sockgate=debug,info")
        .envs(env.iter().copied())
        .args(args)
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("sockgate binary runs");
    let proc = Proc { child, port };
    wait_for_port(port, Duration::from_secs(10), "sockgate");
    Sockgate { proc, socket, dir }
}

/// Sends one request on a fresh HTTP/1.1 connection and returns the response head and body
/// stream.
pub async fn send(port: u16, req: Request<Full<Bytes>>) -> Response<Incoming> {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn.with_upgrades());
    sender.send_request(req).await.expect("response")
}

/// An HTTP/2 (prior knowledge, cleartext) connection to sockgate.
pub async fn h2c(port: u16) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("h2c prior-knowledge handshake");
    tokio::spawn(conn);
    sender
}

pub async fn get(port: u16, path: &str) -> Response<Incoming> {
    send(port, request("GET", path, Bytes::new())).await
}

pub fn request(method: &str, path: &str, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", "app.test")
        .body(Full::new(body.into()))
        .expect("request")
}

pub async fn body_bytes(resp: Response<Incoming>) -> Bytes {
    resp.into_body().collect().await.expect("body").to_bytes()
}

pub async fn body_text(resp: Response<Incoming>) -> String {
    String::from_utf8_lossy(&body_bytes(resp).await).into_owned()
}

pub async fn body_json(resp: Response<Incoming>) -> serde_json::Value {
    let bytes = body_bytes(resp).await;
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
}

/// One HTTP/1.1 request on the publish Unix socket.
pub async fn publish_api(
    socket: &Path,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .expect("publish socket");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "sockgate")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("request");
    let resp = sender.send_request(req).await.expect("response");
    let status = resp.status().as_u16();
    (status, body_json(resp).await)
}
