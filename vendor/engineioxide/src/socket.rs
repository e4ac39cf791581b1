//! ## A [`Socket`] represents a client connection to the server
//!
//! It can be used to :
//! * Emit binary or string data
//! * Get a reference to the request made to connect to the socket.io server
//! * Close the connection
//!
//! #### Example :
//! ```rust
//! # use bytes::Bytes;
//! # use engineioxide::service::EngineIoService;
//! # use engineioxide::handler::EngineIoHandler;
//! # use engineioxide::{Socket, DisconnectReason, Str};
//! # use std::sync::{Mutex, Arc};
//! # use std::sync::atomic::{AtomicUsize, Ordering};
//! // Global state
//! #[derive(Debug, Default)]
//! struct MyHandler {
//!     user_cnt: AtomicUsize,
//! }
//!
//! // Socket state
//! #[derive(Debug, Default)]
//! struct SocketState {
//!     id: Mutex<String>,
//! }
//!
//! impl EngineIoHandler for MyHandler {
//!     type Data = SocketState;
//!
//!     fn on_connect(self: Arc<Self>, socket: Arc<Socket<SocketState>>) {
//!         // Get the request made to initialize the connection
//!         // and check that the authorization header is correct
//!         let connected = socket.req_parts.headers.get("Authorization")
//!             .map(|a| a == "mysuperpassword!").unwrap_or_default();
//!         // Close the socket if the authentication is invalid
//!         if !connected {
//!             socket.close(DisconnectReason::TransportError);
//!             return;
//!         }
//!
//!         let cnt = self.user_cnt.fetch_add(1, Ordering::Relaxed) + 1;
//!         // Emit string data to the client
//!         socket.emit(cnt.to_string()).ok();
//!     }
//!     fn on_disconnect(&self, socket: Arc<Socket<SocketState>>, reason: DisconnectReason) {
//!         let cnt = self.user_cnt.fetch_sub(1, Ordering::Relaxed) - 1;
//!     }
//!     fn on_message(self: &Arc<Self>, msg: Str, socket: Arc<Socket<SocketState>>) {
//!         *socket.data.id.lock().unwrap() = msg.into(); // bind a provided user id to a socket
//!     }
//!     fn on_binary(self: &Arc<Self>, data: Bytes, socket: Arc<Socket<SocketState>>) { }
//! }
//!
//! let svc = EngineIoService::new(Arc::new(MyHandler::default()));
//! ```
use std::{
    collections::VecDeque,
    fmt::Debug,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, AtomicU8, Ordering},
    },
    time::Duration,
};

use crate::{
    config::EngineIoConfig,
    errors::Error,
    transport::ws_raw::{Direct, DirectTo, RawOut},
};
use bytes::Bytes;
use engineioxide_core::{Packet, PacketBuf, ProtocolVersion, Str, TransportType};
use futures_util::FutureExt;
use http::request::Parts;
use smallvec::{SmallVec, smallvec};
use tokio::sync::{
    Mutex, Notify,
    mpsc::{self, Receiver, error::TrySendError},
    watch,
};

pub use engineioxide_core::Sid;
use tokio_util::{future::FutureExt as _, sync::CancellationToken};

/// How long a closing session's writer may still take to write what was queued before the
/// close (the Socket.IO disconnect packet, the Engine.IO close packet) to a peer that reads
/// slowly. An aborted session gets no grace.
///
/// sockgate patch: without a bound, a writer blocked on a peer that stopped reading held the
/// queue's lock forever, and the handler was never told the session had closed.
pub const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// A handle on an Engine.IO session, found in its request's extensions
/// (`socket.req_parts.extensions`), for code that only sees the request (e.g. a Socket.IO
/// socket, which does not expose its Engine.IO socket).
///
/// sockgate patch: how sockgate closes a session whose queue is full (a kick, a slow
/// consumer), which Socket.IO's `disconnect` cannot (it has to queue a packet first).
#[derive(Clone)]
pub struct SessionHandle(std::sync::Weak<dyn AbortSession>);

impl SessionHandle {
    pub(crate) fn new<D: Default + Send + Sync + 'static>(
        socket: std::sync::Weak<Socket<D>>,
    ) -> Self {
        Self(socket)
    }

    /// [`Socket::abort`]; false if the session is gone or closing already.
    pub fn abort(&self, reason: DisconnectReason) -> bool {
        self.0.upgrade().is_some_and(|s| s.abort(reason))
    }

    /// [`Socket::close`]: what is queued is still written, for [`CLOSE_GRACE`] at most.
    pub fn close(&self, reason: DisconnectReason) {
        if let Some(socket) = self.0.upgrade() {
            socket.close(reason);
        }
    }

    /// [`Socket::is_full`]; false if the session is gone.
    pub fn is_full(&self) -> bool {
        self.0.upgrade().is_some_and(|s| s.is_full())
    }
}

impl Debug for SessionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionHandle")
    }
}

/// sockgate patch: a handshake request carrying this extension opens a session whose client
/// may send binary (Engine.IO binary messages), which is otherwise refused. For Socket.IO's
/// msgpack parser, which encodes every packet as one binary message (no attachments to buffer
/// across messages); each is bounded by `max_payload` / `ws_max_message_size` as any other.
#[derive(Clone, Copy, Debug)]
pub struct AcceptBinary;

/// sockgate patch: a handshake request carrying this extension opens a session that is closed
/// (as [`Socket::abort`], reason [`DisconnectReason::TransportError`]) the moment a packet finds
/// its queue full, and the callback is called once, then. (The callback is also told when the
/// websocket transport closes a peer that leaves its pongs unread, extension or not.) Without it a full session stays open
/// and refuses packets: Socket.IO ignores the refusal of a broadcast that came from another
/// instance, and its `disconnect()` needs a free slot, so a peer that stopped reading could
/// neither be fed nor closed.
#[derive(Clone)]
pub struct CloseWhenFull(pub Arc<dyn Fn() + Send + Sync>);

impl Debug for CloseWhenFull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CloseWhenFull")
    }
}

/// What a [`SessionHandle`] can do, whatever the socket's data type.
trait AbortSession: Send + Sync {
    fn abort(&self, reason: DisconnectReason) -> bool;
    fn close(&self, reason: DisconnectReason);
    fn is_full(&self) -> bool;
}

impl<D: Default + Send + Sync + 'static> AbortSession for Socket<D> {
    fn abort(&self, reason: DisconnectReason) -> bool {
        Socket::abort(self, reason)
    }
    fn close(&self, reason: DisconnectReason) {
        Socket::close(self, reason)
    }
    fn is_full(&self) -> bool {
        Socket::is_full(self)
    }
}

/// A [`DisconnectReason`] represents the reason why a [`Socket`] was closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The client gracefully closed the connection
    TransportClose,
    /// The client sent multiple polling requests at the same time (it is forbidden according to the engine.io protocol)
    MultipleHttpPollingError,
    /// The client sent a bad request / the packet could not be parsed correctly
    PacketParsingError,
    /// An error occured in the transport layer
    /// (e.g. the client closed the connection without sending a close packet)
    TransportError,
    /// The client did not respond to the heartbeat
    HeartbeatTimeout,
    /// The server is being closed
    ClosingServer,
}

/// Convert an [`Error`] to a [`DisconnectReason`] if possible
/// This is used to notify the [`Handler`](crate::handler::EngineIoHandler) of the reason why a [`Socket`] was closed
/// If the error cannot be converted to a [`DisconnectReason`] it means that the error was not fatal and the [`Socket`] can be kept alive
impl From<&Error> for Option<DisconnectReason> {
    fn from(err: &Error) -> Self {
        use Error::*;
        match err {
            WsTransport(_) => Some(DisconnectReason::TransportError),
            BadPacket(_) | PacketParse(_) => Some(DisconnectReason::PacketParsingError),
            HeartbeatTimeout => Some(DisconnectReason::HeartbeatTimeout),
            _ => None,
        }
    }
}

/// A permit to emit a message to the client.
/// A permit holds a place in the internal channel to send one packet to the client.
///
/// sockgate patch (issue 32 stage 4, direct write): on a WebSocket whose writer owns the
/// TCP write half, a permit writes its packet to the connection itself when nothing is
/// queued or pending and the session is open (`transport::ws_raw::DirectTo`); what the
/// kernel does not take is left to the writer. Otherwise it queues the packet, as before.
pub struct Permit<'a> {
    inner: mpsc::Permit<'a, QueuedPackets>,
    direct: Option<DirectTo<'a>>,
}

/// What the per-socket channel carries: one pointer per slot.
///
/// sockgate patch: tokio's bounded `mpsc` allocates its first block of 32 slots when the channel
/// is created, so an inline `PacketBuf` (≈ 170 B) cost every socket ≈ 5.4 KiB up front, used or
/// not. Boxed, the block is ≈ 0.3 KiB and each queued message pays one small allocation.
pub(crate) type QueuedPackets = Box<PacketBuf>;
impl Permit<'_> {
    /// Consume the permit and emit a message to the client.
    #[inline]
    pub fn emit(self, msg: Str) {
        self.write_or_queue(smallvec![Packet::Message(msg)]);
    }
    /// Consume the permit and emit a binary message to the client.
    #[inline]
    pub fn emit_binary(self, data: Bytes) {
        self.write_or_queue(smallvec![Packet::Binary(data)]);
    }

    /// Writes `packets` directly when it may (see [`Permit`]), queues them otherwise; when
    /// the kernel took only part of them, a no-op packet in the permit's slot wakes the writer
    /// for the rest. sockgate patch.
    fn write_or_queue(self, packets: PacketBuf) {
        let Permit { inner, direct } = self;
        match direct.map(|direct| direct.write(&packets)) {
            Some(Direct::Written) => {}
            Some(Direct::Pending) => inner.send(Box::new(smallvec![Packet::Noop])),
            Some(Direct::Queue) | None => inner.send(Box::new(packets)),
        }
    }

    /// Consume the permit and emit a message with multiple binary data to the client.
    ///
    /// It can be used to ensure atomicity when sending a string packet with adjacent binary packets.
    pub fn emit_many(self, msg: Str, data: VecDeque<Bytes>) {
        let mut packets = SmallVec::with_capacity(data.len() + 1);
        packets.push(Packet::Message(msg));
        for d in data {
            packets.push(Packet::Binary(d));
        }
        self.write_or_queue(packets);
    }

    /// Consume the permit and emit a message with multiple binary data to the client.
    ///
    /// It can be used to ensure atomicity when sending a string packet with adjacent binary packets.
    pub fn emit_many_binary(self, bin: Bytes, data: Vec<Bytes>) {
        let mut packets = SmallVec::with_capacity(data.len() + 1);
        packets.push(Packet::Binary(bin));
        for d in data {
            packets.push(Packet::Binary(d));
        }
        self.write_or_queue(packets);
    }
}

#[derive(Debug)]
pub(crate) struct InternalRx {
    pub buffered_rx: Receiver<QueuedPackets>,
    pub peeked_packet: Option<PacketBuf>,
    pub volatile_rx: watch::Receiver<Option<QueuedPackets>>,
}

impl InternalRx {
    fn new(
        buffered_rx: Receiver<QueuedPackets>,
        volatile_rx: watch::Receiver<Option<QueuedPackets>>,
    ) -> Self {
        Self {
            buffered_rx,
            peeked_packet: None,
            volatile_rx,
        }
    }
}

/// A [`Socket`] represents a client connection to the server.
/// It is agnostic to the [`TransportType`].
///
/// It handles :
/// * the packet communication between with the `Engine`
///   and the user defined [`Handler`](crate::handler::EngineIoHandler).
/// * the user defined [`Data`](crate::handler::EngineIoHandler::Data) bound to the socket.
/// * the heartbeat job that verify that the connection is still up by sending packets periodically.
pub struct Socket<D>
where
    D: Default + Send + Sync + 'static,
{
    /// The socket id
    pub id: Sid,

    /// The protocol version used by the socket
    pub protocol: ProtocolVersion,

    /// The transport type represented as a bitfield
    /// It is represented as a bitfield to allow the use of an [`AtomicU8`] so it can be shared between threads
    /// without any mutex
    transport: AtomicU8,

    /// Whether the socket is currently upgrading to a new transport.
    upgrading: AtomicBool,

    /// Set when the session is closed without flushing what is queued (see [`Socket::abort`]).
    ///
    /// sockgate patch: a peer that stops reading leaves the writer blocked on a full TCP send
    /// buffer; a closing session gives it [`CLOSE_GRACE`] to finish, an aborted one none.
    aborted: AtomicBool,

    /// Channel to send [`PacketBuf`] to the connection
    ///
    /// It is used and managed by the [`EngineIo`](crate::engine) struct depending on the transport type
    ///
    /// It is locked if [`EngineIo`](crate::engine) is currently reading from it :
    /// * In case of polling transport it will be locked and released for each request
    /// * In case of websocket transport it will always be locked until the connection is closed
    ///
    /// Closing behavior is driven by the [`Socket::cancellation_token`].
    ///
    /// The channel is made of a [`SmallVec`] of [`Packet`]s so that adjacent packets can be sent atomically.
    pub(crate) internal_rx: Mutex<InternalRx>,

    /// Channel to send [PacketBuf] to the internal connection
    pub(crate) internal_tx: mpsc::Sender<QueuedPackets>,

    /// Channel to send volatile [PacketBuf]s that bypass the internal buffer.
    /// Uses a [`watch`](tokio::sync::watch) channel so only the latest volatile
    /// message is retained; subsequent volatile sends overwrite the previous one.
    volatile_tx: watch::Sender<Option<QueuedPackets>>,

    /// Signals a Pong [`Packet`] (v4 protocol) or a Ping (v3 protocol) from the connection to
    /// the heartbeat job, which runs in a separate task. At most one signal is kept: one means
    /// the client is alive.
    ///
    /// sockgate patch: a `Notify` instead of an `mpsc::channel(1)` behind a `Mutex` (the
    /// channel's shared state is cache-padded: ≈ 0.5 KiB per socket for a one-bit message).
    heartbeat: Notify,

    /// A cancellation token that will be triggered when the socket is being closed.
    pub(crate) cancellation_token: CancellationToken,

    /// Function to call when the socket is closed
    ///
    /// sockgate patch: an `Arc` (was a `Box`) so a polling session's close can run it after
    /// the client's next polls (see [`Socket::close`]).
    close_fn: Arc<dyn Fn(Sid, DisconnectReason) + Send + Sync>,
    /// User data bound to the socket
    pub data: D,

    /// Http Request data used to create a socket
    pub req_parts: Parts,

    /// If the client supports binary packets (via polling XHR2)
    pub(crate) supports_binary: bool,

    /// The write side of a WebSocket whose writer owns the TCP write half, set when the
    /// writer starts: senders write through it directly (see [`Permit`]). sockgate patch.
    pub(crate) raw_out: OnceLock<Arc<RawOut>>,
}

impl<D> Socket<D>
where
    D: Default + Send + Sync + 'static,
{
    pub(crate) fn new(
        protocol: ProtocolVersion,
        transport: TransportType,
        config: &EngineIoConfig,
        req_parts: Parts,
        close_fn: Box<dyn Fn(Sid, DisconnectReason) + Send + Sync>,
        supports_binary: bool,
    ) -> Self {
        let (internal_tx, internal_rx) = mpsc::channel(config.max_buffer_size);
        let (volatile_tx, volatile_rx) = watch::channel(None);

        Self {
            id: Sid::new(),
            protocol,
            transport: AtomicU8::new(transport as u8),
            upgrading: AtomicBool::new(false),
            aborted: AtomicBool::new(false),

            internal_rx: Mutex::new(InternalRx::new(internal_rx, volatile_rx)),
            internal_tx,

            volatile_tx,

            heartbeat: Notify::new(),
            cancellation_token: CancellationToken::new(),

            close_fn: Arc::from(close_fn),

            data: D::default(),
            req_parts,

            supports_binary,
            raw_out: OnceLock::new(),
        }
    }

    /// Sends a packet to the connection.
    pub(crate) fn send(&self, packet: Packet) -> Result<(), TrySendError<Packet>> {
        #[cfg(feature = "tracing")]
        tracing::debug!(?packet, "sending packet");

        self.internal_tx
            .try_send(Box::new(smallvec![packet]))
            .map_err(|p| match p {
                TrySendError::Full(mut p) => {
                    self.closed_when_full();
                    TrySendError::Full(p.pop().unwrap())
                }
                TrySendError::Closed(mut p) => TrySendError::Closed(p.pop().unwrap()),
            })?;
        Ok(())
    }

    /// sockgate patch: see [`CloseWhenFull`].
    fn closed_when_full(&self) {
        if self.req_parts.extensions.get::<CloseWhenFull>().is_some() {
            self.close_slow_consumer();
        }
    }

    /// Closes the session of a peer that does not read (as [`Socket::abort`]); the
    /// [`CloseWhenFull`] callback, if any, is told once, by the call that closed it.
    ///
    /// sockgate patch: a full queue, and pongs the connection does not take (`transport::ws`).
    pub(crate) fn close_slow_consumer(&self) {
        if self.abort(DisconnectReason::TransportError) {
            if let Some(CloseWhenFull(told)) = self.req_parts.extensions.get::<CloseWhenFull>() {
                told();
            }
        }
    }
    pub(crate) fn is_upgrading(&self) -> bool {
        self.upgrading.load(Ordering::Relaxed)
    }
    pub(crate) fn start_upgrade(&self) {
        self.upgrading.store(true, Ordering::Relaxed);
    }

    /// Spawn the heartbeat job
    ///
    /// Keep a handle to the job so that it can be aborted when the socket is closed
    pub(crate) fn spawn_heartbeat(self: Arc<Self>, interval: Duration, timeout: Duration) {
        let cancellation_token = self.cancellation_token.clone();

        // sockgate patch: `with_cancellation_token_owned` (a plain combinator) rather than
        // `run_until_cancelled_owned`, an `async fn` that kept three copies of the job's state
        // in this socket-long task (≈ 1.1 KiB instead of ≈ 0.4).
        tokio::spawn(
            async move {
                if let Err(_e) = self.heartbeat_job(interval, timeout).await {
                    // sockgate patch: a peer that does not answer pings will not read what
                    // is queued either: nothing to flush.
                    self.abort(DisconnectReason::HeartbeatTimeout);
                    #[cfg(feature = "tracing")]
                    tracing::debug!(id = ?self.id, "heartbeat error: {_e}");
                }
            }
            .with_cancellation_token_owned(cancellation_token)
            .inspect(|_v| {
                #[cfg(feature = "tracing")]
                tracing::debug!(aborted = _v.is_none(), "heartbeat job completed");
            }),
        );
    }

    /// Heartbeat is sent every `interval` milliseconds by the client and the server `is` expected to respond within `timeout` milliseconds.
    ///
    /// If the client or server does not respond within the timeout, the connection is closed.
    #[cfg(feature = "v3")]
    async fn heartbeat_job(&self, interval: Duration, timeout: Duration) -> Result<(), Error> {
        match self.protocol {
            ProtocolVersion::V3 => self.heartbeat_job_v3(interval, timeout).await,
            ProtocolVersion::V4 => self.heartbeat_job_v4(interval, timeout).await,
        }
    }

    /// Heartbeat is sent every `interval` milliseconds and the client is expected to respond within `timeout` milliseconds.
    ///
    /// If the client does not respond within the timeout, the connection is closed.
    #[cfg(not(feature = "v3"))]
    async fn heartbeat_job(&self, interval: Duration, timeout: Duration) -> Result<(), Error> {
        self.heartbeat_job_v4(interval, timeout).await
    }

    /// Heartbeat is sent every `interval` milliseconds and the client is expected to respond within `timeout` milliseconds.
    ///
    /// If the client does not respond within the timeout, the connection is closed.
    async fn heartbeat_job_v4(&self, interval: Duration, timeout: Duration) -> Result<(), Error> {
        #[cfg(feature = "tracing")]
        tracing::debug!(sid = ?self.id, "heartbeat sender routine started");

        // sockgate patch: one timer, reset in place, instead of an `Interval` and a `Timeout`
        // per ping. This task lives as long as the socket; its state was ≈ 1.1 KiB.
        // Pings go out every `interval` from the first one, as `Interval` ticks did; the first
        // one `interval` after the open (the `Interval`'s first tick was immediate), as the
        // reference JavaScript server does — a burst of new sessions is not pinged at once.
        let timer = tokio::time::sleep(interval);
        tokio::pin!(timer);
        (&mut timer).await;
        // Some clients send the pong packet in first. If that happens, we should consume it.
        self.heartbeat.notified().now_or_never();
        loop {
            let ping_at = timer.deadline();
            // If we are currently upgrading we should pause the heartbeat process
            if !self.is_upgrading() {
                #[cfg(feature = "tracing")]
                tracing::trace!(sid = ?self.id, "emitting ping");

                self.internal_tx
                    .try_send(Box::new(smallvec![Packet::Ping]))
                    .map_err(|_| Error::HeartbeatTimeout)?;

                #[cfg(feature = "tracing")]
                tracing::trace!(sid = ?self.id, "waiting for pong");

                timer.as_mut().reset(tokio::time::Instant::now() + timeout);
                tokio::select! {
                    biased;
                    () = self.heartbeat.notified() => {},
                    () = &mut timer => return Err(Error::HeartbeatTimeout),
                }

                #[cfg(feature = "tracing")]
                tracing::trace!(sid = ?self.id, "pong received");
            }
            timer.as_mut().reset(ping_at + interval);
            (&mut timer).await;
        }
    }

    #[cfg(feature = "v3")]
    async fn heartbeat_job_v3(&self, interval: Duration, timeout: Duration) -> Result<(), Error> {
        #[cfg(feature = "tracing")]
        tracing::debug!(sid = ?self.id, "heartbeat receiver routine started");

        loop {
            tokio::time::timeout(interval + timeout, self.heartbeat.notified())
                .await
                .map_err(|_| Error::HeartbeatTimeout)?;

            #[cfg(feature = "tracing")]
            tracing::trace!(sid = ?self.id, "ping received, sending pong");
            self.internal_tx
                .try_send(Box::new(smallvec![Packet::Pong]))
                .map_err(|_| Error::HeartbeatTimeout)?;
        }
    }

    /// Tell the heartbeat job that the client answered.
    pub(crate) fn signal_heartbeat(&self) {
        self.heartbeat.notify_one();
    }

    /// Returns true if the [`Socket`] has a websocket [`TransportType`]
    pub(crate) fn is_ws(&self) -> bool {
        self.transport.load(Ordering::Relaxed) == TransportType::Websocket as u8
    }
    /// returns true if the [`Socket`] has an HTTP [`TransportType`]
    pub(crate) fn is_http(&self) -> bool {
        self.transport.load(Ordering::Relaxed) == TransportType::Polling as u8
    }

    /// Sets the [`TransportType`] to WebSocket
    /// Used when the client upgrade the connection from HTTP to WebSocket
    pub(crate) fn upgrade_to_websocket(&self) {
        self.upgrading.store(false, Ordering::Relaxed);
        self.transport
            .store(TransportType::Websocket as u8, Ordering::Relaxed);
    }

    /// Returns the current [`TransportType`] of the [`Socket`]
    pub fn transport_type(&self) -> TransportType {
        TransportType::from(self.transport.load(Ordering::Relaxed))
    }

    /// Reserve `n` permits to emit multiple messages and ensure that there is enough
    /// space in the internal chan.
    ///
    /// If the internal chan is full, the function will return a [`TrySendError::Full`] error.
    /// If the socket is closed, the function will return a [`TrySendError::Closed`] error.
    #[inline]
    pub fn reserve(&self) -> Result<Permit<'_>, TrySendError<()>> {
        let permit = self.internal_tx.try_reserve().inspect_err(|e| {
            if matches!(e, TrySendError::Full(())) {
                self.closed_when_full(); // sockgate patch: see `CloseWhenFull`
            }
        })?;
        // sockgate patch: see `Permit`.
        let direct = self.raw_out.get().map(|out| DirectTo {
            out,
            queue: &self.internal_tx,
            closing: &self.cancellation_token,
        });
        Ok(Permit {
            inner: permit,
            direct,
        })
    }

    /// Emits a message to the client.
    ///
    /// If the transport is in websocket mode, the message is directly sent as a text frame.
    ///
    /// If the transport is in polling mode, the message is buffered and sent as a text frame to the next polling request.
    ///
    /// ⚠️ If the buffer is full or the socket is disconnected, an error will be returned with the original data
    pub fn emit(&self, msg: impl Into<Str>) -> Result<(), TrySendError<Str>> {
        self.send(Packet::Message(msg.into())).map_err(|e| match e {
            TrySendError::Full(p) => TrySendError::Full(p.into_message()),
            TrySendError::Closed(p) => TrySendError::Closed(p.into_message()),
        })
    }

    /// Immediately closes the socket and the underlying connection.
    /// The socket will be removed from the `Engine` and the [`Handler`](crate::handler::EngineIoHandler) will be notified.
    #[cfg_attr(feature = "tracing", tracing::instrument(skip(self)))]
    pub fn close(&self, reason: DisconnectReason) {
        if self.is_http() {
            self.close_after_polls(reason);
            return;
        }
        // Try to send a close packet is the connection is still operational.
        self.send(Packet::Close).ok();

        (self.close_fn)(self.id, reason);
    }

    /// Closes a long-polling session once the client has polled what is queued, then the
    /// close packet on its own; after [`CLOSE_GRACE`] at most, at once when it is aborted
    /// meanwhile.
    ///
    /// sockgate patch: closing removed the session at once, so what was queued for a client
    /// between two polls (messages, then the close packet) was never sent: its next poll got
    /// "Session ID unknown". On a graceful shutdown, polling clients lost the last messages
    /// published before it (`tests/js/broadcast-edges.test.mjs`, the drain test). The close
    /// packet goes in a poll answer of its own because socket.io-client drops the events
    /// that arrive in the same answer as the close (it hands them on a tick later, when the
    /// socket is already disconnected). The reference server (`engine.io`, `Socket.close`)
    /// likewise waits for its write buffer to drain before it sends the close packet. A
    /// WebSocket's writer flushes the queue itself (`transport/ws.rs`, `in_time`).
    fn close_after_polls(&self, reason: DisconnectReason) {
        /// How often the queue is checked; only while a polling session closes.
        const CHECK_EVERY: Duration = Duration::from_millis(10);
        let queue = self.internal_tx.clone();
        let cancelled = self.cancellation_token.clone();
        let close_fn = self.close_fn.clone();
        let sid = self.id;
        tokio::spawn(async move {
            let polled = || async {
                while queue.capacity() < queue.max_capacity() && !cancelled.is_cancelled() {
                    tokio::time::sleep(CHECK_EVERY).await;
                }
            };
            let flush = async {
                polled().await;
                if queue.try_send(Box::new(smallvec![Packet::Close])).is_ok() {
                    polled().await;
                }
            };
            let _ = tokio::time::timeout(CLOSE_GRACE, flush).await;
            drop(queue);
            close_fn(sid, reason);
        });
    }

    /// Closes the session at once, dropping what is queued and whatever the writer is in the
    /// middle of writing: for a peer that stopped reading, whose queue is full and whose
    /// writer is blocked on a full TCP send buffer. The socket is removed from the `Engine`,
    /// the TCP connection is dropped and the [`Handler`](crate::handler::EngineIoHandler) is
    /// notified, as with [`Socket::close`].
    ///
    /// Returns true if this call closed the session, false if it was closing already.
    ///
    /// sockgate patch: [`Socket::close`] sends a close packet (lost when the queue is full) and
    /// then waited for the writer, which never finished for a peer that does not read.
    pub fn abort(&self, reason: DisconnectReason) -> bool {
        if self.cancellation_token.is_cancelled() || self.aborted.swap(true, Ordering::AcqRel) {
            return false;
        }
        (self.close_fn)(self.id, reason);
        true
    }

    /// Whether this session's client may send binary (see [`AcceptBinary`]).
    ///
    /// sockgate patch.
    pub(crate) fn accepts_binary(&self) -> bool {
        self.req_parts.extensions.get::<AcceptBinary>().is_some()
    }

    /// Whether the session is being closed without flushing (see [`Socket::abort`]).
    pub(crate) fn is_aborted(&self) -> bool {
        self.aborted.load(Ordering::Acquire)
    }

    /// Whether the queue of packets waiting to be written has no free slot: a message emitted
    /// now would be refused with [`TrySendError::Full`].
    ///
    /// sockgate patch: a broadcast reports how many sockets were full, not which.
    pub fn is_full(&self) -> bool {
        self.internal_tx.capacity() == 0
    }

    /// Returns true if the socket is closed
    /// It means that no more packets can be sent to the client
    pub fn is_closed(&self) -> bool {
        self.internal_tx.is_closed()
    }

    /// Wait for the socket to be fully closed
    pub async fn closed(&self) {
        self.internal_tx.closed().await
    }

    /// Emits a binary message to the client.
    ///
    /// If the transport is in websocket mode, the message is directly sent as a binary frame.
    ///
    /// If the transport is in polling mode, the message is buffered and sent as a text frame **encoded in base64** to the next polling request.
    ///
    /// ⚠️ If the buffer is full or the socket is disconnected, an error will be returned with the original data
    pub fn emit_binary<B: Into<Bytes>>(&self, data: B) -> Result<(), TrySendError<Bytes>> {
        if self.protocol == ProtocolVersion::V3 {
            self.send(Packet::BinaryV3(data.into()))
        } else {
            self.send(Packet::Binary(data.into()))
        }
        .map_err(|e| match e {
            TrySendError::Full(p) => TrySendError::Full(p.into_binary()),
            TrySendError::Closed(p) => TrySendError::Closed(p.into_binary()),
        })
    }

    /// Try to send a volatile message bypassing the internal buffer channel.
    /// Volatile messages may be dropped if the transport is not ready to
    /// receive them.
    ///
    /// Because volatile messages bypass the main mpsc buffer queue, they may
    /// arrive out of order relative to regular messages.
    ///
    /// Returns `true` if the message was queued for sending, `false` if it
    /// was dropped (channel full or transport shutting down).
    #[inline]
    pub fn emit_volatile(&self, msg: impl Into<Str>) -> bool {
        self.send_volatile(smallvec![Packet::Message(msg.into())])
    }

    /// Try to send a volatile binary message bypassing the internal buffer channel.
    /// Volatile messages may be dropped if the transport is not ready to
    /// receive them.
    ///
    /// Returns `true` if the message was queued for sending, `false` if it
    /// was dropped.
    #[inline]
    pub fn emit_binary_volatile<B: Into<Bytes>>(&self, data: B) -> bool {
        if self.protocol == ProtocolVersion::V3 {
            self.send_volatile(smallvec![Packet::BinaryV3(data.into())])
        } else {
            self.send_volatile(smallvec![Packet::Binary(data.into())])
        }
    }

    /// Try to send a volatile message with multiple adjacent binary payloads.
    /// The message and all binary payloads are sent atomically as a single
    /// volatile write.
    ///
    /// Returns `true` if the message was queued for sending, `false` if it
    /// was dropped.
    #[inline]
    pub fn emit_many_volatile(&self, msg: Str, data: VecDeque<Bytes>) -> bool {
        let mut packets = SmallVec::with_capacity(1 + data.len());
        packets.push(Packet::Message(msg));
        for bin in data {
            packets.push(Packet::Binary(bin));
        }
        self.send_volatile(packets)
    }

    pub(crate) fn send_volatile(&self, packets: PacketBuf) -> bool {
        self.volatile_tx.send(Some(Box::new(packets))).is_ok()
    }
}

impl<D: Default + Send + Sync + 'static> std::fmt::Debug for Socket<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Socket")
            .field("sid", &self.id)
            .field("protocol", &self.protocol)
            .field("conn", &self.transport)
            .field("internal_rx", &self.internal_rx)
            .field("internal_tx", &self.internal_tx)
            .field("heartbeat", &self.heartbeat)
            .field("cancellation_token", &self.cancellation_token)
            .field("req_data", &self.req_parts)
            .finish()
    }
}

#[doc(hidden)]
#[cfg(feature = "__test_harness")]
impl<D> Drop for Socket<D>
where
    D: Default + Send + Sync + 'static,
{
    fn drop(&mut self) {
        #[cfg(feature = "tracing")]
        tracing::debug!("[sid={}] dropping socket", self.id);
    }
}

#[doc(hidden)]
#[cfg(feature = "__test_harness")]
impl<D> Socket<D>
where
    D: Default + Send + Sync + 'static,
{
    /// Create a dummy socket for testing purpose
    pub fn new_dummy(
        sid: Sid,
        close_fn: Box<dyn Fn(Sid, DisconnectReason) + Send + Sync>,
    ) -> Arc<Socket<D>> {
        let (s, mut rx) = Socket::new_dummy_piped(sid, close_fn, 1024);
        tokio::spawn(async move {
            while let Some(_el) = rx.recv().await {
                #[cfg(feature = "tracing")]
                tracing::debug!(?sid, ?_el, "emitting eio msg");
            }
        });
        s
    }

    /// Create a dummy socket for testing purpose with a
    /// receiver to get the packets sent to the client
    pub fn new_dummy_piped(
        sid: Sid,
        close_fn: Box<dyn Fn(Sid, DisconnectReason) + Send + Sync>,
        buffer_size: usize,
    ) -> (Arc<Socket<D>>, tokio::sync::mpsc::Receiver<Packet>) {
        let (internal_tx, internal_rx) = mpsc::channel(buffer_size);
        let (volatile_tx, volatile_rx) = watch::channel(None);

        let sock = Self {
            id: sid,
            protocol: ProtocolVersion::V4,
            transport: AtomicU8::new(TransportType::Websocket as u8),
            upgrading: AtomicBool::new(false),
            aborted: AtomicBool::new(false),

            internal_rx: Mutex::new(InternalRx::new(internal_rx, volatile_rx)),
            internal_tx,

            volatile_tx,

            heartbeat: Notify::new(),
            cancellation_token: CancellationToken::new(),
            close_fn: Arc::from(close_fn),

            data: D::default(),
            req_parts: http::Request::<()>::default().into_parts().0,

            supports_binary: true,
            raw_out: OnceLock::new(),
        };
        let sock = Arc::new(sock);

        let (tx, rx) = mpsc::channel(buffer_size);
        let sock_clone = sock.clone();
        tokio::spawn(async move {
            let mut internal_rx = sock_clone.internal_rx.try_lock().unwrap();
            while let Some(packets) = internal_rx.buffered_rx.recv().await {
                for packet in *packets {
                    tx.send(packet).await.unwrap();
                }
            }
        });

        (sock, rx)
    }
}
