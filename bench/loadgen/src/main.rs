//! Load generator for sockgate's benchmarks (see bench/run.sh and BENCHMARKS.md).
//!
//! Speaks Engine.IO v4 / Socket.IO v5 over WebSocket directly (no polling): `GET
//! /socket.io/?EIO=4&transport=websocket` with `Cookie: sid=user-<k>`, waits for the `0{..}`
//! open packet, sends `40`, and counts the socket as authenticated on `40{..}` (`44..` is a
//! refusal). Pings (`2`) are answered (`3`). Events (`42["notification",{"t":<unix ns>,..}]`)
//! are timestamped on receipt: latency = receipt − `t`, `t` being set by the publisher just
//! before it sends the publish request.
//!
//! Sockets are spread over many loopback source addresses (127.a.b.c, never 127.0.0.1) so
//! ephemeral ports never run out, and over several worker processes (this binary, `worker`)
//! so that no process nears the 20,000 open-file cap. The coordinator drives them over
//! stdin/stdout, one JSON line per command.
//!
//! Subcommands (all bounded in count and time; every one exits by itself after --max-secs):
//!   sockets   connect levels of N sockets, measure server RSS per socket, connect rate,
//!             broadcasts, and the per-user publish rate search; JSON to --out
//!   stream    connect N sockets and publish a steady per-user stream until --stop-file or
//!             --duration; JSON to --out
//!   smoke     ~200 sockets, one broadcast, a few per-user publishes; exit 1 unless all arrive
//!   cluster   connect N sockets (over one or several instances: `--addr a,b,c`, socket k goes
//!             to the (k mod m)-th), then fixed-rate steps, a rate ladder, a flood and
//!             broadcasts, with the CPU of each --server-pids process per phase; JSON to --out
//!   upstream  a tiny fast HTTP/1.1 server (for the proxy benchmark)
//!   worker    (internal) holds sockets for the coordinator

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, UnixStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

type Res<T> = Result<T, String>;

/// `LOADGEN_COOKIES=M`: sockets share M session cookies (`user-0`..`user-{M-1}`) instead of
/// one each — how many sockets a few sessions open, and a warm session cache. Read from the
/// environment so worker processes inherit it.
fn cookie_pool() -> Option<u64> {
    static POOL: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *POOL.get_or_init(|| {
        std::env::var("LOADGEN_COOKIES")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|m| *m > 0)
    })
}

fn e<E: std::fmt::Display>(x: E) -> String {
    x.to_string()
}

// ---------------------------------------------------------------------------------------------
// Arguments: `--key value` pairs.
// ---------------------------------------------------------------------------------------------
struct Opts(HashMap<String, String>);

impl Opts {
    fn parse(args: &[String]) -> Self {
        let mut m = HashMap::new();
        let mut i = 0;
        while i < args.len() {
            if let Some(k) = args[i].strip_prefix("--") {
                let v = args.get(i + 1).cloned().unwrap_or_default();
                m.insert(k.to_string(), v);
                i += 2;
            } else {
                i += 1;
            }
        }
        Opts(m)
    }
    fn s(&self, k: &str, d: &str) -> String {
        self.0.get(k).cloned().unwrap_or_else(|| d.to_string())
    }
    fn req(&self, k: &str) -> String {
        self.0.get(k).cloned().unwrap_or_else(|| {
            eprintln!("loadgen: --{k} is required");
            std::process::exit(2)
        })
    }
    fn n<T: std::str::FromStr>(&self, k: &str, d: T) -> T {
        match self.0.get(k) {
            Some(v) => v.parse().unwrap_or_else(|_| {
                eprintln!("loadgen: --{k} {v}: not a number");
                std::process::exit(2)
            }),
            None => d,
        }
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// Exits the process after `secs` whatever it is doing: every run is bounded in time.
fn watchdog(secs: u64, what: &'static str) {
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(secs));
        eprintln!("loadgen {what}: time limit of {secs} s reached, exiting");
        std::process::exit(3);
    });
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let cmd = args.get(1).cloned().unwrap_or_default();
    let opts = Opts::parse(&args[2.min(args.len())..]);
    let code = match cmd.as_str() {
        "worker" => {
            watchdog(opts.n("max-secs", 1800), "worker");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, worker_main(opts));
            0
        }
        "upstream" => {
            watchdog(opts.n("max-secs", 1800), "upstream");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(upstream_main(opts));
            0
        }
        "sockets" | "stream" | "smoke" | "cluster" => {
            watchdog(opts.n("max-secs", 900), "coordinator");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let r = rt.block_on(async {
                match cmd.as_str() {
                    "sockets" => sockets_main(opts).await,
                    "stream" => stream_main(opts).await,
                    "cluster" => cluster_main(opts).await,
                    _ => smoke_main(opts).await,
                }
            });
            match r {
                Ok(()) => 0,
                Err(msg) => {
                    eprintln!("loadgen {cmd}: {msg}");
                    1
                }
            }
        }
        _ => {
            eprintln!(
                "usage: loadgen sockets|stream|smoke|cluster|upstream [--key value ...] (see src/main.rs)"
            );
            2
        }
    };
    std::process::exit(code);
}

// ---------------------------------------------------------------------------------------------
// Worker: holds sockets, records deliveries.
// ---------------------------------------------------------------------------------------------

/// Latency histogram: 10 µs buckets up to 2 s, then one overflow bucket.
const BUCKET_NS: u64 = 10_000;
const BUCKETS: usize = 200_001;

struct State {
    recv: u64,
    hist: Vec<u32>,
    /// broadcast id → (deliveries, max latency ns)
    bcast: HashMap<u32, (u32, u64)>,
    closed: u64,
}

impl State {
    fn reset(&mut self) {
        self.recv = 0;
        self.hist.iter_mut().for_each(|b| *b = 0);
        self.bcast.clear();
    }
}

fn find_num(text: &str, key: &str) -> Option<u64> {
    let i = text.find(key)? + key.len();
    let digits: &str = &text[i..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

fn on_event(st: &RefCell<State>, text: &str) {
    let now = now_ns();
    let Some(t) = find_num(text, "\"t\":") else {
        return;
    };
    let lat = now.saturating_sub(t);
    let mut s = st.borrow_mut();
    s.recv += 1;
    if let Some(b) = find_num(text, "\"b\":") {
        let e = s.bcast.entry(b as u32).or_insert((0, 0));
        e.0 += 1;
        e.1 = e.1.max(lat);
    } else {
        let i = ((lat / BUCKET_NS) as usize).min(BUCKETS - 1);
        s.hist[i] += 1;
    }
}

/// Source address for the k-th socket of a run: 2,000 sockets per address.
fn source_ip(ip_offset: u64, k: u64) -> Ipv4Addr {
    let idx = ip_offset + k / 2000;
    let a = 1 + ((idx / 62_500) % 254) as u8;
    let b = ((idx / 250) % 250) as u8;
    let c = 2 + (idx % 250) as u8;
    Ipv4Addr::new(127, a, b, c)
}

async fn socket_task(
    addr: SocketAddr,
    path: Rc<str>,
    user: u64,
    src: Ipv4Addr,
    st: Rc<RefCell<State>>,
    permit: tokio::sync::OwnedSemaphorePermit,
    done: mpsc::UnboundedSender<Res<()>>,
) {
    let handshake = async {
        let sock = TcpSocket::new_v4().map_err(e)?;
        sock.bind(SocketAddr::new(src.into(), 0))
            .map_err(|x| format!("bind {src}: {x}"))?;
        let tcp = sock
            .connect(addr)
            .await
            .map_err(|x| format!("connect: {x}"))?;
        tcp.set_nodelay(true).ok();
        let mut req = format!("ws://{addr}{path}?EIO=4&transport=websocket")
            .into_client_request()
            .map_err(e)?;
        let cookie_user = match cookie_pool() {
            Some(m) => user % m,
            None => user,
        };
        req.headers_mut().insert(
            "cookie",
            format!("sid=user-{cookie_user}").parse().map_err(e)?,
        );
        let cfg = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0);
        let (mut ws, _) = tokio_tungstenite::client_async_with_config(req, tcp, Some(cfg))
            .await
            .map_err(|x| format!("websocket handshake: {x}"))?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    let t = t.as_str();
                    if t.starts_with("0{") {
                        ws.send(Message::text("40")).await.map_err(e)?;
                    } else if t.starts_with("40") {
                        return Ok(ws);
                    } else if t.starts_with("44") {
                        return Err(format!("refused: {t}"));
                    } else if t == "2" {
                        ws.send(Message::text("3")).await.map_err(e)?;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(x)) => return Err(format!("before connect: {x}")),
                None => return Err("closed before connect".into()),
            }
        }
    };
    let ws = tokio::time::timeout(Duration::from_secs(30), handshake).await;
    drop(permit);
    let mut ws = match ws {
        Ok(Ok(ws)) => {
            let _ = done.send(Ok(()));
            ws
        }
        Ok(Err(x)) => {
            let _ = done.send(Err(x));
            return;
        }
        Err(_) => {
            let _ = done.send(Err("connect timed out after 30 s".into()));
            return;
        }
    };
    drop(done);
    while let Some(msg) = ws.next().await {
        match msg {
            Ok(Message::Text(t)) => {
                let t = t.as_str();
                if t.starts_with("42") {
                    on_event(&st, t);
                } else if t == "2" {
                    if ws.send(Message::text("3")).await.is_err() {
                        break;
                    }
                } else if t.starts_with('1') || t.starts_with("41") {
                    break;
                }
            }
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => {}
        }
    }
    st.borrow_mut().closed += 1;
}

async fn worker_main(opts: Opts) {
    // `--addr a,b,c`: socket k connects to the (k mod m)-th address (several instances).
    let addrs: Vec<SocketAddr> = opts
        .req("addr")
        .split(',')
        .map(|a| a.parse().expect("--addr host:port[,host:port...]"))
        .collect();
    let path: Rc<str> = opts.s("path", "/socket.io/").into();
    let ip_offset: u64 = opts.n("ip-offset", 0);
    let st = Rc::new(RefCell::new(State {
        recv: 0,
        hist: vec![0; BUCKETS],
        bcast: HashMap::new(),
        closed: 0,
    }));
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut out = tokio::io::stdout();
    while let Ok(Some(line)) = lines.next_line().await {
        let w: Vec<&str> = line.split_whitespace().collect();
        let reply = match w.as_slice() {
            ["connect", first, count, conc] => {
                let first: u64 = first.parse().unwrap();
                let count: u64 = count.parse().unwrap();
                let sem = Arc::new(Semaphore::new(conc.parse().unwrap()));
                let (tx, mut rx) = mpsc::unbounded_channel();
                let start = Instant::now();
                for k in first..first + count {
                    let permit = sem.clone().acquire_owned().await.unwrap();
                    tokio::task::spawn_local(socket_task(
                        addrs[(k % addrs.len() as u64) as usize],
                        path.clone(),
                        k,
                        source_ip(ip_offset, k),
                        st.clone(),
                        permit,
                        tx.clone(),
                    ));
                }
                drop(tx);
                let (mut ok, mut fail, mut err) = (0u64, 0u64, String::new());
                let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
                while ok + fail < count {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(Ok(()))) => ok += 1,
                        Ok(Some(Err(x))) => {
                            fail += 1;
                            if err.is_empty() {
                                err = x;
                            }
                        }
                        _ => break,
                    }
                }
                json!({"ok": ok, "fail": count - ok, "ms": start.elapsed().as_secs_f64() * 1e3, "err": err, "failed_seen": fail})
            }
            ["mark"] => {
                st.borrow_mut().reset();
                json!({"ok": true})
            }
            ["await", bid, expected, timeout_ms] => {
                let bid: u32 = bid.parse().unwrap();
                let expected: u32 = expected.parse().unwrap();
                let until = Instant::now() + Duration::from_millis(timeout_ms.parse().unwrap());
                loop {
                    let (c, m) = st.borrow().bcast.get(&bid).copied().unwrap_or((0, 0));
                    if c >= expected || Instant::now() >= until {
                        break json!({"count": c, "max_ns": m});
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            ["stats"] => {
                let s = st.borrow();
                let hist: Vec<[u64; 2]> = s
                    .hist
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| **c > 0)
                    .map(|(i, c)| [i as u64, *c as u64])
                    .collect();
                let bc: u64 = s.bcast.values().map(|v| v.0 as u64).sum();
                json!({"recv": s.recv, "bcast_recv": bc, "closed": s.closed, "hist": hist})
            }
            ["quit"] => break,
            _ => json!({"error": format!("unknown command {line}")}),
        };
        let mut text = reply.to_string();
        text.push('\n');
        if out.write_all(text.as_bytes()).await.is_err() || out.flush().await.is_err() {
            break;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Coordinator side: workers, publisher, measurements.
// ---------------------------------------------------------------------------------------------

struct Worker {
    _child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    first: u64,
    connected: u64,
}

impl Worker {
    async fn spawn(addr: &str, path: &str, ip_offset: u64, first: u64, max_secs: u64) -> Res<Self> {
        let exe = std::env::current_exe().map_err(e)?;
        let mut child = tokio::process::Command::new(exe)
            .args(["worker", "--addr", addr, "--path", path])
            .args([
                "--ip-offset",
                &ip_offset.to_string(),
                "--max-secs",
                &max_secs.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(e)?;
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        Ok(Worker {
            _child: child,
            stdin,
            stdout,
            first,
            connected: 0,
        })
    }
    async fn send(&mut self, line: &str) -> Res<()> {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .map_err(e)?;
        self.stdin.flush().await.map_err(e)
    }
    async fn recv(&mut self) -> Res<Value> {
        let line = self
            .stdout
            .next_line()
            .await
            .map_err(e)?
            .ok_or("worker died")?;
        serde_json::from_str(&line).map_err(e)
    }
}

/// Sends one command line per worker (all first, then reads all replies).
async fn all(workers: &mut [Worker], line: impl Fn(&Worker) -> Option<String>) -> Res<Vec<Value>> {
    let mut sent = vec![];
    for (i, w) in workers.iter_mut().enumerate() {
        if let Some(l) = line(w) {
            w.send(&l).await?;
            sent.push(i);
        }
    }
    let mut out = vec![];
    for i in sent {
        out.push(workers[i].recv().await?);
    }
    Ok(out)
}

struct Pool {
    addr: String,
    path: String,
    per_proc: u64,
    conc: u64,
    ip_offset: u64,
    max_secs: u64,
    workers: Vec<Worker>,
}

impl Pool {
    fn new(o: &Opts) -> Self {
        let seed = (std::process::id() as u64 * 7919 + now_ns() / 1_000_000) % 3_000_000;
        Pool {
            addr: o.req("addr"),
            path: o.s("path", "/socket.io/"),
            per_proc: o.n("per-proc", 7000),
            conc: o.n("concurrency", 128),
            ip_offset: seed * 16,
            max_secs: o.n("max-secs", 900),
            workers: vec![],
        }
    }
    fn total(&self) -> u64 {
        self.workers.iter().map(|w| w.connected).sum()
    }
    /// Connects users [total, n); returns (connected, failed, seconds, first error).
    async fn grow_to(&mut self, n: u64) -> Res<(u64, u64, f64, String)> {
        let need = n.div_ceil(self.per_proc) as usize;
        while self.workers.len() < need {
            let first = self.workers.len() as u64 * self.per_proc;
            let w =
                Worker::spawn(&self.addr, &self.path, self.ip_offset, first, self.max_secs).await?;
            self.workers.push(w);
        }
        let per = self.per_proc;
        let active = self
            .workers
            .iter()
            .filter(|w| w.first + w.connected < n && w.connected < per)
            .count()
            .max(1) as u64;
        let conc = (self.conc / active).max(8);
        let start = Instant::now();
        let plan: Vec<(u64, u64)> = self
            .workers
            .iter()
            .map(|w| {
                let from = w.first + w.connected;
                let to = (w.first + per).min(n);
                (from, to.saturating_sub(from))
            })
            .collect();
        let replies = all(&mut self.workers, |w| {
            let i = (w.first / per) as usize;
            let (from, count) = plan[i];
            (count > 0).then(|| format!("connect {from} {count} {conc}"))
        })
        .await?;
        let secs = start.elapsed().as_secs_f64();
        let mut err = String::new();
        let (mut ok, mut fail) = (0, 0);
        let mut r = replies.into_iter();
        for (i, w) in self.workers.iter_mut().enumerate() {
            if plan[i].1 == 0 {
                continue;
            }
            let v = r.next().unwrap();
            let o = v["ok"].as_u64().unwrap_or(0);
            w.connected += o;
            ok += o;
            fail += v["fail"].as_u64().unwrap_or(0);
            if err.is_empty() {
                err = v["err"].as_str().unwrap_or("").to_string();
            }
        }
        Ok((ok, fail, secs, err))
    }
    async fn mark(&mut self) -> Res<()> {
        all(&mut self.workers, |_| Some("mark".into()))
            .await
            .map(|_| ())
    }
    /// Merged per-user stats since the last mark: (received, histogram).
    async fn stats(&mut self) -> Res<(u64, u64, Vec<u64>)> {
        let replies = all(&mut self.workers, |_| Some("stats".into())).await?;
        let mut hist = vec![0u64; BUCKETS];
        let (mut recv, mut closed) = (0, 0);
        for v in replies {
            recv += v["recv"].as_u64().unwrap_or(0) - v["bcast_recv"].as_u64().unwrap_or(0);
            closed += v["closed"].as_u64().unwrap_or(0);
            for p in v["hist"].as_array().into_iter().flatten() {
                hist[p[0].as_u64().unwrap() as usize] += p[1].as_u64().unwrap();
            }
        }
        Ok((recv, closed, hist))
    }
    /// Waits for broadcast `bid` to reach every connected socket; (delivered, max latency ns).
    async fn await_bcast(&mut self, bid: u32, timeout_ms: u64) -> Res<(u64, u64)> {
        let replies = all(&mut self.workers, |w| {
            Some(format!("await {bid} {} {timeout_ms}", w.connected))
        })
        .await?;
        let mut count = 0;
        let mut max = 0;
        for v in replies {
            count += v["count"].as_u64().unwrap_or(0);
            max = max.max(v["max_ns"].as_u64().unwrap_or(0));
        }
        Ok((count, max))
    }
}

fn percentile_us(hist: &[u64], p: f64) -> f64 {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return f64::NAN;
    }
    let rank = ((total as f64) * p).ceil().max(1.0) as u64;
    let mut acc = 0;
    for (i, c) in hist.iter().enumerate() {
        acc += c;
        if acc >= rank {
            return (i as f64 + 0.5) * BUCKET_NS as f64 / 1e3;
        }
    }
    f64::NAN
}

fn pct_sorted(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

/// HTTP/1.1 client on one keep-alive connection over the Unix socket.
struct Publisher {
    path: PathBuf,
    tx: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

/// How [`Publisher::post`]'s error starts for a `503` with `Retry-After` (then the seconds).
const REFUSED: &str = "refused, retry after s: ";

impl Publisher {
    async fn connect(path: &str) -> Res<Self> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|x| format!("connect {path}: {x}"))?;
        let (tx, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(e)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Publisher {
            path: path.into(),
            tx,
        })
    }
    async fn post(&mut self, uri: &str, body: Vec<u8>) -> Res<Value> {
        if self.tx.ready().await.is_err() {
            *self = Publisher::connect(self.path.to_str().unwrap()).await?;
        }
        let req = hyper::Request::post(uri)
            .header("host", "sockgate")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(e)?;
        let resp = tokio::time::timeout(Duration::from_secs(10), self.tx.send_request(req))
            .await
            .map_err(|_| "publish timed out".to_string())?
            .map_err(e)?;
        let status = resp.status();
        // A publish refused for backpressure (an instance too far behind): `REFUSED<secs>`.
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let body = resp.into_body().collect().await.map_err(e)?.to_bytes();
        if let (hyper::StatusCode::SERVICE_UNAVAILABLE, Some(secs)) = (status, retry_after) {
            return Err(format!("{REFUSED}{secs}"));
        }
        if !status.is_success() {
            return Err(format!(
                "{uri} → {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        serde_json::from_slice(&body).or(Ok(Value::Null))
    }
}

// /proc readings ----------------------------------------------------------------------------

fn rss_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .map(|p| {
            std::fs::read_to_string(format!("/proc/{p}/status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find(|l| l.starts_with("VmRSS:"))
                        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
                })
                .unwrap_or(0)
        })
        .sum()
}

/// CPU time (ns) of every thread of the processes, from /proc/<pid>/task/*/schedstat.
fn cpu_ns(pids: &[u32]) -> u64 {
    let mut total = 0;
    for p in pids {
        if let Ok(dir) = std::fs::read_dir(format!("/proc/{p}/task")) {
            for t in dir.flatten() {
                if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
                    total += s
                        .split_whitespace()
                        .next()
                        .and_then(|x| x.parse::<u64>().ok())
                        .unwrap_or(0);
                }
            }
        }
    }
    total
}

fn pids(o: &Opts) -> Vec<u32> {
    o.s("server-pids", "")
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().expect("--server-pids"))
        .collect()
}

// Publishing ---------------------------------------------------------------------------------

fn single_body(user: u64) -> Vec<u8> {
    format!(
        r#"{{"userId":"{user}","event":"notification","data":{{"t":{}}}}}"#,
        now_ns()
    )
    .into_bytes()
}

fn batch_body(first_user: u64, n_users: u64, size: u64) -> Vec<u8> {
    let t = now_ns();
    let mut s = String::with_capacity(size as usize * 64 + 16);
    s.push_str(r#"{"messages":["#);
    for i in 0..size {
        if i > 0 {
            s.push(',');
        }
        let u = (first_user + i) % n_users;
        s.push_str(&format!(
            r#"{{"userId":"{u}","event":"notification","data":{{"t":{t}}}}}"#
        ));
    }
    s.push_str("]}");
    s.into_bytes()
}

/// One paced step: `rate` messages/s for `secs`, singles (batch = 1) or batches.
async fn rate_step(
    pool: &mut Pool,
    publ: &mut Publisher,
    rate: f64,
    secs: f64,
    batch: u64,
) -> Res<Value> {
    let n_users = pool.total();
    pool.mark().await?;
    let total = (rate * secs).round() as u64;
    let start = Instant::now();
    let limit = Duration::from_secs_f64(secs * 2.0 + 1.0);
    let mut sent = 0u64;
    let mut user = 0u64;
    let mut errors = 0u64;
    while sent < total && start.elapsed() < limit {
        let due = ((start.elapsed().as_secs_f64() * rate) as u64).min(total);
        if sent >= due {
            tokio::time::sleep(Duration::from_micros(500)).await;
            continue;
        }
        let r = if batch <= 1 {
            let b = single_body(user % n_users);
            user += 1;
            publ.post("/publish", b).await.map(|_| 1)
        } else {
            let k = batch.min(total - sent);
            let b = batch_body(user, n_users, k);
            user += k;
            publ.post("/publish/batch", b).await.map(|_| k)
        };
        match r {
            Ok(k) => sent += k,
            Err(_) => {
                errors += 1;
                if errors > 10 {
                    break;
                }
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    // Let the last deliveries land (bounded).
    let mut st = pool.stats().await?;
    let wait_until = Instant::now() + Duration::from_secs(3);
    while st.0 < sent && Instant::now() < wait_until {
        tokio::time::sleep(Duration::from_millis(100)).await;
        st = pool.stats().await?;
    }
    let (recv, _closed, hist) = st;
    let p50 = percentile_us(&hist, 0.50);
    let p99 = percentile_us(&hist, 0.99);
    let achieved = sent as f64 / elapsed;
    let pass =
        sent == total && recv >= sent && achieved >= rate * 0.95 && p99 <= 50_000.0 && errors == 0;
    Ok(
        json!({"rate": rate, "sent": sent, "delivered": recv, "achieved": achieved,
              "p50_us": p50, "p99_us": p99, "errors": errors, "pass": pass}),
    )
}

/// Highest passing rate: a geometric ladder up to the first failure, then bisection.
async fn rate_search(
    pool: &mut Pool,
    publ: &mut Publisher,
    batch: u64,
    secs: f64,
    max_rate: f64,
    start: f64,
) -> Res<Value> {
    let mut steps = vec![];
    let mut best = 0.0f64;
    let mut fail: Option<f64> = None;
    let mut rate = start;
    while rate <= max_rate {
        let r = rate_step(pool, publ, rate, secs, batch).await?;
        eprintln!("  rate step batch={batch} {}", r);
        let pass = r["pass"].as_bool().unwrap();
        steps.push(r);
        if pass {
            best = rate;
            rate *= 2.0;
        } else {
            fail = Some(rate);
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    if let Some(mut hi) = fail {
        let mut lo = best;
        for _ in 0..2 {
            if lo <= 0.0 {
                break;
            }
            let mid = ((lo * hi).sqrt() / 100.0).round() * 100.0;
            if mid <= lo || mid >= hi {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            let r = rate_step(pool, publ, mid, secs, batch).await?;
            eprintln!("  rate step batch={batch} {}", r);
            if r["pass"].as_bool().unwrap() {
                lo = mid;
                best = mid;
            } else {
                hi = mid;
            }
            steps.push(r);
        }
    }
    Ok(json!({"batch": batch, "best_rate": best, "capped": fail.is_none(), "steps": steps}))
}

async fn gc(o: &Opts, publ: &mut Publisher) {
    if o.s("gc", "0") == "1" {
        let _ = publ.post("/__gc", b"{}".to_vec()).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = publ.post("/__gc", b"{}".to_vec()).await;
    }
}

/// Broadcasts once per id in `bids`, 100 ms apart, each waited for until the pool's `total`
/// sockets have it (10 s at most). Returns each one's last-delivery latency (ms) and how many
/// deliveries were missing in all.
async fn broadcast_each(
    pool: &mut Pool,
    publ: &mut Publisher,
    bids: std::ops::RangeInclusive<u32>,
    total: u64,
) -> Res<(Vec<f64>, u64)> {
    let (mut lasts, mut lost) = (vec![], 0u64);
    // `LOADGEN_BROADCAST_USER=<id>`: publish to that user's room instead of to everyone (with
    // `LOADGEN_COOKIES=1` every socket is user 0's): a room publish, kept in the history.
    let target = match std::env::var("LOADGEN_BROADCAST_USER") {
        Ok(user) => format!(r#""userId":"{user}""#),
        Err(_) => r#""broadcast":true"#.to_owned(),
    };
    for bid in bids {
        let body = format!(
            r#"{{{target},"event":"notification","data":{{"t":{},"b":{bid}}}}}"#,
            now_ns()
        );
        publ.post("/publish", body.into_bytes()).await?;
        let (count, max_ns) = pool.await_bcast(bid, 10_000).await?;
        lost += total - count.min(total);
        lasts.push(max_ns as f64 / 1e6);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((lasts, lost))
}

async fn sockets_main(o: Opts) -> Res<()> {
    let pids = pids(&o);
    let levels: Vec<u64> = o
        .req("levels")
        .split(',')
        .map(|s| s.parse().unwrap())
        .collect();
    let broadcasts: u32 = o.n("broadcasts", 20);
    let step_secs: f64 = o.n("step-secs", 3.0);
    let settle_ms: u64 = o.n("settle-ms", 2000);
    let mut publ = Publisher::connect(&o.req("publish-socket")).await?;
    let mut pool = Pool::new(&o);
    let mut out = json!({"levels": [], "pids": pids});

    tokio::time::sleep(Duration::from_millis(500)).await;
    gc(&o, &mut publ).await;
    let rss0 = rss_kib(&pids);
    out["rss0_kib"] = json!(rss0);
    let mut bid = 0u32;
    for &n in &levels {
        let before = pool.total();
        let (ok, fail, secs, err) = pool.grow_to(n).await?;
        let total = pool.total();
        eprintln!("connected {ok} (failed {fail}) in {secs:.2} s, total {total} {err}");
        if total < n {
            return Err(format!(
                "only {total} of {n} sockets connected; first error: {err}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(settle_ms)).await;
        gc(&o, &mut publ).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss = rss_kib(&pids);
        let per_socket = (rss as f64 - rss0 as f64) / total as f64;
        // Broadcasts to all. With --mark-dir, `broadcasts.start` / `broadcasts.end` appear
        // there around them, for a profiler to measure the same window.
        let mark = |name: &str| {
            if let Some(dir) = o.0.get("mark-dir") {
                let _ = std::fs::write(format!("{dir}/{name}"), "");
            }
        };
        mark("broadcasts.start");
        let cpu0 = cpu_ns(&pids);
        let (lasts, lost) =
            broadcast_each(&mut pool, &mut publ, bid + 1..=bid + broadcasts, total).await?;
        bid += broadcasts;
        let cpu = cpu_ns(&pids) - cpu0;
        mark("broadcasts.end");
        if o.0.contains_key("mark-dir") {
            // Keep the sockets open while the profiler stops and reads the server's CPU:
            // closing them now puts the server's teardown of every socket (≈ 0.9 µs per
            // delivery of 30 broadcasts to 5,000) into the measured window.
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        let recipients = broadcasts as u64 * total;
        let lv = json!({
            "n": total, "connected_now": ok, "connect_secs": secs, "connect_rate": (total - before) as f64 / secs,
            "connect_failures": fail, "rss_kib": rss, "rss_per_socket_kib": per_socket,
            "bcast_last_ms": lasts, "bcast_p50_ms": pct_sorted(&mut lasts.clone(), 0.5),
            "bcast_p99_ms": pct_sorted(&mut lasts.clone(), 0.99), "bcast_lost": lost,
            "bcast_cpu_us_per_recipient": cpu as f64 / 1e3 / recipients as f64,
        });
        eprintln!("level {lv}");
        out["levels"].as_array_mut().unwrap().push(lv);
    }
    if o.s("rate-search", "1") == "1" {
        let max_rate: f64 = o.n("max-rate", 400_000.0);
        out["publish_single"] = rate_search(
            &mut pool,
            &mut publ,
            1,
            step_secs,
            max_rate,
            o.n("single-start", 1000.0),
        )
        .await?;
        out["publish_batch"] = rate_search(
            &mut pool,
            &mut publ,
            100,
            step_secs,
            max_rate,
            o.n("batch-start", 2000.0),
        )
        .await?;
    }
    let text = serde_json::to_string_pretty(&out).unwrap();
    std::fs::write(o.req("out"), text).map_err(e)?;
    Ok(())
}

/// Steady stream for the "app under realtime load" phase.
async fn stream_main(o: Opts) -> Res<()> {
    let n: u64 = o.req("n").parse().unwrap();
    let rate: f64 = o.n("rate", 1000.0);
    let batch: u64 = o.n("batch", 50);
    let duration: f64 = o.n("duration", 120.0);
    let stop_file = PathBuf::from(o.req("stop-file"));
    let mut publ = Publisher::connect(&o.req("publish-socket")).await?;
    let mut pool = Pool::new(&o);
    let (_, _, _, err) = pool.grow_to(n).await?;
    if pool.total() < n {
        return Err(format!(
            "only {} of {n} sockets connected: {err}",
            pool.total()
        ));
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    pool.mark().await?;
    std::fs::write(o.req("ready-file"), "ready\n").map_err(e)?;
    let start = Instant::now();
    let mut sent = 0u64;
    let mut user = 0u64;
    while start.elapsed().as_secs_f64() < duration && !stop_file.exists() {
        let due = (start.elapsed().as_secs_f64() * rate) as u64;
        if sent >= due {
            tokio::time::sleep(Duration::from_millis(2)).await;
            continue;
        }
        let k = batch.min(due - sent).max(1);
        publ.post("/publish/batch", batch_body(user, n, k)).await?;
        user += k;
        sent += k;
    }
    let elapsed = start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (recv, closed, hist) = pool.stats().await?;
    let out = json!({"n": n, "rate": rate, "sent": sent, "delivered": recv, "secs": elapsed, "closed": closed,
        "p50_us": percentile_us(&hist, 0.5), "p99_us": percentile_us(&hist, 0.99)});
    std::fs::write(o.req("out"), serde_json::to_string_pretty(&out).unwrap()).map_err(e)?;
    Ok(())
}

/// CPU of each process: (schedstat ns of every thread, utime ticks, stime ticks).
fn cpu_each(pids: &[u32]) -> Vec<[u64; 3]> {
    pids.iter()
        .map(|&p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            // Fields after the `(comm)`: state is field 3, utime 14, stime 15.
            let rest = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
            let f: Vec<&str> = rest.split_whitespace().collect();
            let tick = |i: usize| f.get(i - 3).and_then(|x| x.parse().ok()).unwrap_or(0);
            [cpu_ns(&[p]), tick(14), tick(15)]
        })
        .collect()
}

/// Per-process CPU between two `cpu_each` readings, per `units` (messages or recipients):
/// `[{"us": total µs per unit, "user_us": .., "sys_us": ..}]` in --server-pids order.
fn cpu_per(before: &[[u64; 3]], after: &[[u64; 3]], units: u64) -> Value {
    let hz = 100.0; // USER_HZ on Linux
    let u = units.max(1) as f64;
    Value::Array(
        before
            .iter()
            .zip(after)
            .map(|(b, a)| {
                json!({"us": (a[0] - b[0]) as f64 / 1e3 / u,
                       "user_us": (a[1] - b[1]) as f64 / hz * 1e6 / u,
                       "sys_us": (a[2] - b[2]) as f64 / hz * 1e6 / u})
            })
            .collect(),
    )
}

/// Cross-instance measurements for bench/cluster-cost.sh and bench/cluster-scale.sh. N sockets
/// (one user each) on --addr (one instance, or `a,b,c`), per-user messages through
/// --publish-socket (batches of --batch), then, each optional:
///   --warmup-secs W the first rate for W s first, not reported
///   --rates R1,R2   fixed-rate steps of --secs each
///   --ladder-max M  rates --ladder-start, +--ladder-step, … ≤ M (--step-secs each); a step
///                   passes when every message arrives, the publisher keeps ≥ 95 % of the pace
///                   and p50 ≤ --p50-ms; a failed step is retried once, the second failure ends
///                   the ladder; best = the highest passing rate
///   --flood C       C messages as fast as one keep-alive connection publishes them (bounded by
///                   --flood-secs), then up to 10 s for deliveries: delivered %, rates
///   --broadcasts B  B broadcasts to everyone, one at a time: last delivery, CPU per recipient
/// CPU µs per message (per recipient for broadcasts) of every --server-pids process per phase.
async fn cluster_main(o: Opts) -> Res<()> {
    let n: u64 = o.req("n").parse().map_err(e)?;
    let pids = pids(&o);
    let batch: u64 = o.n("batch", 50);
    let mut publ = Publisher::connect(&o.req("publish-socket")).await?;
    let mut pool = Pool::new(&o);
    let (ok, fail, secs, err) = pool.grow_to(n).await?;
    eprintln!("cluster: connected {ok} (failed {fail}) in {secs:.2} s {err}");
    if pool.total() < n {
        return Err(format!(
            "only {} of {n} sockets connected: {err}",
            pool.total()
        ));
    }
    tokio::time::sleep(Duration::from_millis(o.n("settle-ms", 1500))).await;
    let mut out = json!({"n": n, "pids": pids, "batch": batch, "connect_secs": secs});
    let step = async |pool: &mut Pool, publ: &mut Publisher, rate: f64, secs: f64| -> Res<Value> {
        let c0 = cpu_each(&pids);
        let mut r = rate_step(pool, publ, rate, secs, batch).await?;
        let c1 = cpu_each(&pids);
        r["cpu"] = cpu_per(&c0, &c1, r["sent"].as_u64().unwrap_or(0));
        Ok(r)
    };
    let rates: Vec<f64> = o
        .s("rates", "")
        .split(',')
        .filter(|x| !x.is_empty())
        .map(|x| x.parse().expect("--rates"))
        .collect();
    // Warm-up (not reported): the first rate for --warmup-secs, so Node's JIT and every
    // process's buffers and caches are warm before anything is measured.
    let warmup: f64 = o.n("warmup-secs", 0.0);
    if warmup > 0.0 {
        let r = rate_step(
            &mut pool,
            &mut publ,
            rates.first().copied().unwrap_or(1000.0),
            warmup,
            batch,
        )
        .await?;
        eprintln!("cluster: warm-up {r}");
        out["warmup"] = r;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut fixed = vec![];
    for rate in rates {
        let r = step(&mut pool, &mut publ, rate, o.n("secs", 8.0)).await?;
        eprintln!("cluster: fixed {r}");
        fixed.push(r);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    out["fixed"] = json!(fixed);
    let ladder_max: f64 = o.n("ladder-max", 0.0);
    if ladder_max > 0.0 {
        let p50_max_us = o.n("p50-ms", 5.0) * 1e3;
        let step_secs: f64 = o.n("step-secs", 2.0);
        let mut rate: f64 = o.n("ladder-start", 1000.0);
        let inc: f64 = o.n("ladder-step", 1000.0);
        let (mut best, mut steps, mut retried) = (0.0f64, vec![], false);
        while rate <= ladder_max {
            let mut r = step(&mut pool, &mut publ, rate, step_secs).await?;
            let pass = r["sent"].as_f64() == Some((rate * step_secs).round())
                && r["delivered"].as_u64() >= r["sent"].as_u64()
                && r["achieved"].as_f64().unwrap_or(0.0) >= rate * 0.95
                && r["p50_us"].as_f64().is_some_and(|p| p <= p50_max_us)
                && r["errors"].as_u64() == Some(0);
            r["pass"] = json!(pass);
            eprintln!("cluster: ladder {r}");
            steps.push(r);
            // After a failed step, let its stragglers land before the next step's mark.
            tokio::time::sleep(Duration::from_millis(if pass { 300 } else { 2000 })).await;
            if pass {
                best = rate;
                rate += inc;
                retried = false;
            } else if !retried {
                retried = true;
            } else {
                break;
            }
        }
        out["ladder"] = json!({"best_rate": best, "capped": rate > ladder_max, "p50_ms_max": p50_max_us / 1e3, "steps": steps});
    }
    let flood: u64 = o.n("flood", 0);
    if flood > 0 {
        let limit = Duration::from_secs_f64(o.n("flood-secs", 30.0));
        pool.mark().await?;
        let c0 = cpu_each(&pids);
        let start = Instant::now();
        let (mut sent, mut user, mut errors, mut refused) = (0u64, 0u64, 0u64, 0u64);
        while sent < flood && start.elapsed() < limit {
            let k = batch.min(flood - sent);
            match publ.post("/publish/batch", batch_body(user, n, k)).await {
                Ok(_) => sent += k,
                // Backpressure: the same batch again once Retry-After has passed.
                Err(x) if x.starts_with(REFUSED) => {
                    refused += 1;
                    let secs = x[REFUSED.len()..].parse().unwrap_or(1);
                    tokio::time::sleep(Duration::from_secs(secs)).await;
                    continue;
                }
                Err(x) => {
                    errors += 1;
                    eprintln!("cluster: flood publish error {x}");
                    if errors > 10 {
                        break;
                    }
                }
            }
            user += k;
        }
        let publish_secs = start.elapsed().as_secs_f64();
        // Deliveries: until all arrived, or 2 s without progress, or 10 s.
        let (mut recv, mut last_change) = (0u64, Instant::now());
        let mut done_at = start.elapsed().as_secs_f64();
        let until = Instant::now() + Duration::from_secs(10);
        let hist = loop {
            let (r, _, h) = pool.stats().await?;
            if r != recv {
                recv = r;
                last_change = Instant::now();
                done_at = start.elapsed().as_secs_f64();
            }
            if recv >= sent
                || last_change.elapsed() > Duration::from_secs(2)
                || Instant::now() > until
            {
                break h;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let c1 = cpu_each(&pids);
        let r = json!({"count": flood, "sent": sent, "delivered": recv, "errors": errors, "refused": refused,
            "delivered_pct": recv as f64 * 100.0 / sent.max(1) as f64,
            "publish_secs": publish_secs, "publish_rate": sent as f64 / publish_secs,
            "last_delivery_secs": done_at, "delivered_rate": recv as f64 / done_at.max(1e-9),
            "p50_us": percentile_us(&hist, 0.5), "p99_us": percentile_us(&hist, 0.99),
            "cpu": cpu_per(&c0, &c1, sent)});
        eprintln!("cluster: flood {r}");
        out["flood"] = r;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let broadcasts: u32 = o.n("broadcasts", 0);
    if broadcasts > 0 {
        let total = pool.total();
        let c0 = cpu_each(&pids);
        let (lasts, lost) = broadcast_each(&mut pool, &mut publ, 1..=broadcasts, total).await?;
        let c1 = cpu_each(&pids);
        let r = json!({"count": broadcasts, "lost": lost, "last_ms": lasts,
            "p50_ms": pct_sorted(&mut lasts.clone(), 0.5), "p99_ms": pct_sorted(&mut lasts.clone(), 0.99),
            "cpu_per_recipient": cpu_per(&c0, &c1, broadcasts as u64 * total)});
        eprintln!("cluster: broadcasts {r}");
        out["broadcast"] = r;
    }
    std::fs::write(o.req("out"), serde_json::to_string_pretty(&out).unwrap()).map_err(e)?;
    Ok(())
}

async fn smoke_main(o: Opts) -> Res<()> {
    let n: u64 = o.n("n", 200);
    let singles: u64 = o.n("singles", 10);
    let mut publ = Publisher::connect(&o.req("publish-socket")).await?;
    let mut pool = Pool::new(&o);
    let (ok, fail, secs, err) = pool.grow_to(n).await?;
    println!("smoke: {ok} sockets authenticated in {secs:.2} s ({fail} failed)");
    if pool.total() != n {
        return Err(format!(
            "only {} of {n} sockets connected; first error: {err}",
            pool.total()
        ));
    }
    let body = format!(r#"{{"broadcast":true,"data":{{"t":{},"b":1}}}}"#, now_ns());
    let r = publ.post("/publish", body.into_bytes()).await?;
    let (count, max_ns) = pool.await_bcast(1, 10_000).await?;
    println!(
        "smoke: broadcast reached {count}/{n} sockets (recipients reported {}), last after {:.1} ms",
        r["recipients"],
        max_ns as f64 / 1e6
    );
    if count != n {
        return Err(format!("broadcast reached {count} of {n} sockets"));
    }
    pool.mark().await?;
    for i in 0..singles {
        let user = (i * 37) % n;
        let r = publ.post("/publish", single_body(user)).await?;
        if r["recipients"].as_u64() != Some(1) {
            return Err(format!("publish to user {user}: {r}"));
        }
    }
    let r = publ.post("/publish/batch", batch_body(0, n, 20)).await?;
    let want = singles + 20;
    let mut got = 0;
    for _ in 0..50 {
        got = pool.stats().await?.0;
        if got >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("smoke: per-user publishes delivered {got}/{want} (batch answered {r})");
    if got != want {
        return Err(format!("per-user publishes: {got} of {want} delivered"));
    }
    println!("smoke: ok");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Fast upstream for the proxy benchmark.
// ---------------------------------------------------------------------------------------------
async fn upstream_main(o: Opts) {
    let addr: SocketAddr = o.s("listen", "127.0.0.1:4400").parse().unwrap();
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
    println!("upstream listening on {addr}");
    let body = Bytes::from_static(b"hello from the fast upstream\n");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        stream.set_nodelay(true).ok();
        let body = body.clone();
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |_req: hyper::Request<hyper::body::Incoming>| {
                    let body = body.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            hyper::Response::builder()
                                .header("content-type", "text/plain")
                                .body(Full::new(body))
                                .unwrap(),
                        )
                    }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
}
