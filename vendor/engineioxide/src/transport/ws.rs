//! The ws transport module is responsible for handling websocket connections
//! The only public function is [`new_req`] which is used to upgrade a http request to a websocket connection
//!
//! Other functions are used internally to handle the websocket connection through tasks and channels
//! and to handle upgrade from polling to ws

use std::{
    cell::RefCell,
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
};

use bytes::{BufMut, BytesMut};
use futures_util::{
    SinkExt, Stream, StreamExt, TryStreamExt,
    stream::{SplitSink, SplitStream},
};
use http::{HeaderValue, Request, Response, StatusCode, request::Parts};
use hyper_util::rt::TokioIo;
use smallvec::smallvec;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::watch,
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        self, Message,
        handshake::derive_accept_key,
        protocol::{
            Role, WebSocketConfig,
            frame::{
                Frame,
                coding::{Data, OpCode},
            },
        },
    },
};
use tokio_util::{future::FutureExt as _, sync::WaitForCancellationFuture};

use engineioxide_core::{Packet, ProtocolVersion, Sid, Str, TransportType};

use crate::{
    DisconnectReason, Socket,
    body::ResponseBody,
    config::EngineIoConfig,
    engine::EngineIo,
    errors::Error,
    handler::EngineIoHandler,
    socket::{CLOSE_GRACE, InternalRx, QueuedPackets},
    transport::{make_open_packet, ws_raw},
};

/// Create a response for websocket upgrade
fn ws_response<B>(ws_key: &HeaderValue) -> Response<ResponseBody<B>> {
    let derived = derive_accept_key(ws_key.as_bytes());
    let sec = derived.parse::<HeaderValue>().unwrap();
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(http::header::UPGRADE, HeaderValue::from_static("websocket"))
        .header(
            http::header::CONNECTION,
            HeaderValue::from_static("Upgrade"),
        )
        .header(http::header::SEC_WEBSOCKET_ACCEPT, sec)
        .body(ResponseBody::empty_response())
        .unwrap() // we are only using constants
}

/// Upgrade a websocket request to create a websocket connection.
///
/// If a sid is provided in the query it means that is is upgraded from an existing HTTP polling request.
/// In this case the http polling request is closed and the SID is kept for the websocket
pub fn new_req<R: Send + 'static, B, H: EngineIoHandler>(
    engine: Arc<EngineIo<H>>,
    protocol: ProtocolVersion,
    sid: Option<Sid>,
    req: Request<R>,
) -> Result<Response<ResponseBody<B>>, Error> {
    let (mut parts, body) = req.into_parts();
    let req = Request::from_parts(parts.clone(), body);

    let ws_key = parts
        .headers
        .remove(http::header::SEC_WEBSOCKET_KEY)
        .ok_or(Error::InvalidWebSocketKey)?;
    // sockgate patch: the session keeps `parts` for its life, and the key is read only here:
    // without it, a head whose other headers the server keeps elsewhere keeps no header map
    // (a map of one header: ≈ 0.2 KiB per socket, the entry's 104 bytes, its index, the value).
    if parts.headers.is_empty() {
        parts.headers = http::HeaderMap::new();
    }

    // sockgate patch: the upgrade and handshake run in their own boxed future, created outside
    // the task, so the task (which lives as long as the socket) holds neither the request nor
    // room for the handshake states (≈ 3.5 KiB per socket before) — only the reader loop.
    let opening = Box::pin({
        let engine = engine.clone();
        async move {
            let conn = match hyper::upgrade::on(req).await {
                // sockgate patch: the TCP stream back, when the server can give it.
                Ok(conn) => match engine.config.ws_raw_tcp {
                    Some(raw_tcp) => raw_tcp(conn),
                    None => Err(conn),
                },
                Err(_e) => {
                    #[cfg(feature = "tracing")]
                    tracing::debug!("ws upgrade error: {}", _e);
                    return Ok(None);
                }
            };
            match conn {
                Ok(tcp) => {
                    let direct = engine.config.ws_direct_write;
                    let (socket, mut ws, backlog) =
                        open(engine, ws_raw::RawIo::new(tcp), protocol, sid, parts).await?;
                    ws_raw::start::<H>(&socket, &mut ws, &backlog, direct);
                    let rx = Reader {
                        rx: ws,
                        backlog,
                        control: true,
                    };
                    Ok(Some(Opened::Raw(socket, rx)))
                }
                Err(conn) => open(engine, TokioIo::new(conn), protocol, sid, parts)
                    .await
                    .map(|(socket, ws, backlog)| {
                        let rx = start_split::<H, _>(&socket, ws, backlog);
                        Some(Opened::Split(socket, rx))
                    }),
            }
        }
    });
    tokio::spawn(reader_task(engine, sid, opening));

    Ok(ws_response(&ws_key))
}

/// The task that reads for the socket's whole life: the opening (boxed), then the reader loop.
///
/// sockgate patch: the opened session (its reading half's WebSocket stream, ≈ 370 B, inline)
/// is kept in one place, here, and the reader loop borrows it. Moved from the `match` on the
/// opening into `read` and from there into `forward_to_handler`, it had a slot in each of the
/// three futures (rustc keeps a moved-from value's slot for as long as the await that follows):
/// the task's future was 1,736 B, most of it three copies of the stream.
async fn reader_task<H: EngineIoHandler, O>(
    engine: Arc<EngineIo<H>>,
    sid: Option<Sid>,
    opening: Pin<Box<O>>,
) where
    O: std::future::Future<
            Output = Result<Option<Opened<H::Data, TokioIo<hyper::upgrade::Upgraded>>>, Error>,
        >,
{
    let mut opened = opening.await;
    let (socket, close) = match &mut opened {
        Ok(Some(Opened::Raw(socket, rx))) => (socket.clone(), read(&engine, socket, rx).await),
        Ok(Some(Opened::Split(socket, rx))) => (socket.clone(), read(&engine, socket, rx).await),
        Ok(None) | Err(Error::MultipleWebsocketRequests) => return,
        Err(_e) => {
            #[cfg(feature = "tracing")]
            tracing::debug!(?sid, "ws closed with error: {_e}");
            if let Some(sid) = sid {
                engine.close_session(sid, DisconnectReason::TransportError);
            }
            return;
        }
    };
    drop(opened);
    if let Some(reason) = close {
        engine.close_session(socket.id, reason);
    }
    #[cfg(feature = "tracing")]
    tracing::debug!(?sid, "ws closed");
}

/// Handle a websocket connection: open the session, then read packets until the connection
/// or the session is closed.
pub async fn on_init<H: EngineIoHandler, S>(
    engine: Arc<EngineIo<H>>,
    conn: S,
    protocol: ProtocolVersion,
    sid: Option<Sid>,
    req_data: Parts,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (socket, ws, backlog) =
        Box::pin(open(engine.clone(), conn, protocol, sid, req_data)).await?;
    let mut rx = start_split::<H, _>(&socket, ws, backlog);
    let close = read(&engine, &socket, &mut rx).await;
    drop(rx);
    if let Some(reason) = close {
        engine.close_session(socket.id, reason);
    }
    Ok(())
}

/// An opened session and its reading half: over the TCP stream, whose write half the
/// session's writer owns ([`ws_raw`]), or over the split tungstenite stream. sockgate patch.
enum Opened<D: Default + Send + Sync + 'static, S> {
    Raw(Arc<Socket<D>>, Reader<ws_raw::RawWs>),
    Split(Arc<Socket<D>>, Reader<SplitStream<WebSocketStream<Watched<S>>>>),
}

/// Splits an opened tungstenite stream and spawns the writer of its write half.
fn start_split<H: EngineIoHandler, S>(
    socket: &Arc<Socket<H::Data>>,
    ws: WebSocketStream<Watched<S>>,
    backlog: Arc<Backlog>,
) -> Reader<SplitStream<WebSocketStream<Watched<S>>>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = ws.split();
    // Pipe between websocket and internal socket channel.
    tokio::spawn(forward_to_socket::<H, _>(socket.clone(), tx));
    Reader {
        rx,
        backlog,
        control: false,
    }
}

/// Open the session on an upgraded connection: send the open packet to a new session, or run
/// the probe handshake of a polling session upgrading to websocket. The caller then starts
/// the writer and keeps the reading half.
///
/// sockgate patch: everything short-lived happens here, in a future the callers box, so the
/// task that then reads for the socket's whole life keeps only the socket and the reading half:
/// rustc reserves room in an `async fn`'s state for every value that is live at *some* await,
/// and the websocket stream and the writer future (moved into `tokio::spawn`) were ≈ 2 KiB.
#[cfg_attr(
    feature = "tracing",
    tracing::instrument(level = "trace", name = "init_websocket", skip(engine, conn, req_data))
)]
async fn open<H: EngineIoHandler, S>(
    engine: Arc<EngineIo<H>>,
    conn: S,
    protocol: ProtocolVersion,
    sid: Option<Sid>,
    req_data: Parts,
) -> Result<(Arc<Socket<H::Data>>, WebSocketStream<Watched<S>>, Arc<Backlog>), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let backlog = Arc::new(Backlog::default());
    let conn = Watched::new(conn, backlog.clone());
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(engine.config.ws_read_buffer_size)
        .max_message_size(Some(engine.config.ws_max_message_size))
        .max_frame_size(Some(engine.config.ws_max_frame_size));

    let ws_init = move || WebSocketStream::from_raw_socket(conn, Role::Server, Some(ws_config));
    let (socket, ws) = if let Some(sid) = sid {
        match engine.get_socket(sid) {
            None => return Err(Error::UnknownSessionID(sid)),
            Some(socket) if socket.is_ws() => return Err(Error::MultipleWebsocketRequests),
            Some(socket) => {
                let mut ws = ws_init().await;

                let upgrade_fut = upgrade_handshake::<H, _>(&socket, &mut ws);
                match tokio::time::timeout(engine.config.upgrade_timeout, upgrade_fut)
                    .with_cancellation_token(&socket.cancellation_token)
                    .await
                {
                    Some(Ok(res)) => res?,
                    Some(Err(_)) => {
                        #[cfg(feature = "tracing")]
                        tracing::debug!(?sid, "ws upgrade timed out, closing session");
                        engine.close_session(socket.id, DisconnectReason::TransportError);
                        return Err(Error::Upgrade);
                    }
                    None => {
                        #[cfg(feature = "tracing")]
                        tracing::debug!(?sid, "socket is being closed");
                        return Err(Error::Upgrade);
                    }
                }
                (socket, ws)
            }
        }
    } else {
        let socket = engine.create_session(protocol, TransportType::Websocket, req_data, false);

        #[cfg(feature = "tracing")]
        tracing::debug!("new websocket connection");

        let mut ws = ws_init().await;
        init_handshake(socket.id, &mut ws, &engine.config).await?;
        socket
            .clone()
            .spawn_heartbeat(engine.config.ping_interval, engine.config.ping_timeout);
        (socket, ws)
    };
    Ok((socket, ws, backlog))
}

/// Read packets from an opened websocket session until the connection or the session is closed.
///
/// sockgate patch: returns the reason to close the session with, which the caller does once
/// it has dropped the reading half (as before, when this function consumed it).
async fn read<H: EngineIoHandler, R>(
    engine: &Arc<EngineIo<H>>,
    socket: &Arc<Socket<H::Data>>,
    rx: &mut Reader<R>,
) -> Option<DisconnectReason>
where
    R: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    // pipe between internal socket channel and websocket
    match forward_to_handler(engine, rx, socket)
        .with_cancellation_token(&socket.cancellation_token)
        .await
    {
        Some(Err(ref e)) => {
            let reason =
                Option::<DisconnectReason>::from(e).unwrap_or(DisconnectReason::TransportError);

            #[cfg(feature = "tracing")]
            tracing::debug!("error when handling packet: {:?}", e);
            Some(reason)
        }
        Some(Ok(())) => {
            #[cfg(feature = "tracing")]
            tracing::debug!(sid = %socket.id, "ws transport was closed");
            Some(DisconnectReason::TransportClose)
        }
        None => {
            #[cfg(feature = "tracing")]
            tracing::debug!(sid = %socket.id, "socket is closing");
            None
        }
    }
}

/// Forwards all packets received from a websocket to a EngineIo [`Socket`]
async fn forward_to_handler<H: EngineIoHandler, R>(
    engine: &Arc<EngineIo<H>>,
    Reader {
        rx,
        backlog,
        control,
    }: &mut Reader<R>,
    socket: &Arc<Socket<H::Data>>,
) -> Result<(), Error>
where
    R: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    // Bytes of pongs queued since the connection last took everything it was given.
    let mut unread_pongs = 0;
    while let Some(msg) = rx.try_next().await? {
        match msg {
            Message::Text(msg) => match Packet::parse(socket.protocol, ws_bytes_to_str(msg))? {
                Packet::Close => {
                    #[cfg(feature = "tracing")]
                    tracing::debug!("[sid={}] closing session", socket.id);
                    engine.close_session(socket.id, DisconnectReason::TransportClose);
                    break;
                }
                Packet::Pong | Packet::Ping => {
                    socket.signal_heartbeat();
                    Ok::<(), Error>(())
                }
                Packet::Message(msg) => {
                    engine.handler.on_message(msg, socket.clone());
                    Ok(())
                }
                p => return Err(Error::BadPacket(p)),
            },
            // sockgate patch: unless the session accepts binary (the msgpack parser: one
            // message per packet), a client never sends binary to sockgate, and Socket.IO would
            // buffer every attachment of an event until the last arrives: refuse the first
            // one and close the session (tungstenite has read at most ws_max_message_size).
            Message::Binary(data) if socket.accepts_binary() => {
                engine.handler.on_binary(data, socket.clone());
                Ok(())
            }
            Message::Binary(data) => return Err(Error::BadPacket(Packet::Binary(data))),
            // sockgate patch: tungstenite queues a pong for every ping it reads, without bound,
            // whether or not the peer reads them: a peer that floods pings and never reads
            // would grow the write buffer for ever (≈ 20 MiB per 200k pings). Close it as a
            // slow consumer once the pongs it has not taken pass the bound.
            Message::Ping(ping) => {
                if backlog.is_empty() {
                    unread_pongs = 0;
                }
                unread_pongs += PONG_HEADER_BYTES + ping.len();
                // sockgate patch: the writer owns the write half (`ws_raw`): the pong goes
                // through it, and what it has not taken yet counts too.
                let queued = if *control {
                    backlog.control.pong(socket, &ping)
                } else {
                    0
                };
                if unread_pongs.max(queued) > MAX_UNREAD_PONG_BYTES {
                    #[cfg(feature = "tracing")]
                    tracing::debug!(sid = %socket.id, "ws peer does not read its pongs");
                    socket.close_slow_consumer();
                    break;
                }
                Ok(())
            }
            Message::Close(close) => {
                #[cfg(feature = "tracing")]
                tracing::debug!("websocket closed, closing session");
                if *control {
                    backlog.control.close_reply(close.as_ref());
                }
                engine.close_session(socket.id, DisconnectReason::TransportClose);
                break;
            }
            _ => {
                #[cfg(feature = "tracing")]
                tracing::debug!(sid = ?socket.id, "unexpected ws message");
                Ok(())
            }
        }?
    }
    Ok(())
}

/// Forwards all packets waiting to be sent to the websocket
///
/// The websocket stream is flushed only when the internal channel is drained
///
/// sockgate patch: one place awaits a write ([`write_packets`]) instead of six expansions of a
/// macro, each keeping its own packet iterator alive in this socket-long task (≈ 1.5 KiB of
/// state before, most of it never used at the same time).
///
/// sockgate patch: the cancellation and volatile-message futures are made once, outside the
/// loop, and stay registered while the writer sleeps. Made anew in every `select!`, each
/// wake-up took both out of their waiter lists and put them back (a lock each way).
async fn forward_to_socket<H: EngineIoHandler, S>(
    socket: Arc<Socket<H::Data>>,
    mut tx: SplitSink<WebSocketStream<S>, Message>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // A polling request that was in progress during the upgrade may still hold the lock.
    let Some(mut internal_rx) = socket
        .internal_rx
        .lock()
        .with_cancellation_token(&socket.cancellation_token)
        .await
    else {
        #[cfg(feature = "tracing")]
        tracing::debug!(sid = %socket.id, "session closed before starting the ws writer");
        return;
    };
    let InternalRx {
        buffered_rx,
        volatile_rx,
        ..
    } = &mut *internal_rx;
    let cancelled = socket.cancellation_token.cancelled();
    tokio::pin!(cancelled);
    let volatile = volatile_packets(volatile_rx);
    tokio::pin!(volatile);
    // When the session closed, the writer stops writing at this instant (see `in_time`).
    let mut give_up_at = None;

    // Forward buffered packets until the channel is closed or the session is cancelled.
    loop {
        let (packets, buffered) = tokio::select! {
            biased;
            items = buffered_rx.recv() => match items {
                Some(packets) => (packets, true),
                None => break,
            },
            () = &mut cancelled => break,
            Some(packets) = volatile.next() => {
                #[cfg(feature = "tracing")]
                tracing::debug!(sid = ?socket.id, "ws volatile flush: {} packets", packets.len());
                (packets, false)
            },
        };
        // After a buffered batch, write whatever else is already queued before flushing.
        let mut next = Some(packets);
        while let Some(packets) = next {
            if !in_time(
                &socket,
                cancelled.as_mut(),
                &mut give_up_at,
                write_packets(&socket, &mut tx, packets),
            )
            .await
            {
                return;
            }
            next = if buffered {
                buffered_rx.try_recv().ok()
            } else {
                None
            };
        }

        #[cfg(feature = "tracing")]
        tracing::trace!(sid = %socket.id, "ws flush");
        if !in_time(&socket, cancelled.as_mut(), &mut give_up_at, tx.flush()).await {
            return;
        }
    }

    #[cfg(feature = "tracing")]
    tracing::trace!(sid = %socket.id, "ws closing flush");

    in_time(&socket, cancelled, &mut give_up_at, async {
        tx.flush().await.ok();
        tx.close().await.ok();
    })
    .await;
}

/// The volatile messages of a session, as a stream: the `changed` future it waits on is kept
/// from one wake-up of the writer to the next, and made again only after a message. Ends
/// when the sender is dropped (with the socket). sockgate patch.
pub(super) fn volatile_packets(
    rx: &mut watch::Receiver<Option<QueuedPackets>>,
) -> impl Stream<Item = QueuedPackets> + '_ {
    futures_util::stream::unfold(rx, |rx| async move {
        loop {
            rx.changed().await.ok()?;
            let packets = rx.borrow_and_update().clone();
            if let Some(packets) = packets {
                return Some((packets, rx));
            }
        }
    })
    .fuse()
}

/// Runs one write unless the session closes and its grace runs out first ([`CLOSE_GRACE`]
/// from the close; none when aborted). Returns false when the write was given up: the writer
/// then stops, dropping its half of the connection, so the queue's lock is released, the
/// handler is told, and the TCP stream is dropped even if the peer never reads again.
/// `cancelled` is the writer's own (see [`forward_to_socket`]).
///
/// sockgate patch: writes used to wait for a peer that stopped reading forever.
pub(super) async fn in_time<D, F>(
    socket: &Socket<D>,
    cancelled: Pin<&mut WaitForCancellationFuture<'_>>,
    give_up_at: &mut Option<tokio::time::Instant>,
    write: F,
) -> bool
where
    D: Default + Send + Sync + 'static,
    F: std::future::Future,
{
    tokio::pin!(write);
    let deadline = match *give_up_at {
        Some(at) => at,
        None => {
            tokio::select! {
                biased;
                _ = &mut write => return true,
                () = cancelled => {}
            }
            let grace = if socket.is_aborted() {
                std::time::Duration::ZERO
            } else {
                CLOSE_GRACE
            };
            *give_up_at.insert(tokio::time::Instant::now() + grace)
        }
    };
    let done = tokio::time::timeout_at(deadline, write).await.is_ok();
    #[cfg(feature = "tracing")]
    if !done {
        tracing::debug!(sid = %socket.id, "ws writer gave up: the peer does not read");
    }
    done
}

/// Feed packets to the websocket sink (no flush). A write error is logged and the packet
/// dropped: the reader sees the broken connection and closes the session.
async fn write_packets<D, S>(
    socket: &Socket<D>,
    tx: &mut SplitSink<WebSocketStream<S>, Message>,
    mut packets: QueuedPackets,
) where
    D: Default + Send + Sync + 'static,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    for packet in packets.drain(..) {
        let message = match packet {
            Packet::Binary(bin) | Packet::BinaryV3(bin) => {
                if socket.protocol == ProtocolVersion::V3 {
                    // v3 protocol requires packet type as the first byte.
                    // This requires a new buffer. This is OK as it is only for the V3 protocol.
                    let mut buff = Vec::with_capacity(bin.len() + 1);
                    buff.push(0x04);
                    buff.extend(bin);
                    Message::Binary(buff.into())
                } else {
                    Message::Binary(bin)
                }
            }
            // A Noop Packet maybe sent by the server to upgrade from a polling connection
            // In the case that the packet was not poll in time it will remain in the buffer and therefore
            // it should be discarded here
            Packet::Noop => continue,
            Packet::Message(msg) => message_frame(&msg),
            packet => {
                let packet: String = packet.try_into().unwrap();
                Message::Text(packet.into())
            }
        };
        if let Err(_e) = tx.feed(message).await {
            #[cfg(feature = "tracing")]
            tracing::debug!("[sid={}] error sending packet: {}", socket.id, _e);
        }
    }
}

/// Largest message payload built in the reused buffer: a larger one gets its own allocation,
/// so a worker thread keeps at most a few times this much. sockgate patch.
const MAX_REUSED_PAYLOAD: usize = 16 * 1024;

thread_local! {
    /// Where this thread's writers build message payloads ([`message_frame`]). sockgate patch.
    static PAYLOAD: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// The text frame of an Engine.IO message packet: "4" and the message.
///
/// sockgate patch: the payload is built in this thread's reused buffer, not a new `String`
/// per socket. tungstenite copies a frame into its write buffer when it is fed and drops it,
/// so the next call finds the buffer's allocation unshared again and writes over it (a payload
/// still held elsewhere only makes the buffer take a new allocation). A `Frame`, not a
/// `Message::Text`: the message is already text, and `Bytes` becomes `Utf8Bytes` only by
/// checking it again.
fn message_frame(msg: &str) -> Message {
    let len = 1 + msg.len();
    let reused = (len <= MAX_REUSED_PAYLOAD).then(|| {
        PAYLOAD.try_with(|buf| {
            let mut buf = buf.borrow_mut();
            buf.reserve(len);
            buf.put_u8(b'4');
            buf.extend_from_slice(msg.as_bytes());
            buf.split().freeze()
        })
    });
    let payload = match reused {
        Some(Ok(payload)) => payload,
        _ => {
            let mut payload = Vec::with_capacity(len);
            payload.push(b'4');
            payload.extend_from_slice(msg.as_bytes());
            payload.into()
        }
    };
    Message::Frame(Frame::message(payload, OpCode::Data(Data::Text), true))
}

/// Send a Engine.IO [`OpenPacket`] to initiate a websocket connection
async fn init_handshake<S>(
    sid: Sid,
    ws: &mut WebSocketStream<S>,
    config: &EngineIoConfig,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let packet = Packet::Open(make_open_packet(TransportType::Websocket, sid, config));
    let packet: String = packet.into();
    ws.send(Message::Text(packet.into())).await?;
    Ok(())
}

/// Upgrade a session from a polling request to a websocket request.
///
/// Before upgrading the session the server should send a NOOP packet to any pending polling request.
///
/// ## Handshake :
/// ```text
/// CLIENT                                                 SERVER
///│                                                      │
///│   GET /engine.io/?EIO=4&transport=websocket&sid=...  │
///│ ───────────────────────────────────────────────────► │
///│  ◄─────────────────────────────────────────────────┘ │
///│            HTTP 101 (WebSocket handshake)            │
///│                                                      │
///│            -----  WebSocket frames -----             │
///│  ─────────────────────────────────────────────────►  │
///│                         2probe                       │ (ping packet)
///│  ◄─────────────────────────────────────────────────  │
///│                         3probe                       │ (pong packet)
///│  ─────────────────────────────────────────────────►  │
///│                         5                            │ (upgrade packet)
///│                                                      │
///│            -----  WebSocket frames -----             │
/// ```
#[cfg_attr(
    feature = "tracing",
    tracing::instrument(level = "trace", skip(socket, ws))
)]
async fn upgrade_handshake<H: EngineIoHandler, S>(
    socket: &Arc<Socket<H::Data>>,
    ws: &mut WebSocketStream<S>,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    #[cfg(feature = "tracing")]
    tracing::debug!("starting websocket connection upgrade");

    // The socket is upgrading, from now on all polling
    // request will return a `Packet::Noop`
    socket.start_upgrade();

    // We send a last Noop request to close a potential waiting polling request.
    socket
        .internal_tx
        .send(Box::new(smallvec![Packet::Noop]))
        .await
        .map_err(|_| Error::Upgrade)?;

    // wait for any current polling connection to finish by waiting for the socket to be unlocked
    // All other polling connection will be immediately closed with a NOOP packet.
    let _lock = socket.internal_rx.lock().await;

    // Fetch the next packet from the ws stream, it should be a PingUpgrade packet
    let msg = match ws.next().await {
        Some(Ok(Message::Text(d))) => d,
        _ => Err(Error::Upgrade)?,
    };
    match Packet::parse(socket.protocol, ws_bytes_to_str(msg))? {
        Packet::PingUpgrade => {
            #[cfg(feature = "tracing")]
            tracing::debug!("received first ping upgrade");
            // Respond with a PongUpgrade packet
            ws.send(Message::Text(String::from(Packet::PongUpgrade).into()))
                .await?;
        }
        p => Err(Error::BadPacket(p))?,
    };

    // Fetch the next packet from the ws stream, it should be an Upgrade packet
    let msg = match ws.next().await {
        Some(Ok(Message::Text(d))) => d,
        Some(Ok(Message::Close(_))) => {
            #[cfg(feature = "tracing")]
            tracing::debug!("ws stream closed before upgrade");
            Err(Error::Upgrade)?
        }
        _ => {
            #[cfg(feature = "tracing")]
            tracing::debug!("unexpected ws message before upgrade");
            Err(Error::Upgrade)?
        }
    };
    match Packet::parse(socket.protocol, ws_bytes_to_str(msg))? {
        Packet::Upgrade => {
            #[cfg(feature = "tracing")]
            tracing::debug!("ws upgraded successfully")
        }
        p => Err(Error::BadPacket(p))?,
    };

    socket.upgrade_to_websocket();
    Ok(())
}

/// Most bytes of pongs a peer may leave unread (queued while the connection took nothing):
/// past it, the session is closed as a slow consumer. A client that reads gets each pong at
/// once; 16 KiB is over a hundred unanswered pings of the largest size, and what one socket
/// can make sockgate hold.
///
/// sockgate patch.
const MAX_UNREAD_PONG_BYTES: usize = 16 * 1024;

/// A server's pong frame header (control frames carry at most 125 bytes: no extended length,
/// no mask).
const PONG_HEADER_BYTES: usize = 2;

/// The reading half of an opened websocket session, and what its connection has not taken.
struct Reader<R> {
    rx: R,
    backlog: Arc<Backlog>,
    /// The session's writer owns the write half ([`ws_raw`]): pongs and the reply to a
    /// close go to it through [`Backlog::control`]. sockgate patch.
    control: bool,
}

/// Bytes the writer asked the connection to write that it did not take, at the last write.
///
/// tungstenite hands the connection its whole write buffer at each write (`write_out_buffer`),
/// so what a write leaves is what is still buffered; the raw writer ([`ws_raw`]) stores what
/// it keeps pending. sockgate patch.
#[derive(Debug, Default)]
pub(crate) struct Backlog {
    left: AtomicUsize,
    /// Frames the reader queues for the raw writer ([`ws_raw`]).
    pub(crate) control: ws_raw::Control,
}

impl Backlog {
    pub(crate) fn is_empty(&self) -> bool {
        self.left.load(Ordering::Relaxed) == 0
    }

    pub(crate) fn set_left(&self, left: usize) {
        self.left.store(left, Ordering::Relaxed);
    }
}

/// The websocket's connection, measuring its [`Backlog`]. sockgate patch.
pub(crate) struct Watched<S> {
    pub(crate) io: S,
    /// `None` once the raw writer owns the write half and measures it ([`ws_raw::start`]):
    /// what tungstenite still writes goes nowhere.
    pub(crate) backlog: Option<Arc<Backlog>>,
}

impl<S> Watched<S> {
    pub(crate) fn new(io: S, backlog: Arc<Backlog>) -> Self {
        Self {
            io,
            backlog: Some(backlog),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write(cx, buf);
        let left = match &written {
            Poll::Ready(Ok(n)) => buf.len().saturating_sub(*n),
            Poll::Pending => buf.len(),
            Poll::Ready(Err(_)) => 0,
        };
        if let Some(backlog) = &self.backlog {
            backlog.set_left(left);
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

fn ws_bytes_to_str(bytes: tungstenite::Utf8Bytes) -> Str {
    // SAFETY: the bytes are guaranteed to be valid UTF-8 by the tungstenite parser
    unsafe { Str::from_bytes_unchecked(bytes.into()) }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use futures_util::StreamExt;
    use http::Request;
    use tokio::io::DuplexStream;

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(1);

    #[derive(Debug)]
    struct StubHandler;
    impl EngineIoHandler for StubHandler {
        type Data = ();
        fn on_connect(self: Arc<Self>, _: Arc<Socket<()>>) {}
        fn on_disconnect(&self, _: Arc<Socket<()>>, _: DisconnectReason) {}
        fn on_message(self: &Arc<Self>, _: Str, _: Arc<Socket<()>>) {}
        fn on_binary(self: &Arc<Self>, _: Bytes, _: Arc<Socket<()>>) {}
    }

    fn socket() -> Arc<Socket<()>> {
        Arc::new(Socket::new(
            ProtocolVersion::V4,
            TransportType::Websocket,
            &EngineIoConfig::default(),
            Request::<()>::default().into_parts().0,
            Box::new(|_, _| ()),
            false,
        ))
    }

    async fn ws_pair() -> (WebSocketStream<DuplexStream>, WebSocketStream<DuplexStream>) {
        let (server, client) = tokio::io::duplex(1024);
        (
            WebSocketStream::from_raw_socket(server, Role::Server, None).await,
            WebSocketStream::from_raw_socket(client, Role::Client, None).await,
        )
    }

    /// The backlog is what tungstenite keeps buffered: every pong of a peer that sends pings
    /// and reads nothing, past what the connection holds; nothing once the peer has read.
    #[tokio::test]
    async fn backlog_is_what_the_peer_has_not_read() {
        const PINGS: usize = 100;
        const PONG: usize = PONG_HEADER_BYTES + 100;
        let (server, client) = tokio::io::duplex(1024);
        let backlog = Arc::new(Backlog::default());
        let server = Watched::new(server, backlog.clone());
        let mut server = WebSocketStream::from_raw_socket(server, Role::Server, None).await;
        let mut client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;

        let flood = async {
            for _ in 0..PINGS {
                client.send(Message::Ping(vec![0; 100].into())).await.unwrap();
            }
        };
        let read = async {
            for _ in 0..PINGS {
                let ping = server.next().await.unwrap().unwrap();
                assert!(matches!(ping, Message::Ping(_)), "{ping:?}");
            }
        };
        tokio::time::timeout(TIMEOUT, async { tokio::join!(flood, read) })
            .await
            .expect("the server reads every ping");
        // The last pong is queued, not yet written; the connection holds 1024 bytes.
        let left = backlog.left.load(Ordering::Relaxed);
        assert!(left >= (PINGS - 1) * PONG - 1024, "backlog {left}");

        let drain = async {
            for _ in 0..PINGS {
                let pong = client.next().await.unwrap().unwrap();
                assert!(matches!(pong, Message::Pong(_)), "{pong:?}");
            }
        };
        tokio::time::timeout(TIMEOUT, async { tokio::join!(drain, server.flush()) })
            .await
            .expect("the client reads every pong")
            .1
            .unwrap();
        assert!(backlog.is_empty());
    }

    /// A polling request can still hold the lock at the end of an upgrade.
    #[tokio::test]
    async fn writer_waits_for_the_lock_of_a_polling_request() {
        let socket = socket();
        let (server, mut client) = ws_pair().await;
        let (tx, _rx) = server.split();

        let polling = socket.internal_rx.lock().await;
        let writer = tokio::spawn(forward_to_socket::<StubHandler, _>(socket.clone(), tx));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!writer.is_finished(), "the writer should wait for the lock");

        drop(polling);
        socket.emit(Str::from("hello")).unwrap();
        let msg = tokio::time::timeout(TIMEOUT, client.next())
            .await
            .expect("the writer should send the packet")
            .unwrap()
            .unwrap();
        assert_eq!(msg, Message::text("4hello"));
    }

    #[tokio::test]
    async fn writer_waiting_for_the_lock_stops_with_the_session() {
        let socket = socket();
        let (server, _client) = ws_pair().await;
        let (tx, _rx) = server.split();

        let _polling = socket.internal_rx.lock().await;
        let writer = tokio::spawn(forward_to_socket::<StubHandler, _>(socket.clone(), tx));
        tokio::time::sleep(Duration::from_millis(20)).await;

        socket.cancellation_token.cancel();
        tokio::time::timeout(TIMEOUT, writer)
            .await
            .expect("the writer should stop")
            .unwrap();
    }

    /// What the reader task keeps for the socket's life (its future), and its parts.
    /// sockgate patch.
    #[tokio::test]
    async fn reader_task_size() {
        let engine = Arc::new(EngineIo::new(Arc::new(StubHandler), EngineIoConfig::default()));
        let opening = Box::pin(std::future::pending::<
            Result<Option<Opened<(), TokioIo<hyper::upgrade::Upgraded>>>, Error>,
        >());
        let task = reader_task(engine.clone(), None, opening);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
        let (_client, server) = tokio::join!(client, listener.accept());
        let io = ws_raw::RawIo::new(ws_raw::RawTcp {
            stream: server.unwrap().0,
            read_buf: Bytes::new(),
            keep: Box::new(()),
        });
        let backlog = Arc::new(Backlog::default());
        let ws = WebSocketStream::from_raw_socket(Watched::new(io, backlog.clone()), Role::Server, None).await;
        let rx = Reader { rx: ws, backlog, control: true };
        let sizes = (
            std::mem::size_of::<ws_raw::RawWs>(),
            std::mem::size_of::<Reader<ws_raw::RawWs>>(),
            std::mem::size_of::<Opened<(), TokioIo<hyper::upgrade::Upgraded>>>(),
        );
        let socket = socket();
        let mut rx = rx;
        let read = read(&engine, &socket, &mut rx);
        eprintln!(
            "reader task {} B; read {} B; RawWs {} B, Reader {} B, Opened {} B",
            std::mem::size_of_val(&task),
            std::mem::size_of_val(&read),
            sizes.0, sizes.1, sizes.2
        );
        // The stream has one slot in the task's future, not one per future it goes through.
        assert!(
            std::mem::size_of_val(&task) < 2 * sizes.1,
            "the reader task keeps its stream more than once"
        );
    }
}
