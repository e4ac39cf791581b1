//! One connected socket as the rest of `realtime/` sees it: who it is ([`Identity`]), how it
//! is named in logs, the events sockgate itself emits to it, and its Engine.IO session — is
//! its queue full, disconnect it, close its transport.

use std::sync::Arc;

use socketioxide::adapter::Adapter;

/// What an authenticated socket carries for later checks. Its credentials are read again
/// from the handshake head, which the session keeps anyway.
#[derive(Clone)]
pub(super) struct Identity {
    pub(super) user_id: Arc<str>,
    /// What presence rooms show of the user (`auth.user_info_pointer`).
    pub(super) info: Option<Arc<str>>,
    /// The handshake asked for offsets (`auth.offset` or `auth.offsets`): kept messages of
    /// every room it joins come as `(data, {offset, room})`.
    pub(super) offsets: bool,
}

/// How a socket is named in logs. Its id is the Engine.IO sid, which lets whoever holds it
/// poll the session (with matching credentials), so logs get a short hash of it instead:
/// enough to follow one socket through the log, useless to reach it.
pub(crate) fn log_id(sid: impl std::fmt::Display) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(sid.to_string().as_bytes());
    digest[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// The event a client gets when its missed messages cannot be replayed.
pub const RECOVERY_FAILED: &str = "recovery_failed";

/// Every event sockgate itself emits to clients; the publish API refuses them.
pub const SOCKGATE_EVENTS: [&str; 1] = [RECOVERY_FAILED];

/// The Engine.IO session under a Socket.IO socket (its handshake request carries a handle).
fn session<A: Adapter>(
    socket: &socketioxide::extract::SocketRef<A>,
) -> Option<engineioxide::SessionHandle> {
    socket
        .req_parts()
        .extensions
        .get::<engineioxide::SessionHandle>()
        .cloned()
}

/// Disconnects a socket from the namespace; [`close_transport`] (its disconnect handler) then
/// closes the transport. When its queue has room, the client is told first (a Socket.IO
/// disconnect: it does not reconnect by itself); a full queue made the engine close the
/// transport at once (`CloseWhenFull`).
pub(crate) fn disconnect<A: Adapter>(socket: &socketioxide::extract::SocketRef<A>) {
    // Err: closed already, or its queue was full and the engine closed it.
    let _ = socket.clone().disconnect();
}

/// Closes the transport of a socket the server disconnected from its namespace: a kick or a
/// revalidation here, or a kick from another instance, which arrives through the adapter as a
/// bare namespace disconnect and would leave the connection open (sockgate has one namespace:
/// a session without it is of no use). What is queued, the disconnect packet included, is
/// still written, within engineioxide's `CLOSE_GRACE` for a client that does not read.
pub(crate) fn close_transport<A: Adapter>(
    socket: &socketioxide::extract::SocketRef<A>,
    reason: socketioxide::socket::DisconnectReason,
) {
    if reason == socketioxide::socket::DisconnectReason::ServerNSDisconnect
        && let Some(session) = session(socket)
    {
        session.close(engineioxide::DisconnectReason::ClosingServer);
    }
}

/// Whether a socket's queue has no free slot: a message emitted now would close it as a slow
/// consumer.
pub(crate) fn queue_full<A: Adapter>(socket: &socketioxide::extract::SocketRef<A>) -> bool {
    session(socket).is_some_and(|s| s.is_full())
}

/// Closes a socket's transport at once, whatever its queue holds: the session leaves its rooms,
/// presence and counts, and frees its slot and file descriptor, as on any disconnect. True if
/// this call closed it (false if it was closing already).
pub(crate) fn close_now<A: Adapter>(socket: &socketioxide::extract::SocketRef<A>) -> bool {
    session(socket).is_some_and(|s| s.abort(engineioxide::DisconnectReason::TransportError))
}
