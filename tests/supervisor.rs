//! Supervisor mode (`sockgate -- <app>`) with a real Node child process.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// A Node app that listens after `delay_ms`, answers with the environment it was given, exits
/// with `term_code` on SIGTERM, and with 3 when asked to crash.
fn app_script(delay_ms: u64, term_code: i32) -> String {
    format!(
        r#"
const http = require('http');
setTimeout(() => http.createServer((req, res) => {{
  if (req.url === '/crash') {{ res.end('bye'); setTimeout(() => process.exit(3), 10); return; }}
  if (req.url === '/quit') {{ res.end('bye'); setTimeout(() => process.exit(0), 10); return; }}
  res.setHeader('content-type', 'application/json');
  res.end(JSON.stringify({{ host: process.env.HOST, port: process.env.PORT, socket: process.env.SOCKGATE_SOCKET }}));
}}).listen(Number(process.env.PORT), process.env.HOST), {delay_ms});
process.on('SIGTERM', () => process.exit({term_code}));
"#
    )
}

fn supervise(script: &str) -> (Sockgate, u16) {
    let upstream = free_port();
    (
        sockgate_with_args(upstream, &[], &["--", "node", "-e", script]),
        upstream,
    )
}

#[tokio::test]
async fn answers_503_until_the_app_listens_then_proxies_to_it() {
    let (mut sg, upstream) = supervise(&app_script(1500, 0));
    let (proc, socket) = (&sg.proc, sg.socket.clone());
    let resp = get(proc.port, "/").await;
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    let handshake = get(proc.port, "/socket.io/?EIO=4&transport=polling").await;
    assert_eq!(
        handshake.status(),
        503,
        "Socket.IO handshakes are refused while the app starts"
    );

    let deadline = Instant::now() + Duration::from_secs(10);
    let seen = loop {
        let resp = get(proc.port, "/").await;
        if resp.status() == 200 {
            break body_json(resp).await;
        }
        assert!(Instant::now() < deadline, "the app never became reachable");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(seen["host"], "127.0.0.1");
    assert_eq!(seen["port"], upstream.to_string());
    assert_eq!(seen["socket"], socket.to_string_lossy().as_ref());
    // Stopped, not SIGKILLed by the drop: a SIGKILLed sockgate cannot stop its app.
    sg.proc.signal("TERM");
    sg.proc.wait_exit(Duration::from_secs(10)).expect("exits");
}

#[tokio::test]
async fn sigterm_drains_stops_the_app_and_exits_with_its_status() {
    let (mut sg, _) = supervise(&app_script(0, 7));
    let socket = sg.socket.clone();
    let proc = &mut sg.proc;
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(proc.port, "/").await.status() != 200 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proc.signal("TERM");
    let status = proc.wait_exit(Duration::from_secs(10)).expect("exits");
    assert_eq!(
        status.code(),
        Some(7),
        "sockgate exits with the app's status"
    );
    assert!(!socket.exists());
}

#[tokio::test]
async fn an_app_that_dies_takes_sockgate_down_with_a_failure_status() {
    for (path, expected) in [("/crash", 3), ("/quit", 1)] {
        let (mut sg, _) = supervise(&app_script(0, 0));
        let proc = &mut sg.proc;
        let deadline = Instant::now() + Duration::from_secs(10);
        while get(proc.port, "/").await.status() != 200 {
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = get(proc.port, path).await;
        let status = proc.wait_exit(Duration::from_secs(10)).expect("exits");
        assert_eq!(
            status.code(),
            Some(expected),
            "{path}: the platform must see a failure"
        );
    }
}

/// Whether `port` on loopback accepts a TCP connection.
fn listening(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(500),
    )
    .is_ok()
}

#[tokio::test]
async fn sigterm_stops_the_apps_own_children_too() {
    // The app is a shell that starts the real server in the background and waits: the server
    // is sockgate's grandchild, in the app's process group.
    let script = format!("node -e {} & wait", shell_quote(&app_script(0, 0)));
    let upstream = free_port();
    let mut sg = sockgate_with_args(upstream, &[], &["--", "bash", "-c", &script]);
    let proc = &mut sg.proc;
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(proc.port, "/").await.status() != 200 {
        assert!(Instant::now() < deadline, "the app never became reachable");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proc.signal("TERM");
    proc.wait_exit(Duration::from_secs(15))
        .expect("sockgate exits");
    let gone_by = Instant::now() + Duration::from_secs(2);
    while listening(upstream) && Instant::now() < gone_by {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !listening(upstream),
        "the app's background server still listens on {upstream} after sockgate exited"
    );
}

#[tokio::test]
async fn the_app_does_not_outlive_a_killed_sockgate() {
    let (mut sg, upstream) = supervise(&app_script(0, 0));
    let proc = &mut sg.proc;
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(proc.port, "/").await.status() != 200 {
        assert!(Instant::now() < deadline, "the app never became reachable");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proc.signal("KILL");
    proc.wait_exit(Duration::from_secs(5))
        .expect("sockgate is gone");
    let gone_by = Instant::now() + Duration::from_secs(5);
    while listening(upstream) && Instant::now() < gone_by {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !listening(upstream),
        "the app still listens on {upstream} after sockgate was SIGKILLed"
    );
}

fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}
