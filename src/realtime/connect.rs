//! The connect path: a Socket.IO CONNECT from its session check (`register` … `check_session`)
//! through the socket's user room and session rooms, to its replay and `on_connected`.

use std::sync::Arc;

use socketioxide::adapter::Adapter;
use socketioxide::extract::SocketRef;
use socketioxide::handler::ConnectHandler;
use socketioxide::{SocketIo, socket::DisconnectReason};
use socketioxide_core::adapter::DefinedAdapter;

use super::admission::Ticket;
use super::auth::{AuthError, Session, SessionAuth};
use super::channels::Channels;
use super::connect_auth::{AuthTooLarge, ConnectAuth};
use super::history::{History, Journal, Since};
use super::recovery::{AskedOffsets, Recovery, Shape, recover};
use super::relay::Relay;
use super::rooms::{connecting_room, recovery_room};
use super::service::handshake_headers;
use super::session::{self, Identity, log_id};
use crate::metrics::{Metrics, Reject};
use crate::webhooks::Webhooks;

/// What the connect path needs, shared by every socket.
#[derive(Clone)]
pub(super) struct Handlers {
    pub(super) auth: Arc<SessionAuth>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) room_prefix: Arc<str>,
    pub(super) journal: Arc<Journal>,
    pub(super) relay: Option<Arc<Relay>>,
    pub(super) webhooks: Webhooks,
    pub(super) channels: Arc<Channels>,
    pub(super) max_sockets_per_user: usize,
    pub(super) max_auth_bytes: usize,
}

/// Where a socket's replay starts, and in which shape it gets user messages, decided at the
/// handshake.
#[derive(Clone)]
struct ReplayFrom {
    since: Since,
    shape: Shape,
}

/// Why a Socket.IO CONNECT is refused; the text is the client's `connect_error` message.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error(transparent)]
    Session(#[from] AuthError),
    #[error("too many sockets for this user (realtime.max_sockets_per_user)")]
    TooManySockets,
    #[error(transparent)]
    AuthTooLarge(#[from] AuthTooLarge),
}

/// Registers the one namespace: the session check (which joins the user's room), then the
/// bookkeeping of connected sockets.
pub(super) fn register<A: Adapter + DefinedAdapter>(
    io: &SocketIo<A>,
    handlers: Handlers,
) -> A::InitRes {
    let check = {
        let handlers = handlers.clone();
        move |socket: SocketRef<A>, auth: ConnectAuth<A>| authenticate(socket, auth, handlers)
    };
    let on_connect = move |socket: SocketRef<A>| on_connected(socket, handlers);
    io.ns("/", on_connect.with(check))
}

async fn authenticate<A: Adapter>(
    socket: SocketRef<A>,
    auth: ConnectAuth<A>,
    handlers: Handlers,
) -> Result<(), Refused> {
    let result = match auth.parse(handlers.max_auth_bytes) {
        Ok(auth) => check_session(&socket, auth, &handlers).await,
        Err(too_large) => Err(too_large.into()),
    };
    match &result {
        Ok(()) => let_in(&socket, &handlers),
        Err(e) => {
            tracing::debug!(socket = %log_id(socket.id), "socket refused: {e}");
            handlers.metrics.rejected(match e {
                Refused::Session(AuthError::Unauthorized) => Reject::Unauthorized,
                Refused::Session(AuthError::Unavailable(_)) => Reject::SessionUnavailable,
                Refused::TooManySockets => Reject::PerUserLimit,
                Refused::AuthTooLarge(_) => Reject::AuthTooLarge,
            });
        }
    }
    result
}

/// Sets up a socket the session check let in, before socketioxide sends it CONNECT: the
/// connect handler runs in a task of its own, later, and a client emits what it buffered
/// (a `subscribe`, say) the moment CONNECT arrives — an event with no handler yet is dropped
/// unanswered. The disconnect handler is here for the same reason: a socket that closes
/// before its connect handler runs is still matched by a departure.
fn let_in<A: Adapter>(socket: &SocketRef<A>, handlers: &Handlers) {
    handlers.channels.register(socket);
    // The session's rooms (but those to replay) are entered here already, for the same reason
    // as the user room: a publish made as soon as the client reports "connected" must find
    // the socket in them. Only the adapter's rooms: a socket that never gets its CONNECT is
    // removed from them by socketioxide, with no disconnect handler to undo presence or
    // occupancy, which the connect handler records (`follow_session`).
    if let Some(SessionRooms { rooms, replays }) = socket.extensions.get::<SessionRooms>() {
        let offsets = socket
            .extensions
            .get::<Identity>()
            .is_some_and(|i| i.offsets);
        handlers
            .channels
            .enter_early(socket, &rooms, &replays, offsets);
    }
    let tab = handlers
        .webhooks
        .connected(socket.extensions.get::<Identity>().map(|i| i.user_id));
    let channels = handlers.channels.clone();
    socket.on_disconnect(move |socket: SocketRef<A>, reason: DisconnectReason| {
        drop(tab); // down once this handler's last clone is gone (see `Tab`)
        channels.closed(&socket);
        async move { session::close_transport(&socket, reason) }
    });
}

async fn check_session<A: Adapter>(
    socket: &SocketRef<A>,
    auth: Option<serde_json::Value>,
    handlers: &Handlers,
) -> Result<(), Refused> {
    let ticket = socket.req_parts().extensions.get::<Ticket>();
    let Session {
        user_id,
        rooms,
        info,
    } = session_of(socket, ticket, handlers).await?;
    let room = format!("{}{user_id}", handlers.room_prefix);
    // Counted on this instance, connected or still joining; handshakes at the same moment
    // may each see the last place.
    let open = socket
        .local()
        .within(vec![room.clone(), connecting_room(&user_id)])
        .sockets()
        .len();
    if open >= handlers.max_sockets_per_user {
        tracing::warn!(user = %user_id, open, "socket refused: the user has realtime.max_sockets_per_user sockets open");
        return Err(Refused::TooManySockets);
    }
    if let Some(ticket) = ticket {
        ticket.connected();
    }
    tracing::debug!(socket = %log_id(socket.id), user = %user_id, transport = ?socket.transport_type(), "socket authenticated");
    let (asked, offsets) = match handlers.journal.history() {
        // socketioxide sends the client its CONNECT before the connect handler runs, so the
        // room is joined here: a publish made as soon as the client reports "connected" must
        // find the socket in it.
        None => {
            socket.join(room);
            (AskedOffsets::default(), false)
        }
        Some(history) => {
            let user = UserRoom {
                room: &room,
                user_id: &user_id,
                rooms: &rooms,
            };
            await_replay(socket, auth.as_ref(), handlers, history, user).await
        }
    };
    socket.extensions.insert(Identity {
        user_id,
        info,
        offsets,
    });
    socket.extensions.insert(SessionRooms {
        rooms,
        replays: asked.rooms.into(),
    });
    Ok(())
}

/// The session the handshake was let in on, unless the cache would not hold it any more or
/// its user was kicked since: then the credentials are looked up again, as by any socket that
/// has no ticket (a second CONNECT on one Engine.IO session).
async fn session_of<A: Adapter>(
    socket: &SocketRef<A>,
    ticket: Option<&Ticket>,
    handlers: &Handlers,
) -> Result<Session, Refused> {
    let reused = match ticket.and_then(Ticket::take_admitted) {
        Some(admitted) => handlers.auth.reuse(admitted).await,
        None => None,
    };
    match reused {
        Some(reused) => Ok(reused?),
        None => {
            let credentials = handlers
                .auth
                .credentials(&handshake_headers(socket.req_parts()))
                .map_err(|_| Refused::Session(AuthError::Unauthorized))?;
            Ok(handlers.auth.authenticate(&credentials).await?)
        }
    }
}

/// A session's user room, its user and the rooms it listed, as `check_session` found them.
#[derive(Clone, Copy)]
struct UserRoom<'a> {
    room: &'a str,
    user_id: &'a str,
    rooms: &'a [Arc<str>],
}

/// With history, the connect handler joins the user room after replaying; what is published
/// from now on until then is part of the replay. Meanwhile the socket waits in a room of its
/// own, where a kick (`disconnect`) still finds it. Returns the offsets the client asked for
/// and whether it gets user messages with their offsets.
async fn await_replay<A: Adapter>(
    socket: &SocketRef<A>,
    auth: Option<&serde_json::Value>,
    handlers: &Handlers,
    history: &History,
    user: UserRoom<'_>,
) -> (AskedOffsets, bool) {
    let shape = Shape::asked(auth);
    let socket_log = log_id(socket.id);
    let mut asked = AskedOffsets::read(
        auth,
        user.room,
        user.rooms,
        handlers.channels.max_rooms(),
        &socket_log,
    );
    let offset = auth
        .and_then(|a| a.get("offset"))
        .and_then(|o| o.as_str())
        .map(str::to_owned)
        .or(asked.user.take());
    let since = match offset {
        Some(offset) => {
            socket.join(connecting_room(user.user_id));
            Since::Client(offset)
        }
        None => {
            // Under the room lock: a message is either published before (and in the head,
            // delivered to no one here) or after (and the socket, now in its connecting
            // room, counts as a recipient and gets it from the replay).
            let _publishing = handlers.journal.lock(user.room).await;
            socket.join(connecting_room(user.user_id));
            Since::Head(history.head(user.room).await)
        }
    };
    let offsets = shape == Shape::WithOffset;
    socket.extensions.insert(ReplayFrom { since, shape });
    (asked, offsets)
}

/// The rooms the handshake's session listed, until the socket joins them (in `let_in`), and
/// those of them to replay from the offset the client gave.
#[derive(Clone)]
struct SessionRooms {
    rooms: Arc<[Arc<str>]>,
    replays: Arc<[(Arc<str>, String)]>,
}

async fn on_connected<A: Adapter>(socket: SocketRef<A>, handlers: Handlers) {
    handlers.metrics.connected();
    // Recorded first, before anything here waits: with the disconnect handler (set in
    // `let_in`), every presence arrival made here is matched by a departure. The rooms to
    // replay count as joined (presence, occupancy, bounds) but the socket enters them only
    // once their replay is sent, under their lock.
    let mut replays: Arc<[(Arc<str>, String)]> = Arc::new([]);
    if let Some(SessionRooms { rooms, replays: r }) = socket.extensions.remove::<SessionRooms>()
        && socket.connected()
    {
        let deferred: Vec<Arc<str>> = r.iter().map(|(room, _)| room.clone()).collect();
        handlers.channels.follow_session(&socket, &rooms, &deferred);
        replays = r;
    }
    let recovery = Recovery {
        journal: handlers.journal.clone(),
        relay: handlers.relay.clone(),
        metrics: handlers.metrics.clone(),
    };
    if let (Some(history), Some(ReplayFrom { since, shape }), Some(identity)) = (
        handlers.journal.history(),
        // Taken, not copied: it is needed once, and each socket's memory counts.
        socket.extensions.remove::<ReplayFrom>(),
        socket.extensions.get::<Identity>(),
    ) {
        let room = format!("{}{}", handlers.room_prefix, identity.user_id);
        let _joined = recover(
            &socket,
            &recovery,
            history,
            &room,
            since,
            shape,
            || true,
            || {
                finish_joining(&socket, room.clone(), &identity.user_id, shape);
                true
            },
        )
        .await;
    }
    if let Some(history) = handlers.journal.history() {
        for (room, offset) in replays.iter() {
            let channels = &handlers.channels;
            let _joined = recover(
                &socket,
                &recovery,
                history,
                room,
                Since::Client(offset.clone()),
                Shape::WithOffset,
                || channels.is_member(&socket, room),
                || channels.enter(&socket, room, true),
            )
            .await;
        }
    }
}

/// Moves a socket from its connecting room to its user room (and, when it gets offsets, to its
/// user's recovery room, in the same call: a message is never delivered to it in between).
fn finish_joining<A: Adapter>(socket: &SocketRef<A>, room: String, user_id: &str, shape: Shape) {
    match shape {
        Shape::Plain => socket.join(room),
        Shape::WithOffset => socket.join([room, recovery_room(user_id)]),
    }
    socket.leave(connecting_room(user_id));
    // A socket that closed while its replay waited was removed from its rooms already; the
    // join above would keep it in the room map for good.
    if !socket.connected() {
        socket.leave_all();
    }
}
