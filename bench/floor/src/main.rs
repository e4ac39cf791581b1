//! The floor of a broadcast: what writing one pre-encoded WebSocket frame to each of N idle
//! TCP sockets costs when nothing else happens — one loop, a non-blocking `write` per socket,
//! no task per socket, no queue, no encoding. `bench/fanout-cost.sh` runs it beside
//! sockgate's broadcast to as many sockets, so the gap between the two is sockgate's own work.
//!
//!   floor --n 10000 --rounds 30 --gap-ms 100 [--max-secs 120]    the writer: prints
//!       `listening <port>`, waits for n connections, prints `accepted <n>`, writes one
//!       frame to every socket per round (a second later), then prints its result line
//!   floor --connect <port> --n 10000 [--max-secs 120]             the readers (another process,
//!       so each side can be pinned to its own core): n connections from 127.x.y.z, reading
//!
//! The writer is one thread with a current-thread runtime. Its result: deliveries, and its
//! user and system CPU µs per delivery (from /proc/thread-self/stat, in clock ticks). Bounded
//! by `--max-secs`.

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// A server WebSocket text frame (FIN, opcode 1, unmasked) carrying a 57-byte Socket.IO event,
/// as sockgate sends a broadcast.
fn frame() -> Vec<u8> {
    let payload = br#"42["n",{"i":1,"title":"a broadcast of the usual size!!"}]"#;
    let mut frame = vec![0x81, payload.len() as u8];
    frame.extend_from_slice(payload);
    frame
}

fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse().unwrap_or_else(|_| {
                eprintln!("floor: {name} {v}: not a number");
                std::process::exit(2)
            })
        })
        .unwrap_or(default)
}

/// This thread's (user, system) CPU time in clock ticks.
fn thread_cpu() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|v| v.parse().ok()).unwrap_or(0);
    (field(11), field(12)) // utime, stime: fields 14 and 15 of stat(5)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n = arg(&args, "--n", 1000) as usize;
    let max_secs = arg(&args, "--max-secs", 120);
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(max_secs));
        eprintln!("floor: time limit of {max_secs} s reached");
        std::process::exit(3);
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if args.iter().any(|a| a == "--connect") {
        let port = arg(&args, "--connect", 0) as u16;
        rt.block_on(read_all(SocketAddr::from((Ipv4Addr::LOCALHOST, port)), n));
        return;
    }
    let rounds = arg(&args, "--rounds", 30);
    let gap = Duration::from_millis(arg(&args, "--gap-ms", 100));
    let (deliveries, (user, system)) = rt.block_on(write_all(n, rounds, gap));
    let per = |ticks: u64| ticks as f64 * 1e6 / ticks_per_sec() / deliveries.max(1) as f64;
    println!(
        "floor n={n} deliveries={deliveries} user_us={:.2} sys_us={:.2} total_us={:.2}",
        per(user),
        per(system),
        per(user + system)
    );
}

/// Accepts `n` connections, then writes the frame to each, `rounds` times, `gap` apart.
/// Returns the deliveries and this thread's (user, system) ticks spent writing.
async fn write_all(n: usize, rounds: u64, gap: Duration) -> (u64, (u64, u64)) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("local addr").port();
    println!("listening {port}");
    let mut sockets = Vec::with_capacity(n);
    while sockets.len() < n {
        let (socket, _) = listener.accept().await.expect("accept");
        socket.set_nodelay(true).expect("nodelay");
        sockets.push(socket);
    }
    // Time for a profiler to attach before the writes (bench/fanout-cost.sh waits for this).
    println!("accepted {n}");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let frame = frame();
    let before = thread_cpu();
    let mut deliveries = 0u64;
    for _ in 0..rounds {
        for socket in &mut sockets {
            write_frame(socket, &frame).await;
            deliveries += 1;
        }
        tokio::time::sleep(gap).await;
    }
    let after = thread_cpu();
    (deliveries, (after.0 - before.0, after.1 - before.1))
}

/// One write when the kernel takes it whole (the case that counts); waits only when it does not.
async fn write_frame(socket: &mut TcpStream, frame: &[u8]) {
    match socket.try_write(frame) {
        Ok(written) if written == frame.len() => {}
        Ok(written) => socket.write_all(&frame[written..]).await.expect("write"),
        Err(e) if e.kind() == ErrorKind::WouldBlock => {
            socket.write_all(frame).await.expect("write")
        }
        Err(e) => panic!("write: {e}"),
    }
}

fn ticks_per_sec() -> f64 {
    // CLK_TCK is 100 on every Linux this runs on; read it from the environment when given.
    std::env::var("CLK_TCK")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100.0)
}

/// The readers: `n` connections from 127.x.y.z, each reading until the writer closes; then
/// prints how many frames arrived.
async fn read_all(addr: SocketAddr, n: usize) {
    let received = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::with_capacity(n);
    for i in 0..n {
        let source = Ipv4Addr::new(
            127,
            1 + (i / 62_500) as u8,
            ((i / 250) % 250) as u8 + 1,
            (i % 250) as u8 + 1,
        );
        let socket = TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::new(source.into(), 0))
            .expect("bind source");
        let mut stream = socket.connect(addr).await.expect("connect");
        let received = received.clone();
        readers.push(tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(read) = stream.read(&mut buf).await {
                if read == 0 {
                    break;
                }
                received.fetch_add(read as u64, Ordering::Relaxed);
            }
        }));
    }
    for reader in readers {
        let _ = reader.await;
    }
    let frames = received.load(Ordering::Relaxed) / frame().len() as u64;
    println!("received {frames}");
}
