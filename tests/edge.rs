//! Attacks on the public edge by clients that never authenticate, performed at the wire level
//! against a real sockgate in front of the real Node fixture: oversized and binary Socket.IO
//! traffic, idle HTTP/2 connections, trickled and malformed uploads, and header tricks.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http::Request;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A session the app accepts (the fixture's `sid=user-NAME`): handshakes are authenticated, so
/// the clients attacking the Engine.IO layer here are logged-in users who never send a
/// Socket.IO CONNECT.
const ATTACKER_COOKIE: &str = "sid=user-mallory";

/// An Engine.IO WebSocket that has received its open packet and sends nothing else yet: the
/// state of a client that never sends a Socket.IO CONNECT.
async fn engine_io_socket(port: u16) -> Ws {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket")
        .into_client_request()
        .expect("WebSocket request");
    req.headers_mut()
        .insert("cookie", ATTACKER_COOKIE.parse().expect("cookie"));
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("WebSocket handshake");
    let open = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("open packet in time")
        .expect("a message")
        .expect("ok");
    assert!(open.to_text().unwrap_or("").starts_with('0'), "{open:?}");
    ws
}

/// Whether the server ends the WebSocket within `limit` (a close frame, an error or EOF).
async fn closed_within(ws: &mut Ws, limit: Duration) -> bool {
    let ended = async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    };
    tokio::time::timeout(limit, ended).await.is_ok()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// A Socket.IO event header announcing `attachments` binary attachments, padded to `pad`
/// bytes of payload: until the attachments arrive, Socket.IO keeps it pending.
fn attachment_header(attachments: usize, pad: usize) -> String {
    let placeholders: Vec<String> = (0..attachments)
        .map(|n| format!("{{\"_placeholder\":true,\"num\":{n}}}"))
        .collect();
    format!(
        "45{attachments}-[\"upload\",\"{}\",{}]",
        "a".repeat(pad),
        placeholders.join(",")
    )
}

#[tokio::test]
async fn binary_and_oversized_client_messages_close_the_websocket() {
    let app = fixture(&[]);
    let sg = sockgate(app.port, &[]);

    let mut binary = engine_io_socket(sg.port()).await;
    binary
        .send(Message::text(attachment_header(2, 0)))
        .await
        .expect("send");
    binary
        .send(Message::binary(vec![7u8; 100]))
        .await
        .expect("send");
    assert!(
        closed_within(&mut binary, Duration::from_secs(5)).await,
        "a binary attachment was accepted"
    );

    let mut big = engine_io_socket(sg.port()).await;
    let _ = big
        .send(Message::text(attachment_header(1, 64 * 1024)))
        .await;
    assert!(
        closed_within(&mut big, Duration::from_secs(5)).await,
        "a 64 KiB client message was accepted"
    );

    // A small, legitimate packet keeps the socket open.
    let mut small = engine_io_socket(sg.port()).await;
    small.send(Message::text("3")).await.expect("send");
    assert!(
        !closed_within(&mut small, Duration::from_millis(800)).await,
        "a pong closed the socket"
    );
}

#[tokio::test]
async fn binary_attachment_floods_do_not_grow_memory() {
    let app = fixture(&[]);
    let sg = sockgate(app.port, &[]);
    let pid = sg.proc.pid();
    // Warm up: one socket through its whole life, so lazily built state is not counted.
    drop(engine_io_socket(sg.port()).await);
    let before = rss_kib(pid);

    // 20 sockets each announce 10 attachments and send 9 of 1 MB, then hold on.
    let floods: Vec<_> = (0..20)
        .map(|_| {
            let port = sg.port();
            tokio::spawn(async move {
                let mut ws = engine_io_socket(port).await;
                let _ = ws.send(Message::text(attachment_header(10, 0))).await;
                for _ in 0..9 {
                    if ws
                        .send(Message::binary(vec![1u8; 1_000_000]))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                ws
            })
        })
        .collect();
    let mut held = Vec::new();
    for flood in floods {
        let ws = tokio::time::timeout(Duration::from_secs(60), flood)
            .await
            .expect("flood ends")
            .expect("task");
        held.push(ws);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = rss_kib(pid);
    drop(held);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let after = rss_kib(pid);
    eprintln!(
        "binary flood: RSS {} MiB before, {} MiB with the floods open, {} MiB after",
        before / 1024,
        during / 1024,
        after / 1024
    );
    assert!(
        during.max(after).saturating_sub(before) < 48 * 1024,
        "RSS {} MiB before, {} MiB with the floods open, {} MiB after they closed",
        before / 1024,
        during / 1024,
        after / 1024
    );
    assert_eq!(get(sg.port(), "/").await.status(), 200);
}

/// A logged-in client that floods WebSocket pings and never reads makes sockgate answer each
/// with a pong nobody takes: the pongs the connection does not accept must not pile up in
/// memory, and such a client is closed as a slow consumer.
#[tokio::test]
async fn websocket_ping_floods_from_a_client_that_never_reads_are_closed() {
    const PINGS: usize = 200_000;
    let app = fixture(&[]);
    let sg = sockgate(app.port, &[]);
    let pid = sg.proc.pid();
    drop(engine_io_socket(sg.port()).await);
    let before = rss_kib(pid);

    let mut ws = engine_io_socket(sg.port()).await;
    // The largest control frame: each pong is 127 bytes, 25 MB for the whole flood, far more
    // than the kernel's socket buffers hold.
    let payload = Bytes::from(vec![b'p'; 125]);
    let started = Instant::now();
    let mut sent = 0;
    while sent < PINGS && started.elapsed() < Duration::from_secs(30) {
        if ws.feed(Message::Ping(payload.clone())).await.is_err() {
            break;
        }
        sent += 1;
        if sent % 1000 == 0 && ws.flush().await.is_err() {
            break;
        }
    }
    let _ = ws.flush().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = rss_kib(pid);
    let slow = metric_sum(
        &metrics(&sg).await,
        "sockgate_slow_consumers_disconnected_total",
    );
    eprintln!(
        "ping flood: {sent} pings sent in {:?}; RSS {} KiB before, {} KiB after; slow consumers {slow}",
        started.elapsed(),
        before,
        during
    );
    assert!(
        during.saturating_sub(before) < 8 * 1024,
        "unread pongs grew RSS from {before} KiB to {during} KiB ({sent} pings)"
    );
    assert!(
        closed_within(&mut ws, Duration::from_secs(5)).await,
        "a client that never reads its pongs stays connected ({sent} pings)"
    );
    assert_eq!(
        slow, 1.0,
        "the flooding client is counted once as a slow consumer"
    );
    // Pings of a client that reads are answered, and keep it connected.
    let mut reader = engine_io_socket(sg.port()).await;
    for _ in 0..100 {
        reader
            .send(Message::Ping(payload.clone()))
            .await
            .expect("ping");
        let pong = tokio::time::timeout(Duration::from_secs(5), reader.next()).await;
        assert!(
            matches!(pong, Ok(Some(Ok(Message::Pong(_))))),
            "no pong: {pong:?}"
        );
    }
    assert!(!closed_within(&mut reader, Duration::from_millis(500)).await);
}

#[tokio::test]
async fn idle_h2c_connections_are_closed() {
    let app = fixture(&[]);
    let sg = sockgate(
        app.port,
        &[
            ("SIDECAR_SERVER__HEADER_READ_TIMEOUT_MS", "2000"),
            ("SIDECAR_SERVER__IDLE_TIMEOUT_MS", "2000"),
        ],
    );
    let pid = sg.proc.pid();
    let fds_before = open_fds(pid);
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    // An empty SETTINGS frame: length 0, type 4, no flags, stream 0.
    const SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];
    let mut idle = Vec::new();
    for _ in 0..50 {
        let mut conn = TcpStream::connect(("127.0.0.1", sg.port()))
            .await
            .expect("connect");
        conn.write_all(PREFACE).await.expect("preface");
        conn.write_all(SETTINGS).await.expect("settings");
        idle.push(conn);
    }
    let accepting = Instant::now();
    // (A few fds of the baseline may be short-lived: the harness's port probe.)
    while open_fds(pid) < fds_before + 45 {
        assert!(
            accepting.elapsed() < Duration::from_millis(1500),
            "the connections were not accepted: {} fds, {fds_before} before",
            open_fds(pid)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    for conn in &mut idle {
        let mut sink = Vec::new();
        let ended =
            tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut sink)).await;
        assert!(
            ended.is_ok(),
            "an idle h2c connection was still open {:?} after the test started waiting",
            started.elapsed()
        );
    }
    drop(idle);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        open_fds(pid) < fds_before + 5,
        "fds: {} before, {} after",
        fds_before,
        open_fds(pid)
    );
    // A connection in use is not cut: a request slower than the idle timeout completes.
    assert_eq!(
        body_text(get(sg.port(), "/slow?ms=3000").await).await,
        "slow done"
    );
}

/// One HTTP/2 frame: 9-byte header (length, type, flags, stream) and payload.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len())
        .expect("small frame")
        .to_be_bytes();
    let mut frame = vec![len[1], len[2], len[3], kind, flags];
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

const H2_DATA: u8 = 0;
const H2_HEADERS: u8 = 1;
const H2_RST_STREAM: u8 = 3;
const H2_SETTINGS: u8 = 4;
const H2_PING: u8 = 6;
const H2_GOAWAY: u8 = 7;
const H2_ACK: u8 = 1;
const H2_END_STREAM: u8 = 1;
const H2_END_HEADERS: u8 = 4;

struct H2Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

impl H2Frame {
    /// The error code of a RST_STREAM (its first 4 bytes).
    fn error_code(&self) -> Option<u32> {
        let code = self.payload.get(..4)?;
        Some(u32::from_be_bytes([code[0], code[1], code[2], code[3]]))
    }
}

/// An h2c client speaking raw frames (prior knowledge), so a test can do what a well-behaved
/// client would not: ignore the server's SETTINGS, keep a connection open with PINGs only.
struct RawH2 {
    rd: tokio::net::tcp::OwnedReadHalf,
    wr: tokio::net::tcp::OwnedWriteHalf,
    buf: Vec<u8>,
}

impl RawH2 {
    /// Connects and sends the preface and an empty SETTINGS frame.
    async fn connect(port: u16) -> Self {
        Self::connect_with(port, &[]).await
    }

    /// Connects and sends the preface and a SETTINGS frame of `settings` (6 bytes each).
    async fn connect_with(port: u16, settings: &[u8]) -> Self {
        let (rd, mut wr) = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect")
            .into_split();
        let hello = [
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
            h2_frame(H2_SETTINGS, 0, 0, settings),
        ]
        .concat();
        wr.write_all(&hello).await.expect("preface");
        Self {
            rd,
            wr,
            buf: Vec::new(),
        }
    }

    /// Sends a frame; the server may have closed its side already (the next read tells).
    async fn send(&mut self, frame: &[u8]) {
        let _ = self.wr.write_all(frame).await;
    }

    /// Opens stream `id` with a GET of `path` (HPACK literals, no indexing, no Huffman).
    async fn get(&mut self, id: u32, path: &str) {
        let mut block = Vec::new();
        for (name, value) in [
            (":method", "GET"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "h2.test"),
        ] {
            // A literal header field without indexing, new name (RFC 7541 §6.2.2).
            block.push(0);
            for text in [name, value] {
                block.push(u8::try_from(text.len()).expect("short header"));
                block.extend_from_slice(text.as_bytes());
            }
        }
        let frame = h2_frame(H2_HEADERS, H2_END_STREAM | H2_END_HEADERS, id, &block);
        self.send(&frame).await;
    }

    /// The next frame from the server, after answering it if it is a SETTINGS or a PING;
    /// `None` once the server has closed the connection. Cancel-safe between frames.
    async fn next(&mut self) -> Option<H2Frame> {
        loop {
            if self.buf.len() >= 9 {
                let len = usize::from(self.buf[0]) << 16
                    | usize::from(self.buf[1]) << 8
                    | usize::from(self.buf[2]);
                if self.buf.len() >= 9 + len {
                    let head: Vec<u8> = self.buf.drain(..9).collect();
                    let payload: Vec<u8> = self.buf.drain(..len).collect();
                    let frame = H2Frame {
                        kind: head[3],
                        flags: head[4],
                        stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]])
                            & 0x7fff_ffff,
                        payload,
                    };
                    match frame.kind {
                        H2_SETTINGS if frame.flags & H2_ACK == 0 => {
                            self.send(&h2_frame(H2_SETTINGS, H2_ACK, 0, &[])).await;
                        }
                        H2_PING if frame.flags & H2_ACK == 0 => {
                            self.send(&h2_frame(H2_PING, H2_ACK, 0, &frame.payload))
                                .await;
                        }
                        _ => {}
                    }
                    return Some(frame);
                }
            }
            match self.rd.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }
}

/// How a raw h2c connection that never opens a stream ended: whether the server sent GOAWAY,
/// and after how long it closed (`None`: still open at `limit`).
struct H2Ending {
    goaway: bool,
    closed_after: Option<Duration>,
}

/// A client that sends the preface and then only keeps the connection alive: it acknowledges
/// the server's SETTINGS and PINGs and sends a PING of its own every `every`, until the
/// server closes the connection or `limit` passes.
async fn h2c_pinging_until_closed(port: u16, every: Duration, limit: Duration) -> H2Ending {
    let started = Instant::now();
    let mut h2 = RawH2::connect(port).await;
    let mut ending = H2Ending {
        goaway: false,
        closed_after: None,
    };
    let mut ticker = tokio::time::interval(every);
    let deadline = tokio::time::sleep(limit);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => return ending,
            _ = ticker.tick() => h2.send(&h2_frame(H2_PING, 0, 0, b"keepopen")).await,
            frame = h2.next() => match frame {
                None => {
                    ending.closed_after = Some(started.elapsed());
                    return ending;
                }
                Some(f) => ending.goaway |= f.kind == H2_GOAWAY,
            },
        }
    }
}

#[tokio::test]
async fn h2c_pings_do_not_keep_a_connection_without_streams_open() {
    let app = fixture(&[]);
    let idle = Duration::from_millis(1500);
    let sg = sockgate(
        app.port,
        &[
            ("SIDECAR_SERVER__HEADER_READ_TIMEOUT_MS", "1000"),
            ("SIDECAR_SERVER__IDLE_TIMEOUT_MS", "1500"),
        ],
    );
    let ending = h2c_pinging_until_closed(
        sg.port(),
        Duration::from_millis(200),
        Duration::from_secs(8),
    )
    .await;
    let closed = ending
        .closed_after
        .expect("a connection that only PINGs must be closed after the idle timeout");
    assert!(
        closed >= idle - Duration::from_millis(200) && closed < idle + Duration::from_millis(1500),
        "closed after {closed:?}, idle timeout {idle:?}"
    );
    assert!(ending.goaway, "the server closes with GOAWAY");
}

#[tokio::test]
async fn h2c_open_stream_keeps_its_connection_until_it_ends() {
    let app = fixture(&[]);
    let sg = sockgate(
        app.port,
        &[
            ("SIDECAR_SERVER__HEADER_READ_TIMEOUT_MS", "1000"),
            ("SIDECAR_SERVER__IDLE_TIMEOUT_MS", "1500"),
        ],
    );
    let mut sender = h2c(sg.port()).await;
    // 8 events, 500 ms apart: open for 3.5 s, more than twice the idle timeout.
    let req = Request::get(format!(
        "http://h2.test:{}/sse?events=8&every=500",
        sg.port()
    ))
    .body(Full::new(Bytes::new()))
    .expect("request");
    let started = Instant::now();
    let resp = sender.send_request(req).await.expect("h2 response");
    assert_eq!(resp.status(), 200);
    let events = body_text(resp).await;
    assert_eq!(events.matches("data: tick-").count(), 8, "{events}");
    assert!(started.elapsed() >= Duration::from_secs(3));
    // Once the stream is over, the connection is idle and closed.
    let ended = Instant::now();
    while !sender.is_closed() {
        assert!(
            ended.elapsed() < Duration::from_secs(4),
            "the idle connection was not closed after its stream ended"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn h2c_streams_beyond_max_concurrent_streams_are_refused() {
    const MAX_CONCURRENT_STREAMS: u16 = 3;
    const REFUSED_STREAM: u32 = 7;
    let app = fixture(&[]);
    let sg = sockgate(app.port, &[("SIDECAR_SERVER__MAX_CONCURRENT_STREAMS", "2")]);
    let mut h2 = RawH2::connect(sg.port()).await;
    // The server announces the limit …
    let settings = loop {
        let frame = h2.next().await.expect("the server's SETTINGS");
        if frame.kind == H2_SETTINGS && frame.flags & H2_ACK == 0 {
            break frame.payload;
        }
    };
    let announced: Vec<(u16, u32)> = settings
        .chunks_exact(6)
        .map(|s| {
            (
                u16::from_be_bytes([s[0], s[1]]),
                u32::from_be_bytes([s[2], s[3], s[4], s[5]]),
            )
        })
        .collect();
    assert!(
        announced.contains(&(MAX_CONCURRENT_STREAMS, 2)),
        "SETTINGS {announced:?}"
    );
    // … and a client that ignores it opens five slow streams at once.
    let streams = [1, 3, 5, 7, 9];
    for id in streams {
        h2.get(id, "/slow?ms=1000").await;
    }
    let (mut refused, mut answered, mut completed) = (Vec::new(), Vec::new(), Vec::new());
    let deadline = Instant::now() + Duration::from_secs(10);
    while refused.len() + completed.len() < streams.len() {
        let frame = tokio::time::timeout_at(deadline.into(), h2.next())
            .await
            .unwrap_or_else(|_| {
                panic!("streams unsettled: refused {refused:?}, completed {completed:?}")
            })
            .expect("the connection stays open");
        match frame.kind {
            H2_RST_STREAM => {
                assert_eq!(
                    frame.error_code(),
                    Some(REFUSED_STREAM),
                    "stream {}",
                    frame.stream
                );
                refused.push(frame.stream);
            }
            // 0x88: `:status 200`, indexed (HPACK static table entry 8).
            H2_HEADERS if frame.payload.first() == Some(&0x88) => answered.push(frame.stream),
            H2_DATA if frame.flags & H2_END_STREAM != 0 => completed.push(frame.stream),
            _ => {}
        }
    }
    refused.sort_unstable();
    completed.sort_unstable();
    answered.sort_unstable();
    assert_eq!(
        refused,
        [5, 7, 9],
        "the streams beyond the limit are refused"
    );
    assert_eq!(answered, [1, 3], "the admitted streams get their 200");
    assert_eq!(completed, [1, 3], "the admitted streams complete");
}

/// What a raw h2c connection was told before it closed: the GOAWAY error code, if any.
#[derive(Default)]
struct H2Closing {
    goaway: Option<u32>,
    closed: bool,
}

impl H2Closing {
    /// Reads frames for up to `limit` (or until the server closes the connection), noting a
    /// GOAWAY.
    async fn watch(&mut self, h2: &mut RawH2, limit: Duration) {
        let deadline = tokio::time::sleep(limit);
        tokio::pin!(deadline);
        while !self.closed {
            tokio::select! {
                _ = &mut deadline => return,
                frame = h2.next() => match frame {
                    None => self.closed = true,
                    Some(f) if f.kind == H2_GOAWAY => {
                        self.goaway = f
                            .payload
                            .get(4..8)
                            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
                    }
                    Some(_) => {}
                },
            }
        }
    }
}

const H2_CANCEL: u32 = 8;

/// sockgate in front of `app`, allowing `max` HTTP/2 streams per connection.
fn sockgate_with_streams(app: &Proc, max: u64) -> Sockgate {
    let max = max.to_string();
    sockgate(
        app.port,
        &[("SIDECAR_SERVER__MAX_CONCURRENT_STREAMS", &max)],
    )
}

#[tokio::test]
async fn h2c_paced_rapid_reset_is_bounded_and_closed() {
    const MAX_STREAMS: u64 = 20;
    const ROUNDS: u32 = 30;
    let app = fixture(&[]);
    let sg = sockgate_with_streams(&app, MAX_STREAMS);
    let mut h2 = RawH2::connect(sg.port()).await;
    let mut ending = H2Closing::default();
    // Until the server's SETTINGS (its stream limit) are acknowledged, it admits any number.
    loop {
        let frame = h2.next().await.expect("the server's SETTINGS");
        if frame.kind == H2_SETTINGS && frame.flags & H2_ACK != 0 {
            break;
        }
    }
    // Open 50 streams to a route the app works on for 5 s, even for a client that is gone (as
    // most page handlers do); once the app has them (at least 20 ms), reset all 50; repeat.
    let app_got = async || {
        let stats = body_json(get(app.port, "/__stats").await).await;
        stats["holdRequests"].as_u64().expect("holdRequests")
    };
    let mut next_id = 1;
    let mut rounds = 0;
    let started = Instant::now();
    while rounds < ROUNDS && !ending.closed {
        rounds += 1;
        let before = app_got().await;
        let ids: Vec<u32> = (0..50).map(|n| next_id + 2 * n).collect();
        next_id += 100;
        for &id in &ids {
            h2.get(id, "/hold?ms=5000&keep=1").await;
        }
        let dispatching = Instant::now();
        ending.watch(&mut h2, Duration::from_millis(20)).await;
        while !ending.closed
            && app_got().await < before + MAX_STREAMS
            && dispatching.elapsed() < Duration::from_millis(500)
        {
            ending.watch(&mut h2, Duration::from_millis(5)).await;
        }
        for &id in &ids {
            h2.send(&h2_frame(H2_RST_STREAM, 0, id, &H2_CANCEL.to_be_bytes()))
                .await;
        }
    }
    let flooded = started.elapsed();
    ending.watch(&mut h2, Duration::from_secs(5)).await;
    let stats = body_json(get(app.port, "/__stats").await).await;
    let (peak, total) = (
        stats["peakHolding"].as_u64().expect("peakHolding"),
        stats["holdRequests"].as_u64().expect("holdRequests"),
    );
    eprintln!(
        "rapid reset: {rounds} rounds in {flooded:?}; the app got {total} requests, \
         up to {peak} at once; GOAWAY {:?}, closed {}",
        ending.goaway, ending.closed
    );
    assert!(
        peak <= MAX_STREAMS,
        "one connection made the app work on {peak} requests at once \
         (server.max_concurrent_streams = {MAX_STREAMS}; {total} requests in {rounds} rounds)"
    );
    assert!(
        ending.closed && ending.goaway.is_some(),
        "the connection was not closed with a GOAWAY after {rounds} rounds of resets \
         (GOAWAY {:?}, closed {})",
        ending.goaway,
        ending.closed
    );
    assert!(rounds < ROUNDS, "closed only after the client stopped");
    let metrics = metrics(&sg).await;
    assert!(
        metrics.contains("sockgate_protocol_abuse_total{kind=\"rapid_reset\"} 1"),
        "{metrics}"
    );
    // Another connection is served as usual.
    assert_eq!(get(sg.port(), "/hold?ms=10").await.status(), 200);
}

#[tokio::test]
async fn h2c_resets_of_streamed_answers_count_too() {
    const MAX_STREAMS: u64 = 4;
    let app = fixture(&[]);
    let sg = sockgate_with_streams(&app, MAX_STREAMS);
    let mut h2 = RawH2::connect(sg.port()).await;
    let mut ending = H2Closing::default();
    // Streams to an event stream: the app answers at once and then keeps sending; the client
    // resets them once answered, and repeats.
    let mut next_id = 1;
    let mut rounds = 0;
    while rounds < 10 && ending.goaway.is_none() && !ending.closed {
        rounds += 1;
        let per_round = u32::try_from(MAX_STREAMS).expect("a few streams");
        let ids: Vec<u32> = (0..per_round).map(|n| next_id + 2 * n).collect();
        next_id += 2 * per_round;
        for &id in &ids {
            h2.get(id, "/sse?events=100&every=100").await;
        }
        let mut answered = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while answered.len() < ids.len() && ending.goaway.is_none() {
            let Ok(frame) = tokio::time::timeout_at(deadline.into(), h2.next()).await else {
                panic!("round {rounds}: streams {answered:?} of {ids:?} answered");
            };
            match frame {
                None => ending.closed = true,
                Some(f) if f.kind == H2_GOAWAY => ending.goaway = Some(0),
                // 0x88: `:status 200`, indexed (HPACK static table entry 8).
                Some(f) if f.kind == H2_HEADERS && f.payload.first() == Some(&0x88) => {
                    answered.push(f.stream);
                }
                Some(_) => {}
            }
            if ending.closed {
                break;
            }
        }
        for &id in &ids {
            h2.send(&h2_frame(H2_RST_STREAM, 0, id, &H2_CANCEL.to_be_bytes()))
                .await;
        }
    }
    ending.watch(&mut h2, Duration::from_secs(3)).await;
    assert!(
        ending.goaway.is_some() && ending.closed,
        "{rounds} rounds of {MAX_STREAMS} answered streams reset: GOAWAY {:?}, closed {}",
        ending.goaway,
        ending.closed
    );
    assert!(rounds <= 4, "closed only after {rounds} rounds");
    let metrics = metrics(&sg).await;
    assert!(
        metrics.contains("sockgate_protocol_abuse_total{kind=\"rapid_reset\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn h2c_client_that_resets_now_and_then_keeps_its_connection() {
    let app = fixture(&[]);
    let sg = sockgate_with_streams(&app, 4);
    let mut h2 = RawH2::connect(sg.port()).await;
    let app_got = async || {
        let stats = body_json(get(app.port, "/__stats").await).await;
        stats["holdRequests"].as_u64().expect("holdRequests")
    };
    // 30 times: one request that completes, then one reset once the app has it. 30 resets
    // are well past the bound (8), but never more than one beyond the completed requests.
    let mut id = 1;
    for round in 0..30 {
        h2.get(id, "/hold?ms=0").await;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let frame = tokio::time::timeout_at(deadline.into(), h2.next())
                .await
                .unwrap_or_else(|_| panic!("round {round}: no answer"))
                .unwrap_or_else(|| panic!("round {round}: the connection was closed"));
            assert_ne!(frame.kind, H2_GOAWAY, "round {round}: GOAWAY");
            if frame.stream == id && frame.flags & H2_END_STREAM != 0 {
                break;
            }
        }
        let before = app_got().await;
        h2.get(id + 2, "/hold?ms=50").await;
        while app_got().await == before {
            assert!(
                Instant::now() < deadline,
                "round {round}: the app never got it"
            );
        }
        h2.send(&h2_frame(
            H2_RST_STREAM,
            0,
            id + 2,
            &H2_CANCEL.to_be_bytes(),
        ))
        .await;
        id += 4;
    }
    let metrics = metrics(&sg).await;
    assert!(
        !metrics.contains("sockgate_protocol_abuse_total{"),
        "{metrics}"
    );
}

#[tokio::test]
async fn h2c_unsolicited_ping_acks_are_counted_not_logged() {
    const ACKS: usize = 50_000;
    let app = fixture(&[]);
    let sg = sockgate(app.port, &[]);
    let mut h2 = RawH2::connect(sg.port()).await;
    let mut ending = H2Closing::default();
    ending.watch(&mut h2, Duration::from_millis(100)).await;
    let lines_before = sg.log().lines().count();
    let batch = h2_frame(H2_PING, H2_ACK, 0, b"nevasent").repeat(1_000);
    for _ in 0..ACKS / 1_000 {
        h2.send(&batch).await;
    }
    ending.watch(&mut h2, Duration::from_secs(5)).await;
    let log = sg.log();
    let new_lines: Vec<&str> = log.lines().skip(lines_before).collect();
    eprintln!(
        "{ACKS} PING acks: {} new log lines ({} bytes); GOAWAY {:?}, closed {}",
        new_lines.len(),
        new_lines.iter().map(|l| l.len() + 1).sum::<usize>(),
        ending.goaway,
        ending.closed
    );
    assert!(
        new_lines.len() <= 3,
        "{} log lines for {ACKS} PING acks, e.g. {:?}",
        new_lines.len(),
        new_lines.first()
    );
    let metrics = metrics(&sg).await;
    assert!(
        metrics.contains("sockgate_protocol_abuse_total{kind=\"h2_frames\"} 1"),
        "{metrics}"
    );
    assert!(
        ending.closed && ending.goaway.is_some(),
        "the connection stayed open (GOAWAY {:?}, closed {})",
        ending.goaway,
        ending.closed
    );
    // Other clients are served.
    assert_eq!(get(sg.port(), "/").await.status(), 200);
}

#[tokio::test]
async fn connections_beyond_server_max_connections_are_closed() {
    let app = fixture(&[]);
    let sg = sockgate(app.port, &[("SIDECAR_SERVER__MAX_CONNECTIONS", "5")]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut waits = Vec::new();
    for _ in 0..8 {
        let mut conn = TcpStream::connect(("127.0.0.1", sg.port())).await.unwrap();
        conn.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        waits.push(tokio::spawn(async move {
            let mut sink = Vec::new();
            let closed =
                tokio::time::timeout(Duration::from_secs(3), conn.read_to_end(&mut sink)).await;
            (closed.is_ok(), conn)
        }));
    }
    let mut closed = 0;
    let mut held = Vec::new();
    for wait in waits {
        let (was_closed, conn) = wait.await.unwrap();
        closed += usize::from(was_closed);
        held.push(conn);
    }
    assert_eq!(
        closed, 3,
        "of 8 connections with a cap of 5, {closed} were closed"
    );
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get(sg.port(), "/").await.status(), 200);
}

/// Open TCP connections the fixture app holds, asked directly (the asking connection counts).
async fn app_connections(app_port: u16) -> i64 {
    let stats = body_json(get(app_port, "/__stats").await).await;
    stats["openConnections"].as_i64().expect("openConnections")
}

/// Sends `head` and then `body` one byte every `every`, until the server answers or closes.
/// Returns the raw response (empty if the connection was closed without one).
async fn trickle(port: u16, head: String, body: Vec<u8>, every: Duration) -> String {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    conn.write_all(head.as_bytes()).await.unwrap();
    let (mut read, mut write) = conn.into_split();
    let writer = tokio::spawn(async move {
        for byte in body {
            if write.write_all(&[byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(every).await;
        }
    });
    let mut response = Vec::new();
    let _ = read.read_to_end(&mut response).await;
    writer.abort();
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test]
async fn trickled_upload_gets_408_and_frees_the_app_connection() {
    let app = fixture(&[]);
    let sg = sockgate(
        app.port,
        &[
            ("SIDECAR_PROXY__MIN_BODY_RATE_BYTES_PER_SEC", "240"),
            ("SIDECAR_PROXY__MIN_BODY_RATE_GRACE_MS", "1000"),
        ],
    );
    let baseline = app_connections(app.port).await;
    let head = "POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: 100\r\n\r\n".to_string();
    let started = Instant::now();
    let uploads: Vec<_> = (0..5)
        .map(|_| {
            tokio::spawn(trickle(
                sg.port(),
                head.clone(),
                vec![b'x'; 100],
                Duration::from_millis(500),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let during = app_connections(app.port).await;
    assert!(
        during >= baseline + 5,
        "uploads did not reach the app: {baseline} → {during}"
    );
    for upload in uploads {
        let response = tokio::time::timeout(Duration::from_secs(15), upload)
            .await
            .expect("the trickling client was cut within 15 s")
            .expect("task");
        assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = app_connections(app.port).await;
    assert!(
        after <= baseline + 1,
        "app connections: {baseline} before, {during} during, {after} after"
    );

    // A normal upload is unaffected.
    let resp = send(
        sg.port(),
        request("POST", "/upload", vec![b'y'; 256 * 1024]),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(body_json(resp).await["bytes"], 256 * 1024);
}

/// The publish socket's `/metrics`, as text.
async fn metrics(sg: &Sockgate) -> String {
    let stream = tokio::net::UnixStream::connect(&sg.socket).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/metrics")
        .header("host", "sockgate")
        .body(Full::new(Bytes::new()))
        .unwrap();
    body_text(sender.send_request(req).await.unwrap()).await
}

/// The sum of every sample of `metric` (all label sets).
fn metric_sum(text: &str, metric: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(metric))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Sends a raw request and returns everything the server writes before closing.
async fn raw(port: u16, bytes: &[u8], then_close_write: bool) -> String {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    conn.write_all(bytes).await.unwrap();
    if then_close_write {
        let _ = conn.shutdown().await;
    }
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut response)).await;
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test]
async fn malformed_chunked_bodies_are_client_errors_not_upstream_errors() {
    let app = fixture(&[]);
    let sg = sockgate(app.port, &[]);
    let head = "POST /upload HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n";
    for (name, body) in [
        ("negative size", "-1\r\nx\r\n0\r\n\r\n"),
        ("0x prefix", "0x5\r\nhello\r\n0\r\n\r\n"),
        ("u64 overflow", "1FFFFFFFFFFFFFFFFF\r\nhello\r\n0\r\n\r\n"),
        ("data without CRLF", "5\r\nhelloXY0\r\n\r\n"),
    ] {
        let response = raw(sg.port(), format!("{head}{body}").as_bytes(), false).await;
        assert!(
            response.starts_with("HTTP/1.1 400"),
            "{name}: expected 400, got {response:?}"
        );
    }
    // A client that gives up mid-upload: its connection is gone, nothing to answer.
    let response = raw(
        sg.port(),
        b"POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: 1000\r\n\r\nonly-part",
        true,
    )
    .await;
    assert!(!response.contains(" 502 "), "{response}");
    tokio::time::sleep(Duration::from_millis(300)).await;

    let text = metrics(&sg).await;
    assert_eq!(
        metric_sum(&text, "sockgate_upstream_errors_total"),
        0.0,
        "client mistakes counted as upstream errors:\n{text}"
    );
    assert!(
        metric_sum(&text, "sockgate_client_errors_total") >= 5.0,
        "client errors not counted:\n{text}"
    );
    assert_eq!(get(sg.port(), "/").await.status(), 200);
}

#[tokio::test]
async fn connection_header_cannot_strip_end_to_end_headers() {
    let app = fixture(&[]);
    let sg = sockgate(app.port, &[]);
    let req = Request::get("/headers")
        .header("host", "myapp.test")
        .header(
            "connection",
            "close, host, cookie, authorization, content-length, x-forwarded-for, x-drop",
        )
        .header("cookie", "sid=alice-token")
        .header("authorization", "Bearer t")
        .header("x-drop", "1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let seen = body_json(send(sg.port(), req).await).await;
    let h = &seen["headers"];
    assert_eq!(h["host"], "myapp.test", "{h}");
    assert_eq!(h["cookie"], "sid=alice-token", "{h}");
    assert_eq!(h["authorization"], "Bearer t", "{h}");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{h}");
    assert!(h.get("x-drop").is_none(), "{h}");
}

#[tokio::test]
async fn h2c_upgrade_is_not_tunnelled_and_forwarded_headers_stay_ours() {
    let app = fixture(&[]);
    let sg = sockgate(app.port, &[]);
    let response = raw(
        sg.port(),
        b"GET /headers HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade, HTTP2-Settings, close\r\n\
          Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n",
        false,
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let body = &response[response.find("\r\n\r\n").expect("head end") + 4..];
    let seen: serde_json::Value = serde_json::from_str(body.trim()).expect("JSON");
    let h = &seen["headers"];
    assert!(h.get("upgrade").is_none(), "{h}");
    assert!(h.get("http2-settings").is_none(), "{h}");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{h}");

    // WebSocket tunnels still work, and their first request carries our forwarded headers,
    // not the client's.
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut upgrade = format!("ws://127.0.0.1:{}/ws-headers", sg.port())
        .into_client_request()
        .unwrap();
    upgrade
        .headers_mut()
        .insert("x-forwarded-for", "10.0.0.1".parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::connect_async(upgrade)
        .await
        .expect("upgrade through sockgate");
    assert_eq!(resp.status(), 101);
    let first = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("headers in time")
        .expect("a message")
        .expect("ok");
    let seen: serde_json::Value = serde_json::from_str(first.to_text().unwrap()).unwrap();
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1", "{seen}");
}

/// An Engine.IO long-polling session: its sid, after the open packet.
async fn polling_session(port: u16) -> String {
    let open = body_text(
        send(
            port,
            polling("GET", "/socket.io/?EIO=4&transport=polling", ""),
        )
        .await,
    )
    .await;
    let json = open.strip_prefix('0').expect("open packet");
    let v: serde_json::Value = serde_json::from_str(json).expect("open JSON");
    v["sid"].as_str().expect("sid").to_owned()
}

/// A long-polling request with the session's credentials (every request of a session must
/// carry its handshake's).
fn polling(method: &str, path: &str, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    let mut req = request(method, path, body);
    req.headers_mut()
        .insert("cookie", ATTACKER_COOKIE.parse().expect("cookie"));
    req
}

#[tokio::test]
async fn polling_binary_and_oversized_bodies_are_refused() {
    let app = fixture(&[]);
    let sg = sockgate(app.port, &[]);
    let path = |sid: &str| format!("/socket.io/?EIO=4&transport=polling&sid={sid}");

    // A binary packet (`b` + base64 in Engine.IO v4 polling) ends the session.
    let sid = polling_session(sg.port()).await;
    let header = attachment_header(2, 0);
    let body = format!("{header}\u{1e}bAQIDBA==");
    let resp = send(sg.port(), polling("POST", &path(&sid), body)).await;
    assert_eq!(resp.status(), 400, "{}", body_text(resp).await);
    let next = send(sg.port(), polling("GET", &path(&sid), "")).await;
    assert_eq!(next.status(), 400, "the session survived a binary packet");

    // A body over realtime.max_poll_payload_bytes (16 KiB by default) is refused.
    let sid = polling_session(sg.port()).await;
    let resp = send(
        sg.port(),
        polling("POST", &path(&sid), attachment_header(1, 20 * 1024)),
    )
    .await;
    assert_eq!(resp.status(), 413);

    // A pong is fine.
    let sid = polling_session(sg.port()).await;
    let resp = send(sg.port(), polling("POST", &path(&sid), "3")).await;
    assert_eq!(resp.status(), 200);
}

/// Runs sockgate with only `env` (plus PATH and a free port) and returns its exit status and
/// stderr if it stops within `limit`, or `None` (and kills it) if it keeps running.
fn sockgate_exit(
    upstream_port: u16,
    env: &[(&str, &str)],
    limit: Duration,
) -> Option<(std::process::ExitStatus, String)> {
    let mut child = std::process::Command::new(sockgate_bin())
        .current_dir(std::env::temp_dir())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SIDECAR_SERVER__HOST", "127.0.0.1")
        .env("SIDECAR_SERVER__PORT", free_port().to_string())
        .env(
            "SIDECAR_UPSTREAM__URL",
            format!("http://127.0.0.1:{upstream_port}"),
        )
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("sockgate runs");
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
            }
            return Some((status, stderr));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[test]
fn publish_socket_in_a_directory_others_control_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let app = fixture(&[]);
    let base = temp_dir("squat");
    // World-writable without the sticky bit: anyone could replace the socket.
    let open = base.join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let socket = open.join("sockgate.sock");
    let socket_env = socket.to_string_lossy().into_owned();
    let outcome = sockgate_exit(
        app.port,
        &[("SIDECAR_PUBLISH__SOCKET", socket_env.as_str())],
        Duration::from_secs(5),
    );
    let (status, stderr) =
        outcome.expect("sockgate started with a world-writable socket directory");
    assert!(!status.success());
    assert!(
        stderr.contains(&socket_env) && stderr.contains("writable by group or others"),
        "{stderr}"
    );

    // A socket another user bound first, in a directory of ours: never taken over.
    let ours = base.join("ours");
    std::fs::create_dir(&ours).unwrap();
    let socket = ours.join("sockgate.sock");
    let squatter = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    drop(squatter); // stale, so sockgate would replace it if it were its own
    if std::os::unix::fs::chown(&socket, Some(65534), Some(65534)).is_ok() {
        let socket_env = socket.to_string_lossy().into_owned();
        let outcome = sockgate_exit(
            app.port,
            &[("SIDECAR_PUBLISH__SOCKET", socket_env.as_str())],
            Duration::from_secs(5),
        );
        let (status, stderr) = outcome.expect("sockgate took over another user's socket path");
        assert!(!status.success());
        assert!(stderr.contains("belongs to uid 65534"), "{stderr}");
    }
    let _ = std::fs::remove_dir_all(&base);
}

#[tokio::test]
async fn default_publish_socket_is_in_a_private_directory() {
    use std::os::unix::fs::MetadataExt;
    let app = fixture(&[]);
    let runtime_dir = temp_dir("xdg");
    let port = free_port();
    let child = std::process::Command::new(sockgate_bin())
        .current_dir(&runtime_dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("XDG_RUNTIME_DIR", &runtime_dir)
        .env("SIDECAR_LOG__FILTER", "warn") // a passing test prints nothing
        .env("SIDECAR_SERVER__HOST", "127.0.0.1")
        .env("SIDECAR_SERVER__PORT", port.to_string())
        .env(
            "SIDECAR_UPSTREAM__URL",
            format!("http://127.0.0.1:{}", app.port),
        )
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("sockgate runs");
    let _sg = Proc { child, port };
    wait_for_port(port, Duration::from_secs(10), "sockgate");
    let dir = runtime_dir.join("sockgate");
    let meta = std::fs::symlink_metadata(&dir).expect("the private directory exists");
    assert!(meta.is_dir());
    assert_eq!(
        meta.mode() & 0o777,
        0o750,
        "group may enter (socket_mode 0660), nobody else"
    );
    let socket = dir.join("sockgate.sock");
    let stream = tokio::net::UnixStream::connect(&socket)
        .await
        .expect("the publish socket listens there");
    drop(stream);
    drop(_sg);
    let _ = std::fs::remove_dir_all(&runtime_dir);
}

/// A container that starts sockgate with a soft `ulimit -n` of 1,024 (and a higher hard
/// limit) does not cap it at a few hundred connections: the soft limit is raised first, and
/// the default cap keeps a reserve (256 of 8,192 here) for app connections.
#[test]
fn the_default_connection_cap_follows_the_raised_fd_limit() {
    use std::io::{BufRead, BufReader};
    if std::process::Command::new("prlimit")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("prlimit (util-linux) is not installed; skipped");
        return;
    }
    let dir = temp_dir("fdlimit");
    let mut child = std::process::Command::new("prlimit")
        .args(["--nofile=1024:8192", "--", sockgate_bin()])
        .current_dir(&dir)
        .env("SIDECAR_SERVER__HOST", "127.0.0.1")
        .env("SIDECAR_SERVER__PORT", free_port().to_string())
        .env(
            "SIDECAR_UPSTREAM__URL",
            format!("http://127.0.0.1:{}", free_port()),
        )
        .env("SIDECAR_PUBLISH__SOCKET", dir.join("sg.sock"))
        .env("SIDECAR_LOG__FILTER", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("sockgate runs under prlimit");
    let stderr = child.stderr.take().expect("stderr");
    let (lines, read) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    while let Ok(line) = read.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        let done = line.contains("client connection cap");
        seen.push(line);
        if done {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let log = seen.join("\n");
    assert!(
        log.contains("raised the file descriptor limit") && log.contains("to=8192"),
        "{log}"
    );
    assert!(log.contains("max=7936"), "8192 less 256: {log}");
}

#[tokio::test]
async fn trickled_polling_post_gets_408() {
    let app = fixture(&[]);
    let sg = sockgate(
        app.port,
        &[
            ("SIDECAR_PROXY__MIN_BODY_RATE_BYTES_PER_SEC", "240"),
            ("SIDECAR_PROXY__MIN_BODY_RATE_GRACE_MS", "1000"),
        ],
    );
    let sid = polling_session(sg.port()).await;
    // A Socket.IO CONNECT trickled one byte every 500 ms: the body is answered by Engine.IO,
    // not the app, and must be cut like a proxied upload.
    let body = b"40".repeat(40);
    let head = format!(
        "POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: app.test\r\n\
         Cookie: {ATTACKER_COOKIE}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let started = Instant::now();
    let response = tokio::time::timeout(
        Duration::from_secs(15),
        trickle(sg.port(), head, body, Duration::from_millis(500)),
    )
    .await
    .expect("the trickling polling client was cut within 15 s");
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
}

/// The status of an Engine.IO handshake with `cookie`, over long-polling or WebSocket.
async fn handshake_status(port: u16, cookie: &str, websocket: bool) -> u16 {
    if !websocket {
        let mut req = request("GET", "/socket.io/?EIO=4&transport=polling", "");
        req.headers_mut()
            .insert("cookie", cookie.parse().expect("cookie"));
        return send(port, req).await.status().as_u16();
    }
    use tokio_tungstenite::tungstenite::{Error, client::IntoClientRequest};
    let mut req = format!("ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket")
        .into_client_request()
        .expect("WebSocket request");
    req.headers_mut()
        .insert("cookie", cookie.parse().expect("cookie"));
    match tokio_tungstenite::connect_async(req).await {
        Ok((_ws, resp)) => resp.status().as_u16(),
        Err(Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("WebSocket handshake: {e}"),
    }
}

#[tokio::test]
async fn junk_cookies_cannot_fill_the_pending_places() {
    let app = fixture(&[]);
    let sg = sockgate(
        app.port,
        &[
            ("SIDECAR_REALTIME__MAX_PENDING_CONNECTIONS", "5"),
            ("SIDECAR_REALTIME__CONNECT_TIMEOUT_MS", "30000"),
        ],
    );
    let port = sg.port();
    // 300 handshakes with made-up cookies, a sixth of them WebSocket upgrades; none CONNECTs.
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let statuses = futures_util::future::join_all((0..300).map(|i| async move {
        handshake_status(port, &format!("sid=junk-{nonce:x}-{i}"), i % 6 == 0).await
    }))
    .await;
    let refused = statuses.iter().filter(|&&s| s == 401).count();
    assert_eq!(
        refused,
        statuses.len(),
        "made-up cookies must get 401 at the handshake; statuses: {statuses:?}"
    );
    // A real user still gets in at once: no pending place was taken.
    let started = Instant::now();
    let path = "/socket.io/?EIO=4&transport=polling";
    let call = |method: &str, path: &str, body: &'static str| {
        let mut req = request(method, path, body);
        req.headers_mut()
            .insert("cookie", "sid=user-alice".parse().expect("cookie"));
        req
    };
    let open = send(port, call("GET", path, "")).await;
    assert_eq!(open.status(), 200, "the real user's handshake was refused");
    let open = body_text(open).await;
    let v: serde_json::Value =
        serde_json::from_str(open.trim_start_matches('0')).expect("open packet");
    let sid = v["sid"].as_str().expect("sid").to_owned();
    let session = format!("{path}&sid={sid}");
    let posted = send(port, call("POST", &session, "40")).await;
    assert_eq!(posted.status(), 200);
    let answer = body_text(send(port, call("GET", &session, "")).await).await;
    assert!(answer.starts_with("40{"), "CONNECT refused: {answer}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the real user waited {:?}",
        started.elapsed()
    );
    // The app was asked once per cookie (the CONNECT was answered from the cache).
    let stats = body_json(get(app.port, "/__stats").await).await;
    assert_eq!(stats["sessionCalls"], 301, "{stats}");
}

/// `server.send_stall_timeout_ms` in the send-stall tests: short, so they take seconds.
const STALL_MS: u64 = 3000;

/// The fixture app, and sockgate in front of it with a send-stall timeout of `STALL_MS`.
fn with_send_stall_timeout() -> (Proc, Sockgate) {
    let app = fixture(&[]);
    let sg = sockgate(
        app.port,
        &[(
            "SIDECAR_SERVER__SEND_STALL_TIMEOUT_MS",
            &STALL_MS.to_string(),
        )],
    );
    (app, sg)
}

/// Polls the app's open connections until `done` holds for the count, or `limit` passes;
/// returns the last count.
async fn app_connections_until(app_port: u16, limit: Duration, done: impl Fn(i64) -> bool) -> i64 {
    let deadline = Instant::now() + limit;
    loop {
        let open = app_connections(app_port).await;
        if done(open) || Instant::now() >= deadline {
            return open;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Opens streams `ids` with a 10 MiB download each and waits until the app holds a connection
/// for every one; returns the app's open connections then (`baseline` before).
async fn h2_downloads(h2: &mut RawH2, ids: &[u32], app_port: u16, baseline: i64) -> i64 {
    for &id in ids {
        h2.get(id, "/download?bytes=10485760").await;
    }
    let wanted = baseline + i64::try_from(ids.len()).expect("a few streams");
    let during =
        app_connections_until(app_port, Duration::from_secs(5), |open| open >= wanted).await;
    assert!(
        during >= wanted,
        "the downloads did not reach the app: {baseline} → {during}"
    );
    during
}

#[tokio::test]
async fn h2c_downloads_whose_window_never_opens_are_reset_and_free_the_app() {
    const STREAMS: u32 = 20;
    const RST_CANCEL: u32 = 8;
    let (app, sg) = with_send_stall_timeout();
    let baseline = app_connections(app.port).await;
    // SETTINGS_INITIAL_WINDOW_SIZE (0x4) = 1024: each stream gets 1 KiB and then waits for a
    // WINDOW_UPDATE this client never sends, while it answers PINGs and sends its own.
    let mut h2 = RawH2::connect_with(sg.port(), &[0, 4, 0, 0, 4, 0]).await;
    let ids: Vec<u32> = (0..STREAMS).map(|i| 1 + 2 * i).collect();
    let asked = Instant::now();
    let during = h2_downloads(&mut h2, &ids, app.port, baseline).await;
    let stalled = Instant::now();
    let (mut reset, mut goaway, mut closed) = (Vec::new(), false, false);
    let mut ping = tokio::time::interval(Duration::from_millis(200));
    let deadline = tokio::time::sleep(Duration::from_millis(STALL_MS) + Duration::from_secs(8));
    tokio::pin!(deadline);
    while reset.len() < ids.len() && !closed {
        tokio::select! {
            _ = &mut deadline => break,
            _ = ping.tick() => h2.send(&h2_frame(H2_PING, 0, 0, b"stillup!")).await,
            frame = h2.next() => match frame {
                None => closed = true,
                Some(f) if f.kind == H2_RST_STREAM => {
                    assert_eq!(f.error_code(), Some(RST_CANCEL), "stream {}", f.stream);
                    reset.push(f.stream);
                }
                Some(f) => goaway |= f.kind == H2_GOAWAY,
            },
        }
    }
    let took = stalled.elapsed();
    let since_asked = asked.elapsed();
    let after = app_connections_until(app.port, Duration::from_secs(3), |open| {
        open <= baseline + 1
    })
    .await;
    reset.sort_unstable();
    assert_eq!(
        reset, ids,
        "streams reset within {took:?} (stall timeout {STALL_MS} ms); app connections: \
         {baseline} before, {during} during, {after} after"
    );
    assert!(
        after <= baseline + 1,
        "app connections: {baseline} before, {during} during, {after} after"
    );
    assert!(
        since_asked >= Duration::from_millis(STALL_MS),
        "reset {since_asked:?} after the requests, before the stall timeout"
    );
    assert!(
        !goaway && !closed,
        "only the stalled streams end, not the connection"
    );
    // The connection still serves a response that fits in the window.
    let next = ids[ids.len() - 1] + 2;
    h2.get(next, "/").await;
    let done = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(f) = h2.next().await {
            if f.stream == next && f.kind == H2_DATA && f.flags & H2_END_STREAM != 0 {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(done, Ok(true), "a small response on the same connection");
    assert!(metric_sum(&metrics(&sg).await, "sockgate_send_stalls_total") >= f64::from(STREAMS));
}

#[tokio::test]
async fn http1_response_the_client_stops_reading_is_cut_and_frees_the_app() {
    const BYTES: usize = 50 * 1024 * 1024;
    let (app, sg) = with_send_stall_timeout();
    let baseline = app_connections(app.port).await;
    let mut conn = TcpStream::connect(("127.0.0.1", sg.port()))
        .await
        .expect("connect");
    conn.write_all(
        format!("GET /download?bytes={BYTES} HTTP/1.1\r\nHost: app.test\r\n\r\n").as_bytes(),
    )
    .await
    .expect("request");
    // The client reads nothing: sockgate's buffers and the socket's fill, and the app waits.
    let during =
        app_connections_until(app.port, Duration::from_secs(5), |open| open > baseline).await;
    assert!(
        during > baseline,
        "the download did not reach the app: {baseline} → {during}"
    );
    let stalled = Instant::now();
    let after = app_connections_until(
        app.port,
        Duration::from_millis(STALL_MS) + Duration::from_secs(8),
        |open| open <= baseline,
    )
    .await;
    let took = stalled.elapsed();
    assert!(
        after <= baseline,
        "app connections: {baseline} before, {during} during, {after} {took:?} after the client \
         stopped reading (stall timeout {STALL_MS} ms)"
    );
    // The client's connection was closed: what it had been sent ends, short of the whole.
    let mut received = Vec::new();
    let ended =
        tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut received)).await;
    assert!(ended.is_ok(), "the client connection is still open");
    assert!(received.len() < BYTES, "{} bytes received", received.len());
    assert_eq!(
        metric_sum(&metrics(&sg).await, "sockgate_send_stalls_total"),
        1.0
    );
}

#[tokio::test]
async fn h2c_client_that_reads_nothing_frees_the_app_and_then_its_connection() {
    const STREAMS: u32 = 5;
    let app = fixture(&[]);
    let sg = sockgate(
        app.port,
        &[
            (
                "SIDECAR_SERVER__SEND_STALL_TIMEOUT_MS",
                &STALL_MS.to_string(),
            ),
            ("SIDECAR_SERVER__IDLE_TIMEOUT_MS", "2000"),
        ],
    );
    let pid = sg.proc.pid();
    let baseline = app_connections(app.port).await;
    let fds_before = open_fds(pid);
    // The windows are open (the defaults), but the client never reads its socket, so
    // sockgate's writes block: every stream stalls on its send buffer instead.
    let mut h2 = RawH2::connect(sg.port()).await;
    let ids: Vec<u32> = (0..STREAMS).map(|i| 1 + 2 * i).collect();
    let during = h2_downloads(&mut h2, &ids, app.port, baseline).await;
    let after = app_connections_until(
        app.port,
        Duration::from_millis(STALL_MS) + Duration::from_secs(8),
        |open| open <= baseline,
    )
    .await;
    assert!(
        after <= baseline,
        "app connections: {baseline} before, {during} during, {after} after"
    );
    // Nothing is in flight any more: the connection is idle, and closed after the idle
    // timeout (2 s) and its grace (1 s) although the client never read a byte.
    let released = Instant::now();
    while open_fds(pid) > fds_before {
        assert!(
            released.elapsed() < Duration::from_secs(10),
            "the client's connection is still open: {} fds, {fds_before} before",
            open_fds(pid)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(h2);
}

/// Downloads `bytes` over HTTP/1.1 through a small receive buffer, reading `step` bytes every
/// `every`; returns how many body bytes arrived before the connection ended.
async fn paced_download(port: u16, bytes: usize, step: usize, every: Duration) -> usize {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(32 * 1024).expect("SO_RCVBUF");
    let mut conn = socket
        .connect(([127, 0, 0, 1], port).into())
        .await
        .expect("connect");
    conn.write_all(
        format!(
            "GET /download?bytes={bytes} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .expect("request");
    let mut received = Vec::new();
    let mut buf = vec![0; step];
    loop {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => received.extend_from_slice(&buf[..n]),
        }
        tokio::time::sleep(every).await;
    }
    let head = received
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(received.len(), |at| at + 4);
    received.len() - head
}

#[tokio::test]
async fn a_slow_reader_that_keeps_reading_is_not_cut() {
    const BYTES: usize = 8 * 1024 * 1024;
    let app = fixture(&[]);
    let sg = sockgate(
        app.port,
        &[("SIDECAR_SERVER__SEND_STALL_TIMEOUT_MS", "2000")],
    );
    // ≈ 3 MB/s, through a 32 KiB receive buffer: sockgate waits on this client all along, but
    // never for 2 s. (Like nginx's `send_timeout`, what counts is the time between two writes
    // the socket accepts, and Linux wakes a writer once a third of its send buffer has drained:
    // on loopback, with megabytes of buffer, this test fails at 400 kB/s, cut after 3.9 MB.)
    let got = paced_download(sg.port(), BYTES, 64 * 1024, Duration::from_millis(20)).await;
    assert_eq!(got, BYTES, "the slow reader's download was cut");
    assert_eq!(
        metric_sum(&metrics(&sg).await, "sockgate_send_stalls_total"),
        0.0
    );
}
