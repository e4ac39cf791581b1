//! Supervisor mode: `sockgate -- <app command…>` runs the app as a child process.
//!
//! The child gets `HOST=127.0.0.1`, `PORT=<upstream port>` and `SOCKGATE_SOCKET=<publish
//! socket>`; its output passes through. It runs in its own process group, so a terminal's
//! Ctrl-C reaches sockgate alone, which drains before stopping the app.
//! Until it accepts connections, the gate is closed (proxied requests get 503 with
//! `Retry-After`, Socket.IO handshakes are refused). On shutdown sockgate drains first, then
//! sends SIGTERM to the app's whole process group (`bash -c 'node app & wait'` stops its node
//! too) and SIGKILL to what is left after the grace, so requests in flight are not cut by the
//! app going away and nothing outlives sockgate's own shutdown. If the child dies on its own,
//! sockgate stops with a failure status so the platform restarts it, and the rest of its group
//! gets SIGTERM.
//!
//! If sockgate itself is SIGKILLed or aborts, the app is told too: on Linux it is started
//! through util-linux's `setpriv --pdeathsig TERM` (present on Debian/Ubuntu images), which
//! sets the parent-death signal and then execs the app, so the app keeps its pid and gets
//! SIGTERM when sockgate dies. Setting it in-process would need `pre_exec`, which is `unsafe`.
//! Without `setpriv` on `PATH`, startup logs that the app would outlive a killed sockgate.
//! The signal reaches the app's top process only: an app started through a shell should
//! `exec` its server (`sh -c 'exec node server.mjs'`).

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use http::uri::Authority;
use nix::sys::signal::{Signal, killpg};
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

/// util-linux's `setpriv`, on Linux, when it is on `PATH`.
fn setpriv() -> Option<std::path::PathBuf> {
    if !cfg!(target_os = "linux") {
        return None;
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("setpriv"))
        .find(|candidate| candidate.is_file())
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
        let mut launch = match setpriv() {
            Some(setpriv) => {
                let mut launch = Command::new(setpriv);
                launch.args(["--pdeathsig", "TERM", "--", program]);
                launch
            }
            None => {
                tracing::warn!(
                    "`setpriv` (util-linux) not found: the app would outlive sockgate if sockgate were killed with SIGKILL"
                );
                Command::new(program)
            }
        };
        let child = launch
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
        let group = self.group();
        let status = self.child.wait().await;
        if let Some(group) = group.filter(|g| group_alive(*g)) {
            tracing::warn!(
                pgid = group.as_raw(),
                "the app left processes behind: SIGTERM to its group"
            );
            let _ = killpg(group, Signal::SIGTERM);
        }
        match status {
            Ok(status) => status.code().filter(|c| *c != 0).unwrap_or(1),
            Err(_) => 1,
        }
    }

    /// The app leads its own group (`process_group(0)`): the group id is its pid.
    fn group(&self) -> Option<Pid> {
        self.child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .map(Pid::from_raw)
    }

    /// Sends SIGTERM to the app's process group (the app and whatever it started) and waits
    /// up to `grace` for all of it to exit — or until `abort` (a second signal) — then kills
    /// what is left of the group. Returns the app's exit status.
    pub async fn stop(mut self, grace: Duration, abort: impl Future<Output = ()>) -> i32 {
        let group = self.group();
        if let Some(group) = group {
            tracing::info!(
                pgid = group.as_raw(),
                "sending SIGTERM to the app's process group"
            );
            let _ = killpg(group, Signal::SIGTERM);
        }
        let deadline = tokio::time::Instant::now() + grace;
        let mut abort = std::pin::pin!(abort);
        let mut aborted = false;
        let status = tokio::select! {
            waited = tokio::time::timeout_at(deadline, self.child.wait()) => waited.ok().and_then(Result::ok),
            _ = &mut abort => {
                aborted = true;
                None
            }
        };
        if let Some(group) = group {
            // The app's own children get what is left of the grace, then the group is killed.
            while !aborted && group_alive(group) && tokio::time::Instant::now() < deadline {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    _ = &mut abort => aborted = true,
                }
            }
            if group_alive(group) {
                tracing::warn!(program = %self.program, "app's process group still running after {grace:?} (or a second signal): killed");
                let _ = killpg(group, Signal::SIGKILL);
            }
        }
        let status = match status {
            Some(status) => Some(status),
            None => {
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

/// Whether any process of `group` is still there (signal 0 checks without sending).
fn group_alive(group: Pid) -> bool {
    killpg(group, None::<Signal>).is_ok()
}
