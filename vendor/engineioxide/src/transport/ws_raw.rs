//! The write half of a WebSocket over a plain TCP stream, owned by the session's writer.
//!
//! sockgate patch (issue 32 stage 3): when the server gives the upgraded connection back as
//! its TCP stream ([`RawTcp`], through [`EngineIoConfig::ws_raw_tcp`]), the stream is split
//! into owned halves once the handshake is done. tungstenite keeps the read half; the writer
//! owns the write half and writes unmasked server frames itself: each frame's header and
//! payload built in this thread's reused buffer and handed to the kernel in one `write`, with
//! no `BiLock` shared between reader and writer, no tungstenite `Message`, write buffer or
//! flush. What the kernel does not take stays with the writer ([`RawWriter::pending`]) until
//! it does. The frames tungstenite would write on its own, pongs to the client's pings and
//! the reply to its close, go through [`Control`] to the writer. Any other connection (HTTP/2,
//! TLS, tests over a `DuplexStream`) keeps the split tungstenite stream.
//!
//! [`EngineIoConfig::ws_raw_tcp`]: crate::config::EngineIoConfig::ws_raw_tcp

use std::{
    any::Any,
    cell::RefCell,
    io,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError},
    task::{Context, Poll},
};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use engineioxide_core::{Packet, ProtocolVersion};
use futures_util::StreamExt;
use smallvec::smallvec;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{
        TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::mpsc,
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::protocol::{CloseFrame, frame::coding::CloseCode},
};
use tokio_util::{future::FutureExt as _, sync::CancellationToken};

use super::ws::{Backlog, Watched, in_time, volatile_packets};
use crate::{
    handler::EngineIoHandler,
    socket::{InternalRx, QueuedPackets, Socket},
};

/// An upgraded connection given back as its TCP stream.
pub struct RawTcp {
    /// The client's TCP stream.
    pub stream: TcpStream,
    /// What the HTTP server had read past the upgrade request: the first WebSocket bytes.
    pub read_buf: Bytes,
    /// Kept as long as the connection is open (e.g. its place under a connection cap).
    pub keep: Box<dyn Any + Send + Sync>,
}

/// Gives an upgraded connection back as its TCP stream, or the connection unchanged when it
/// is not one the server knows (HTTP/2, TLS).
pub type RawTcpFn = fn(hyper::upgrade::Upgraded) -> Result<RawTcp, hyper::upgrade::Upgraded>;

/// The connection tungstenite reads from: what the HTTP server read ahead first, then the
/// read half. It writes through the write half until the writer takes it ([`start`]); after
/// that tungstenite's own writes (its automatic pongs and close replies) go nowhere: the
/// reader hands those to the writer ([`Control`]).
pub(crate) struct RawIo {
    read_ahead: Bytes,
    rd: OwnedReadHalf,
    wr: Option<OwnedWriteHalf>,
    _keep: Box<dyn Any + Send + Sync>,
}

impl RawIo {
    pub(crate) fn new(tcp: RawTcp) -> Self {
        let (rd, wr) = tcp.stream.into_split();
        // A copy: the bytes point into the HTTP server's read buffer (8 KiB or more), which
        // would otherwise stay allocated as long as the socket.
        let read_ahead = match tcp.read_buf.is_empty() {
            true => Bytes::new(),
            false => Bytes::copy_from_slice(&tcp.read_buf),
        };
        Self {
            read_ahead,
            rd,
            wr: Some(wr),
            _keep: tcp.keep,
        }
    }
}

impl AsyncRead for RawIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.read_ahead.is_empty() {
            return Pin::new(&mut self.rd).poll_read(cx, buf);
        }
        let n = buf.remaining().min(self.read_ahead.len());
        buf.put_slice(&self.read_ahead[..n]);
        self.read_ahead.advance(n);
        if self.read_ahead.is_empty() {
            self.read_ahead = Bytes::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for RawIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.wr.as_mut() {
            Some(wr) => Pin::new(wr).poll_write(cx, buf),
            None => Poll::Ready(Ok(buf.len())),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.wr.as_mut() {
            Some(wr) => Pin::new(wr).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.wr.as_mut() {
            Some(wr) => Pin::new(wr).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

/// The reading side of a raw WebSocket.
pub(crate) type RawWs = WebSocketStream<Watched<RawIo>>;

/// Takes the write half out of an opened raw WebSocket (whose handshake is written) and
/// spawns the writer that owns it; from then on, with `direct`, the session's senders may
/// write directly ([`Socket::reserve`]). `None` if it was taken already.
pub(crate) fn start<H: EngineIoHandler>(
    socket: &Arc<Socket<H::Data>>,
    ws: &mut RawWs,
    backlog: &Arc<Backlog>,
    direct: bool,
) -> Option<()> {
    let conn = ws.get_mut();
    let wr = conn.io.wr.take()?;
    conn.backlog = None;
    let out = Arc::new(RawOut::new(wr, backlog.clone(), socket.protocol));
    // (A socket has one WebSocket: a second one is refused before it gets here.)
    if direct {
        let _ = socket.raw_out.set(out.clone());
    }
    tokio::spawn(forward_raw::<H>(socket.clone(), RawWriter(out)));
    Some(())
}

/// Frames the reader queues for the writer: pongs and the reply to the client's close.
#[derive(Debug, Default)]
pub(crate) struct Control(Mutex<ControlFrames>);

#[derive(Debug, Default)]
struct ControlFrames {
    frames: BytesMut,
    /// A close frame is among them, or was written: the writer sends no close of its own.
    closed: bool,
}

impl Control {
    /// Queues a pong to a client's ping and wakes the writer; returns the bytes queued.
    pub(crate) fn pong<D>(&self, socket: &Socket<D>, ping: &[u8]) -> usize
    where
        D: Default + Send + Sync + 'static,
    {
        let queued = {
            let mut control = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            put_frame(&mut control.frames, OP_PONG, ping);
            control.frames.len()
        };
        // A no-op packet wakes the writer. When the queue is full the writer is awake
        // anyway, and takes the pong after its next batch.
        let _ = socket.internal_tx.try_send(Box::new(smallvec![Packet::Noop]));
        queued
    }

    /// Queues the reply to a client's close: its code and reason echoed (a code a client may
    /// not send answered with a protocol error), as tungstenite replies.
    pub(crate) fn close_reply(&self, close: Option<&CloseFrame>) {
        let mut payload = Vec::new();
        if let Some(close) = close {
            let (code, reason) = if close.code.is_allowed() {
                (close.code, close.reason.as_str())
            } else {
                (CloseCode::Protocol, "Protocol violation")
            };
            payload.extend_from_slice(&u16::from(code).to_be_bytes());
            payload.extend_from_slice(reason.as_bytes());
        }
        let mut control = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if !control.closed {
            put_frame(&mut control.frames, OP_CLOSE, &payload);
            control.closed = true;
        }
    }

    /// Moves the queued frames to `buf`; with `closing`, a close frame last unless one was
    /// queued or written already.
    fn take_into(&self, buf: &mut BytesMut, closing: bool) {
        let mut control = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        buf.extend_from_slice(&control.frames);
        control.frames = BytesMut::new();
        if closing && !control.closed {
            put_frame(buf, OP_CLOSE, &[]);
            control.closed = true;
        }
    }
}

const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PONG: u8 = 0xA;

/// An unmasked, final frame's header: opcode and payload length (RFC 6455 §5.2).
fn put_header(buf: &mut BytesMut, opcode: u8, len: usize) {
    buf.put_u8(0x80 | opcode);
    if let Ok(len @ 0..=125) = u8::try_from(len) {
        buf.put_u8(len);
    } else if let Ok(len) = u16::try_from(len) {
        buf.put_u8(126);
        buf.put_u16(len);
    } else {
        buf.put_u8(127);
        buf.put_u64(len as u64);
    }
}

fn put_frame(buf: &mut BytesMut, opcode: u8, payload: &[u8]) {
    put_header(buf, opcode, payload.len());
    buf.extend_from_slice(payload);
}

/// Appends the frames of `packets` to `buf`, as the tungstenite writer sends them.
fn put_packets(protocol: ProtocolVersion, packets: &[Packet], buf: &mut BytesMut) {
    for packet in packets {
        match packet {
            Packet::Binary(bin) | Packet::BinaryV3(bin) => {
                if protocol == ProtocolVersion::V3 {
                    // v3 requires the packet type as the first byte.
                    put_header(buf, OP_BINARY, bin.len() + 1);
                    buf.put_u8(0x04);
                    buf.extend_from_slice(bin);
                } else {
                    put_frame(buf, OP_BINARY, bin);
                }
            }
            // The last no-op of an upgrade from polling, or a wake-up for control frames.
            Packet::Noop => {}
            Packet::Message(msg) => {
                put_header(buf, OP_TEXT, 1 + msg.len());
                buf.put_u8(b'4');
                buf.extend_from_slice(msg.as_bytes());
            }
            packet => put_frame(buf, OP_TEXT, String::from(packet.clone()).as_bytes()),
        }
    }
}

/// Largest buffer of frames a thread keeps for the next writer.
const MAX_REUSED_FRAMES: usize = 16 * 1024;

thread_local! {
    /// Where this thread's raw writers build their frames.
    static FRAMES: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// Runs `f` on this thread's frame buffer, emptied (a new one while the thread shuts down).
fn with_frames(f: impl FnOnce(&mut BytesMut)) {
    let mut f = Some(f);
    let _ = FRAMES.try_with(|frames| {
        if let Some(f) = f.take() {
            let mut frames = frames.borrow_mut();
            frames.clear();
            f(&mut frames);
            if frames.capacity() > MAX_REUSED_FRAMES {
                *frames = BytesMut::new();
            }
        }
    });
    if let Some(f) = f {
        f(&mut BytesMut::new());
    }
}

/// The write side of a raw WebSocket, shared by its writer and the session's senders: the
/// write half and what the connection has not taken of it, behind one lock.
///
/// sockgate patch (issue 32 stage 4, direct write): whoever holds the lock owns the write
/// side. The writer holds it from taking a batch off the queue to handing it to the kernel,
/// so a packet taken off the queue is never overtaken; a sender writes a packet itself
/// ([`DirectTo::write`]) only when it gets the lock at once, nothing is queued or pending
/// and the session is open.
pub(crate) struct RawOut {
    state: Mutex<RawState>,
    backlog: Arc<Backlog>,
    protocol: ProtocolVersion,
}

struct RawState {
    wr: Option<OwnedWriteHalf>,
    /// Frames the connection has not taken: empty (no allocation) while the client reads.
    pending: BytesMut,
    /// The writer holds the session's queue and is not closing: senders may write directly.
    open: bool,
}

impl RawOut {
    fn new(wr: OwnedWriteHalf, backlog: Arc<Backlog>, protocol: ProtocolVersion) -> Self {
        Self {
            state: Mutex::new(RawState {
                wr: Some(wr),
                pending: BytesMut::new(),
                open: false,
            }),
            backlog,
            protocol,
        }
    }

    fn lock(&self) -> MutexGuard<'_, RawState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The writer holds the queue: from now on senders may write directly.
    fn open(&self) {
        self.lock().open = true;
    }

    /// Takes the next batch off the queue and writes it, with whatever else is queued, without
    /// letting go of the write side in between. `Ready(false)` when the queue is closed.
    fn pop_and_write(&self, cx: &mut Context<'_>, rx: &mut mpsc::Receiver<QueuedPackets>) -> Poll<bool> {
        let mut state = self.lock();
        match rx.poll_recv(cx) {
            Poll::Ready(Some(packets)) => {
                self.send(&mut state, Some(packets), Some(rx), false);
                Poll::Ready(true)
            }
            Poll::Ready(None) => Poll::Ready(false),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Writes `packets` (volatile ones, or none when `closing`) and the control frames.
    fn write(&self, packets: Option<QueuedPackets>, closing: bool) {
        self.send(&mut self.lock(), packets, None, closing);
    }

    /// Writes the frames of `packets`, of whatever else is queued (`more`) and the control
    /// frames, in one write if the connection takes them; keeps the rest pending. A closing
    /// session's writer ends with a close frame, and no sender writes directly after it.
    fn send(
        &self,
        state: &mut RawState,
        packets: Option<QueuedPackets>,
        more: Option<&mut mpsc::Receiver<QueuedPackets>>,
        closing: bool,
    ) {
        with_frames(|frames| {
            if let Some(packets) = packets {
                put_packets(self.protocol, &packets, frames);
            }
            if let Some(rx) = more {
                while let Ok(packets) = rx.try_recv() {
                    put_packets(self.protocol, &packets, frames);
                }
            }
            if closing {
                state.open = false;
            }
            self.backlog.control.take_into(frames, closing);
            state.write_now(frames, &self.backlog);
        });
    }

    /// Waits until the connection has taken every pending frame.
    async fn write_pending(&self) {
        std::future::poll_fn(|cx| {
            let mut state = self.lock();
            let RawState { wr, pending, .. } = &mut *state;
            if pending.is_empty() {
                return Poll::Ready(());
            }
            while let (false, Some(wr)) = (pending.is_empty(), wr.as_mut()) {
                match Pin::new(wr).poll_write(cx, pending) {
                    Poll::Ready(Ok(n)) if n > 0 => pending.advance(n),
                    Poll::Pending => return Poll::Pending,
                    // Dropped: the reader sees the broken connection and closes the session.
                    _e => {
                        #[cfg(feature = "tracing")]
                        tracing::debug!("ws write error: {_e:?}");
                        break;
                    }
                }
            }
            // A client that was slow once does not keep its backlog's allocation.
            *pending = BytesMut::new();
            self.backlog.set_left(0);
            Poll::Ready(())
        })
        .await
    }
}

impl RawState {
    /// A non-blocking write of `frames`, after whatever is pending.
    fn write_now(&mut self, frames: &[u8], backlog: &Backlog) {
        if frames.is_empty() {
            return;
        }
        let Some(wr) = self.wr.as_ref() else { return };
        let written = if self.pending.is_empty() {
            match wr.try_write(frames) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                // Dropped: the reader sees the broken connection and closes the session.
                Err(_e) => {
                    #[cfg(feature = "tracing")]
                    tracing::debug!("ws write error: {_e}");
                    frames.len()
                }
            }
        } else {
            0
        };
        if written < frames.len() {
            self.pending.extend_from_slice(&frames[written..]);
        }
        backlog.set_left(self.pending.len());
    }
}

/// What a sender needs to write a session's packet itself: its [`RawOut`], and its queue and
/// cancellation to check that nothing is queued and the session is not closing. sockgate patch.
pub(crate) struct DirectTo<'a> {
    pub(crate) out: &'a RawOut,
    pub(crate) queue: &'a mpsc::Sender<QueuedPackets>,
    pub(crate) closing: &'a CancellationToken,
}

/// What became of a packet given to [`DirectTo::write`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Direct {
    /// The connection took it.
    Written,
    /// The connection took part of it or none: the rest is pending, the writer must be woken.
    Pending,
    /// Not written: it goes through the queue.
    Queue,
}

impl DirectTo<'_> {
    /// Writes `packets` now if the write side is free, nothing is queued (the caller holds a
    /// slot of the queue: that one only) or pending and the session is open.
    pub(crate) fn write(&self, packets: &[Packet]) -> Direct {
        let mut state = match self.out.state.try_lock() {
            Ok(state) => state,
            Err(TryLockError::Poisoned(state)) => state.into_inner(),
            Err(TryLockError::WouldBlock) => return Direct::Queue,
        };
        if !state.open
            || !state.pending.is_empty()
            || self.queue.capacity() + 1 != self.queue.max_capacity()
            || self.closing.is_cancelled()
        {
            return Direct::Queue;
        }
        with_frames(|frames| {
            put_packets(self.out.protocol, packets, frames);
            state.write_now(frames, &self.out.backlog);
        });
        match state.pending.is_empty() {
            true => Direct::Written,
            false => Direct::Pending,
        }
    }
}

/// The writer's hold on its [`RawOut`]: when the writer stops, senders stop writing directly
/// and the write half is let go of.
struct RawWriter(Arc<RawOut>);

impl Drop for RawWriter {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.open = false;
        // Dropping the write half would shut the stream's writing down at once; the stream
        // closes when the reader drops its half, as with the split tungstenite stream.
        if let Some(wr) = state.wr.take() {
            wr.forget();
        }
    }
}

/// The raw counterpart of `ws::forward_to_socket`: the same queue, order, batching and
/// close grace, frames written through [`RawOut`].
async fn forward_raw<H: EngineIoHandler>(socket: Arc<Socket<H::Data>>, out: RawWriter) {
    // A polling request that was in progress during the upgrade may still hold the lock.
    let Some(mut internal_rx) = socket
        .internal_rx
        .lock()
        .with_cancellation_token(&socket.cancellation_token)
        .await
    else {
        return;
    };
    let InternalRx {
        buffered_rx,
        volatile_rx,
        ..
    } = &mut *internal_rx;
    let out = &*out.0;
    out.open();
    let cancelled = socket.cancellation_token.cancelled();
    tokio::pin!(cancelled);
    let volatile = volatile_packets(volatile_rx);
    tokio::pin!(volatile);
    let mut give_up_at = None;

    loop {
        tokio::select! {
            biased;
            open = std::future::poll_fn(|cx| out.pop_and_write(cx, buffered_rx)) => {
                if !open {
                    break;
                }
            }
            () = &mut cancelled => break,
            Some(packets) = volatile.next() => out.write(Some(packets), false),
        }
        if !in_time(&socket, cancelled.as_mut(), &mut give_up_at, out.write_pending()).await {
            return;
        }
    }

    out.write(None, true);
    in_time(&socket, cancelled, &mut give_up_at, out.write_pending()).await;
}

#[cfg(test)]
#[path = "ws_raw_direct_tests.rs"]
mod direct_tests;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use engineioxide_core::TransportType;
    use futures_util::SinkExt;
    use http::Request;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };
    use tokio_tungstenite::tungstenite::{Message, protocol::Role};

    use super::*;
    use crate::{DisconnectReason, config::EngineIoConfig, handler::EngineIoHandler};

    const TIMEOUT: Duration = Duration::from_secs(5);

    #[derive(Debug)]
    struct StubHandler;
    impl EngineIoHandler for StubHandler {
        type Data = ();
        fn on_connect(self: Arc<Self>, _: Arc<Socket<()>>) {}
        fn on_disconnect(&self, _: Arc<Socket<()>>, _: DisconnectReason) {}
        fn on_message(self: &Arc<Self>, _: crate::Str, _: Arc<Socket<()>>) {}
        fn on_binary(self: &Arc<Self>, _: Bytes, _: Arc<Socket<()>>) {}
    }

    pub(super) fn socket(protocol: ProtocolVersion) -> Arc<Socket<()>> {
        Arc::new(Socket::new(
            protocol,
            TransportType::Websocket,
            &EngineIoConfig::default(),
            Request::<()>::default().into_parts().0,
            Box::new(|_, _| ()),
            false,
        ))
    }

    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, server) = tokio::join!(client, listener.accept());
        (server.unwrap().0, client.unwrap())
    }

    /// A raw server whose writer is started, and a tungstenite client of it.
    pub(super) async fn raw_pair(
        socket: &Arc<Socket<()>>,
    ) -> (RawWs, Arc<Backlog>, WebSocketStream<TcpStream>) {
        let (server, client) = tcp_pair().await;
        let backlog = Arc::new(Backlog::default());
        let io = RawIo::new(RawTcp {
            stream: server,
            read_buf: Bytes::new(),
            keep: Box::new(()),
        });
        let io = Watched::new(io, backlog.clone());
        let mut ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
        assert!(start::<StubHandler>(socket, &mut ws, &backlog, true).is_some());
        assert!(start::<StubHandler>(socket, &mut ws, &backlog, true).is_none());
        let client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        (ws, backlog, client)
    }

    pub(super) async fn next(client: &mut WebSocketStream<TcpStream>) -> Message {
        tokio::time::timeout(TIMEOUT, client.next())
            .await
            .expect("a frame in time")
            .expect("a frame")
            .expect("a valid frame")
    }

    /// Every length class of the frame header, text and binary, as tungstenite reads them.
    #[tokio::test]
    async fn a_client_reads_the_frames_in_order() {
        let socket = socket(ProtocolVersion::V4);
        let (_ws, _backlog, mut client) = raw_pair(&socket).await;
        let texts = ["hello".to_string(), "x".repeat(124), "y".repeat(125), "z".repeat(70_000)];
        for text in &texts {
            socket.emit(text.clone()).unwrap();
        }
        socket.emit_binary(vec![1u8, 2, 3]).unwrap();
        for text in &texts {
            assert_eq!(next(&mut client).await, Message::text(format!("4{text}")));
        }
        assert_eq!(next(&mut client).await, Message::binary(vec![1u8, 2, 3]));
    }

    #[tokio::test]
    async fn v3_binary_carries_its_packet_type() {
        let socket = socket(ProtocolVersion::V3);
        let (_ws, _backlog, mut client) = raw_pair(&socket).await;
        socket.emit_binary(vec![1u8, 2]).unwrap();
        assert_eq!(next(&mut client).await, Message::binary(vec![4u8, 1, 2]));
    }

    /// Pongs go through the writer; a closing session ends with one close frame: the reply to
    /// the client's close when there was one, an empty close otherwise.
    #[tokio::test]
    async fn pongs_and_the_close_go_through_the_writer() {
        let socket = socket(ProtocolVersion::V4);
        let (_ws, backlog, mut client) = raw_pair(&socket).await;
        assert!(backlog.control.pong(&socket, b"ping-1") > 0);
        assert_eq!(next(&mut client).await, Message::Pong(Bytes::from_static(b"ping-1")));

        socket.emit("last").unwrap();
        socket.cancellation_token.cancel();
        assert_eq!(next(&mut client).await, Message::text("4last"));
        assert_eq!(next(&mut client).await, Message::Close(None));

        let socket2 = self::socket(ProtocolVersion::V4);
        let (ws, backlog, mut client) = raw_pair(&socket2).await;
        let bye = CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        };
        backlog.control.close_reply(Some(&bye));
        backlog.control.close_reply(Some(&bye));
        // (A session closed before its writer started writes nothing, as before.)
        tokio::time::sleep(Duration::from_millis(20)).await;
        socket2.cancellation_token.cancel();
        assert_eq!(next(&mut client).await, Message::Close(Some(bye)));
        // The reader stops with the session: the connection closes.
        drop(ws);
        let end = tokio::time::timeout(TIMEOUT, client.next()).await.expect("end");
        assert!(
            !matches!(end, Some(Ok(Message::Close(_)))),
            "one close frame only: {end:?}"
        );
    }

    /// What the kernel does not take waits with the writer (the backlog says how much) and
    /// reaches the client, in order, once it reads.
    #[tokio::test]
    async fn a_client_that_stops_reading_gets_everything_once_it_reads() {
        const MESSAGES: usize = 100;
        let socket = socket(ProtocolVersion::V4);
        let (_ws, backlog, mut client) = raw_pair(&socket).await;
        let big = "b".repeat(64 * 1024);
        for _ in 0..MESSAGES {
            socket.emit(big.clone()).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!backlog.is_empty(), "6.4 MB cannot all be in the kernel's buffers");
        for _ in 0..MESSAGES {
            assert_eq!(next(&mut client).await, Message::text(format!("4{big}")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(backlog.is_empty());
        client.send(Message::Close(None)).await.unwrap();
    }

    /// What the HTTP server read past the upgrade request is read first.
    #[tokio::test]
    async fn the_read_ahead_comes_first() {
        let (server, mut client) = tcp_pair().await;
        let mut io = RawIo::new(RawTcp {
            stream: server,
            read_buf: Bytes::from_static(b"abc"),
            keep: Box::new(()),
        });
        client.write_all(b"def").await.unwrap();
        let mut read = [0; 6];
        tokio::time::timeout(TIMEOUT, io.read_exact(&mut read))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&read, b"abcdef");
    }
}
