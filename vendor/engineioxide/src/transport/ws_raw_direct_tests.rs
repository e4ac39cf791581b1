//! Direct writes (issue 32 stage 4): a sender writes its packet to the connection itself only
//! when nothing is queued or pending and the session is open; in every other case the packet
//! is queued, and the client gets every packet once, in the order it was sent.

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use engineioxide_core::TransportType;
use http::Request;
use tokio::sync::mpsc::error::TrySendError;
use tokio_tungstenite::tungstenite::Message;

use super::tests::{next, raw_pair, socket};
use super::*;
use crate::{Str, config::EngineIoConfig, socket::CloseWhenFull};

/// Packets in the session's queue (or slots reserved in it).
fn queued(socket: &Socket<()>) -> usize {
    socket.internal_tx.max_capacity() - socket.internal_tx.capacity()
}

/// Waits until the writer holds the queue: from then on senders may write directly.
async fn writer_opened(socket: &Socket<()>) {
    let out = socket.raw_out.get().expect("a raw writer");
    for _ in 0..200 {
        if out.lock().open {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the writer did not start");
}

/// Emits through a permit (the Socket.IO path, which may write directly), retrying while the
/// queue is full.
async fn emit_direct(socket: &Socket<()>, msg: String) {
    loop {
        match socket.reserve() {
            Ok(permit) => return permit.emit(msg.into()),
            Err(TrySendError::Full(())) => tokio::task::yield_now().await,
            Err(e) => panic!("{e:?}"),
        }
    }
}

#[tokio::test]
async fn a_permit_writes_directly_when_nothing_is_queued() {
    let socket = socket(ProtocolVersion::V4);
    let (_ws, _backlog, mut client) = raw_pair(&socket).await;
    writer_opened(&socket).await;
    socket.reserve().unwrap().emit("now".into());
    assert_eq!(queued(&socket), 0, "written by the sender, not queued");
    socket.reserve().unwrap().emit_binary(Bytes::from_static(&[1, 2, 3]));
    socket
        .reserve()
        .unwrap()
        .emit_many("many".into(), [Bytes::from_static(&[4])].into());
    assert_eq!(queued(&socket), 0);
    assert_eq!(next(&mut client).await, Message::text("4now"));
    assert_eq!(next(&mut client).await, Message::binary(vec![1u8, 2, 3]));
    assert_eq!(next(&mut client).await, Message::text("4many"));
    assert_eq!(next(&mut client).await, Message::binary(vec![4u8]));
}

/// The writer has not taken a queued packet yet: a permit's packet goes behind it.
#[tokio::test]
async fn a_direct_write_never_overtakes_a_queued_packet() {
    let socket = socket(ProtocolVersion::V4);
    let (_ws, _backlog, mut client) = raw_pair(&socket).await;
    writer_opened(&socket).await;
    socket.emit("queued").unwrap();
    socket.reserve().unwrap().emit("after".into());
    assert_eq!(queued(&socket), 2, "queued behind the first");
    assert_eq!(next(&mut client).await, Message::text("4queued"));
    assert_eq!(next(&mut client).await, Message::text("4after"));
}

/// Queued and direct writes from one thread while the writer runs on another, each direct
/// write the moment the writer takes the packet before it off the queue: the writer holds
/// the write side from taking a batch off the queue to writing it, so the client reads the
/// packets in the order they were sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_and_queued_writes_keep_one_order() {
    const MESSAGES: usize = 6_000;
    let socket = socket(ProtocolVersion::V4);
    let (_ws, _backlog, mut client) = raw_pair(&socket).await;
    writer_opened(&socket).await;
    let sender = socket.clone();
    // A thread of its own: the writer is never stuck behind the sender's spinning.
    let sending = std::thread::spawn(move || {
        for i in 0..MESSAGES {
            let mut msg = Str::from(i.to_string());
            if i % 2 == 0 {
                while let Err(TrySendError::Full(back)) = sender.emit(msg) {
                    msg = back;
                }
                while queued(&sender) > 0 {
                    std::hint::spin_loop();
                }
            } else {
                loop {
                    match sender.reserve() {
                        Ok(permit) => break permit.emit(msg),
                        Err(TrySendError::Full(())) => std::hint::spin_loop(),
                        Err(e) => panic!("{e:?}"),
                    }
                }
            }
        }
    });
    for i in 0..MESSAGES {
        assert_eq!(next(&mut client).await, Message::text(format!("4{i}")));
    }
    sending.join().unwrap();
}

/// A client that stops reading in the middle of a broadcast: the first packets go to the
/// kernel, the one it cuts is left pending, the rest queue behind it; once the client reads
/// it gets them all, in order, and the next packet is written directly again.
#[tokio::test]
async fn a_client_that_stops_reading_mid_broadcast_gets_everything_in_order() {
    const MESSAGES: usize = 100;
    let socket = socket(ProtocolVersion::V4);
    let (_ws, backlog, mut client) = raw_pair(&socket).await;
    writer_opened(&socket).await;
    let big = "b".repeat(64 * 1024);
    for i in 0..MESSAGES {
        emit_direct(&socket, format!("{i}:{big}")).await;
    }
    assert!(queued(&socket) > 0, "6.4 MB cannot all be in the kernel's buffers");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!backlog.is_empty(), "the writer keeps what the kernel did not take");
    for i in 0..MESSAGES {
        assert_eq!(next(&mut client).await, Message::text(format!("4{i}:{big}")));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(backlog.is_empty());
    socket.reserve().unwrap().emit("again".into());
    assert_eq!(queued(&socket), 0, "written directly again");
    assert_eq!(next(&mut client).await, Message::text("4again"));
}

/// Direct writes stop while bytes are pending, so a client that does not read still fills
/// the queue and is closed as a slow consumer, as before.
#[tokio::test]
async fn a_client_that_does_not_read_is_closed_when_its_queue_is_full() {
    let told = Arc::new(AtomicUsize::new(0));
    let mut parts = Request::<()>::default().into_parts().0;
    let counter = told.clone();
    parts.extensions.insert(CloseWhenFull(Arc::new(move || {
        counter.fetch_add(1, Ordering::Relaxed);
    })));
    let config = EngineIoConfig::builder().max_buffer_size(8).build();
    let socket = Arc::new(Socket::new(
        ProtocolVersion::V4,
        TransportType::Websocket,
        &config,
        parts,
        Box::new(|_, _| ()),
        false,
    ));
    let (_ws, _backlog, _client) = raw_pair(&socket).await;
    writer_opened(&socket).await;
    let big = Str::from("f".repeat(64 * 1024));
    let mut emitted = 0;
    let full = loop {
        match socket.reserve() {
            Ok(permit) => permit.emit(big.clone()),
            Err(e) => break e,
        }
        emitted += 1;
        assert!(emitted < 10_000, "the queue never filled");
        tokio::task::yield_now().await;
    };
    assert!(matches!(full, TrySendError::Full(())), "{full:?}");
    assert!(socket.is_aborted(), "closed as a slow consumer");
    assert_eq!(told.load(Ordering::Relaxed), 1);
}

/// A closing session: a packet sent after the close began is queued (so the writer's close
/// frame comes after it), never written by the sender.
#[tokio::test]
async fn a_closing_session_queues() {
    let socket = socket(ProtocolVersion::V4);
    let (_ws, _backlog, mut client) = raw_pair(&socket).await;
    writer_opened(&socket).await;
    socket.cancellation_token.cancel();
    socket.reserve().unwrap().emit("late".into());
    assert_eq!(queued(&socket), 1);
    assert_eq!(next(&mut client).await, Message::text("4late"));
    assert_eq!(next(&mut client).await, Message::Close(None));
}

/// While a polling request still holds the queue at the end of an upgrade, the writer has not
/// started: packets queue, and reach the WebSocket, in order, once the request lets go.
#[tokio::test]
async fn a_socket_mid_upgrade_queues() {
    let socket = socket(ProtocolVersion::V4);
    let polling = socket.internal_rx.lock().await;
    let (_ws, _backlog, mut client) = raw_pair(&socket).await;
    socket.reserve().unwrap().emit("first".into());
    assert_eq!(queued(&socket), 1, "queued, not written");
    socket.emit("second").unwrap();
    drop(polling);
    assert_eq!(next(&mut client).await, Message::text("4first"));
    assert_eq!(next(&mut client).await, Message::text("4second"));
    writer_opened(&socket).await;
}

/// A polling session (no raw writer) and a session whose writer stopped always queue.
#[tokio::test]
async fn without_a_running_writer_packets_queue() {
    let polling = Arc::new(Socket::<()>::new(
        ProtocolVersion::V4,
        TransportType::Polling,
        &EngineIoConfig::default(),
        Request::<()>::default().into_parts().0,
        Box::new(|_, _| ()),
        false,
    ));
    polling.reserve().unwrap().emit("polled".into());
    assert_eq!(queued(&polling), 1);

    let socket = socket(ProtocolVersion::V4);
    let (_ws, _backlog, _client) = raw_pair(&socket).await;
    writer_opened(&socket).await;
    socket.cancellation_token.cancel();
    let out = socket.raw_out.get().unwrap().clone();
    for _ in 0..200 {
        if out.lock().wr.is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(out.lock().wr.is_none(), "the writer let go of the write half");
    let _slot = socket.internal_tx.try_reserve().unwrap();
    let direct = DirectTo {
        out: &out,
        queue: &socket.internal_tx,
        closing: &CancellationToken::new(),
    };
    assert_eq!(direct.write(&[Packet::Message("x".into())]), Direct::Queue);
}

/// Between taking a batch off the queue and writing it, the writer holds the write side: a
/// sender that finds the queue empty then still queues behind what the writer holds.
#[tokio::test]
async fn a_sender_queues_while_the_writer_holds_the_write_side() {
    let socket = socket(ProtocolVersion::V4);
    let (_ws, _backlog, _client) = raw_pair(&socket).await;
    writer_opened(&socket).await;
    let out = socket.raw_out.get().unwrap();
    let writing = out.lock();
    socket.reserve().unwrap().emit("behind".into());
    assert_eq!(queued(&socket), 1, "queued, not written");
    drop(writing);
}
