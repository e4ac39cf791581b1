//! Supervisor mode: `sockgate -- <app command…>` runs the app as a child process.
//!
//! The child gets `HOST=127.0.0.1`, `PORT=<upstream port>` and `SOCKGATE_SOCKET=<publish
//! socket>`; its output passes through. It runs in its own process group, so a terminal's
//! Ctrl-C reaches sockgate alone, which drains before stopping the app.
//! Until it accepts connections, the gate is closed (proxied requests get 503 with
//! `Retry-After`, Socket.IO handshakes are refused). On shutdown sockgate drains first, then
//! sends the child SIGTERM, so requests in flight are not cut by the app going away. If the
//! child dies on its own, sockgate stops with a failure status so the platform restarts it.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use http::uri::Authority;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

/// Whether the app can take requests yet. Always open when sockgate does not start the app.
#[derive(Clone, Debug)]
pub struct AppGate(Arc<AtomicBool>);

impl AppGate {
    pub fn new(open: bool) -> Self {
        Self(Arc::new(AtomicBool::new(open)))
    }

    pub fn is_open(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    fn open(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

pub struct Supervisor {
    child: Child,
    program: String,
}

impl Supervisor {
    /// Starts `command` with the environment the app needs to listen where sockgate expects.
    pub fn spawn(
        command: &[String],
        upstream: &Authority,
        publish_socket: &std::path::Path,
    ) -> anyhow::Result<Self> {
        let (program, args) = command
            .split_first()
            .ok_or_else(|| anyhow::anyhow!("no app command after `--`"))?;
        let port = upstream.port_u16().unwrap_or(80);
        let child = Command::new(program)
            .args(args)
            .env("HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .env("SOCKGATE_SOCKET", publish_socket)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start the app `{program}`: {e}"))?;
        tracing::info!(pid = child.id(), command = %command.join(" "), port, "app started");
        Ok(Self {
            child,
            program: program.clone(),
        })
    }

    /// Opens `gate` once the app accepts TCP connections on `upstream`.
    pub fn open_gate_when_listening(&self, upstream: Authority, gate: AppGate) {
        tokio::spawn(async move {
            let started = Instant::now();
            let mut warned = false;
            loop {
                if tokio::net::TcpStream::connect(upstream.as_str())
                    .await
                    .is_ok()
                {
                    gate.open();
                    tracing::info!(
                        after_ms = started.elapsed().as_millis() as u64,
                        "app is accepting connections on {upstream}"
                    );
                    return;
                }
                if !warned && started.elapsed() > Duration::from_secs(30) {
                    warned = true;
                    tracing::warn!(
                        "app has not listened on {upstream} for 30 s; does it read HOST and PORT?"
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
    }

    /// Resolves when the app exits on its own, with the status sockgate should exit with:
    /// never 0, since an app that stops by itself is a failure for the platform to see.
    pub async fn exited(&mut self) -> i32 {
        match self.child.wait().await {
            Ok(status) => status.code().filter(|c| *c != 0).unwrap_or(1),
            Err(_) => 1,
        }
    }

    /// Sends SIGTERM and waits up to `grace` for the app to exit, then kills it. Returns the
    /// app's exit status.
    pub async fn stop(mut self, grace: Duration) -> i32 {
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            tracing::info!(pid, "sending SIGTERM to the app");
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let status = match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => status.ok(),
            Err(_) => {
                tracing::warn!(program = %self.program, "app did not exit within {grace:?}: killed");
                let _ = self.child.kill().await;
                self.child.wait().await.ok()
            }
        };
        let code = match status {
            Some(s) => s.code().unwrap_or_else(|| {
                // Ended by our SIGTERM without handling it: that is the requested stop.
                use std::os::unix::process::ExitStatusExt;
                if s.signal() == Some(Signal::SIGTERM as i32) {
                    0
                } else {
                    1
                }
            }),
            None => 1,
        };
        tracing::info!(code, "app exited");
        code
    }
}
