//! Cluster-wide reads (a user's presence, who is in a room, the stats): every other instance
//! is asked through Redis, in socketioxide-redis's request protocol, and the read is answered
//! within one deadline for all of it (`cluster.request_timeout_ms`), saying how many instances
//! did not answer in time.
//!
//! socketioxide-redis's own `fetch_sockets` and `rooms` each wait the request timeout for an
//! instance that does not answer, then return what came without saying that anything is
//! missing: a presence check (the two, one after the other) took twice the timeout while an
//! instance was stopped, and reported a user connected only there as offline, cluster-wide.
//! Here both requests go out at once, from a server id of sockgate's own (answers come back on
//! its own response channel, subscribed once through the driver, so the adapter's requests are
//! untouched), and an instance's figures count only once it answered both. This instance's
//! adapter answers them too (they are not from its own server id): that answer is ignored and
//! its sockets read locally, one more answer per read, the price of a channel of our own.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use socketioxide_core::adapter::remote_packet::{
    RequestOut, RequestTypeOut, Response, ResponseType,
};
use socketioxide_core::adapter::{BroadcastFlags, BroadcastOptions, RemoteSocketData};
use socketioxide_core::{Sid, Uid};
use socketioxide_redis::drivers::{ChanItem, Driver, MessageStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::canary::{answer_channel, request_channel};
use super::driver::ClusterDriver;

/// Answers waiting to be read on the response channel. The router only hands them on.
const BUFFER: usize = 256;

/// Where each request's answers go, by request id.
type Pending = Arc<Mutex<HashMap<Sid, mpsc::UnboundedSender<Vec<u8>>>>>;

/// Asks the other instances (see the module doc).
#[derive(Clone)]
pub struct Queries {
    driver: ClusterDriver,
    /// The server id the requests come from; no instance has it.
    querier: Uid,
    pending: Pending,
    timeout: Duration,
}

/// What the other instances said, within the deadline.
#[derive(Debug, Default)]
pub struct Answers {
    /// Their sockets matching the read.
    pub sockets: usize,
    /// Every room those sockets are in.
    pub rooms: HashSet<String>,
    /// Instances counted by Redis that did not answer both requests in time.
    pub unanswered: usize,
}

/// One instance's answers so far.
#[derive(Default)]
struct Answer {
    sockets: Option<usize>,
    rooms: Option<HashSet<String>>,
}

impl Answer {
    fn complete(&self) -> bool {
        self.sockets.is_some() && self.rooms.is_some()
    }
}

/// Forgets a read's request ids when it ends, answered, timed out or dropped (its HTTP
/// request gone): late answers are then discarded by the router.
struct Registration {
    pending: Pending,
    ids: [Sid; 2],
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        for id in &self.ids {
            pending.remove(id);
        }
    }
}

impl Queries {
    /// Subscribes the querier's response channel (kept across reconnects with the adapter's
    /// channels) and starts routing its answers.
    pub(crate) async fn new(
        driver: ClusterDriver,
        timeout: Duration,
    ) -> Result<Self, super::driver::DriverError> {
        let querier = Uid::new();
        let answers = driver.subscribe(answer_channel(querier), BUFFER).await?;
        let pending = Pending::default();
        tokio::spawn(route(answers, pending.clone()));
        Ok(Self {
            driver,
            querier,
            pending,
            timeout,
        })
    }

    /// The sockets in `rooms` (every socket when empty) on every instance but `server` (this
    /// one, read locally by the caller; its adapter answers too, and that answer is ignored),
    /// and the rooms they are in, within the request timeout. `Err` when Redis itself did not
    /// answer in time (nothing is known of the others).
    pub async fn sockets_and_rooms(
        &self,
        rooms: Vec<String>,
        server: Uid,
    ) -> Result<Answers, String> {
        let deadline = Instant::now() + self.timeout;
        // As `SocketIo`'s operators set it: without rooms, only the flag means every socket.
        let mut opts = BroadcastOptions::default();
        opts.add_flag(BroadcastFlags::Broadcast);
        opts.rooms = rooms.into_iter().map(Into::into).collect();
        let sockets = RequestOut::new(self.querier, RequestTypeOut::FetchSockets, &opts);
        let rooms = RequestOut::new(self.querier, RequestTypeOut::AllRooms, &opts);
        // Unbounded, yet small: each instance answers each of the two requests once.
        let (tx, mut rx) = mpsc::unbounded_channel();
        let _registration = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            pending.insert(sockets.id, tx.clone());
            pending.insert(rooms.id, tx);
            Registration {
                pending: self.pending.clone(),
                ids: [sockets.id, rooms.id],
            }
        };
        let encode = |req: &RequestOut<'_>| {
            rmp_serde::to_vec(req).map_err(|e| format!("cannot encode a cluster request: {e}"))
        };
        let (sockets, rooms) = (encode(&sockets)?, encode(&rooms)?);
        // The servers are the request channel's subscribers, this one included.
        let channel = request_channel();
        let asked = async {
            tokio::try_join!(
                self.driver.num_serv(&channel),
                self.driver.publish(channel.clone(), sockets),
                self.driver.publish(channel.clone(), rooms),
            )
        };
        let others = match tokio::time::timeout_at(deadline, asked).await {
            Ok(Ok((servers, (), ()))) => usize::from(servers).saturating_sub(1),
            Ok(Err(e)) => return Err(format!("Redis refused a cluster request: {e}")),
            Err(_) => {
                return Err(format!(
                    "Redis did not take a cluster request within {:?} (cluster.request_timeout_ms)",
                    self.timeout
                ));
            }
        };
        Ok(gather(&mut rx, others, server, deadline).await)
    }
}

/// Reads the answers to a read's two requests until `others` instances (any but `server`,
/// this one) answered both, or `deadline`; sums the figures of those that did.
async fn gather(
    rx: &mut mpsc::UnboundedReceiver<Vec<u8>>,
    others: usize,
    server: Uid,
    deadline: Instant,
) -> Answers {
    // By server id (a `Uid` is not hashable; the `Sid` it wraps is).
    let mut answers: HashMap<Sid, Answer> = HashMap::new();
    let complete =
        |answers: &HashMap<Sid, Answer>| answers.values().filter(|a| a.complete()).count();
    while complete(&answers) < others {
        let Ok(Some(item)) = tokio::time::timeout_at(deadline, rx.recv()).await else {
            break;
        };
        let response = match rmp_serde::from_slice::<(Sid, Response<RemoteSocketData>)>(&item) {
            Ok((_, response)) => response,
            Err(e) => {
                tracing::debug!("undecodable answer to a cluster request: {e}");
                continue;
            }
        };
        if response.node_id == server {
            continue;
        }
        let answer = answers.entry(*response.node_id).or_default();
        match response.r#type {
            ResponseType::FetchSockets(sockets) => answer.sockets = Some(sockets.len()),
            ResponseType::AllRooms(rooms) => {
                answer.rooms = Some(rooms.into_iter().map(|r| r.into_owned()).collect());
            }
            _ => {}
        }
    }
    let mut total = Answers {
        unanswered: others.saturating_sub(complete(&answers)),
        ..Answers::default()
    };
    for answer in answers.into_values() {
        if let Answer {
            sockets: Some(sockets),
            rooms: Some(rooms),
        } = answer
        {
            total.sockets += sockets;
            total.rooms.extend(rooms);
        }
    }
    total
}

/// Hands each answer on the querier's response channel to the read that asked for it; an
/// answer that came too late (its read is over) is dropped.
async fn route(mut answers: MessageStream<ChanItem>, pending: Pending) {
    while let Some((_, item)) = answers.next().await {
        let Some(id) = socketioxide_redis::read_req_id(&item) else {
            continue;
        };
        let waiting = pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned();
        match waiting {
            Some(tx) => {
                let _ = tx.send(item);
            }
            None => tracing::debug!(?id, "a late answer to a cluster request, dropped"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use socketioxide_core::Str;

    use super::*;

    /// `node`'s answer to a FetchSockets request: `n` sockets.
    fn sockets(node: Uid, n: usize) -> Vec<u8> {
        let data = (0..n)
            .map(|_| RemoteSocketData {
                id: Sid::new(),
                server_id: node,
                ns: Str::from("/"),
            })
            .collect();
        let response = Response {
            node_id: node,
            r#type: ResponseType::FetchSockets(data),
        };
        rmp_serde::to_vec(&(Sid::new(), response)).expect("encodable")
    }

    /// `node`'s answer to an AllRooms request.
    fn rooms(node: Uid, rooms: &[&'static str]) -> Vec<u8> {
        let response = Response::<()> {
            node_id: node,
            r#type: ResponseType::AllRooms(rooms.iter().map(|r| (*r).into()).collect()),
        };
        rmp_serde::to_vec(&(Sid::new(), response)).expect("encodable")
    }

    #[tokio::test(start_paused = true)]
    async fn every_instance_answered_ends_before_the_deadline() {
        let (me, b, c) = (Uid::new(), Uid::new(), Uid::new());
        let (tx, mut rx) = mpsc::unbounded_channel();
        for item in [
            sockets(b, 2),
            sockets(me, 5),
            rooms(me, &["mine"]),
            rooms(c, &["user:x", "team"]),
            rooms(b, &["user:y", "team"]),
            sockets(c, 1),
        ] {
            tx.send(item).expect("open");
        }
        let began = Instant::now();
        let answers = gather(&mut rx, 2, me, began + Duration::from_secs(1)).await;
        assert_eq!(began.elapsed(), Duration::ZERO, "no wait once all answered");
        assert_eq!((answers.sockets, answers.unanswered), (3, 0));
        let mut rooms: Vec<_> = answers.rooms.into_iter().collect();
        rooms.sort();
        assert_eq!(
            rooms,
            ["team", "user:x", "user:y"],
            "this instance's own answer ignored"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_instance_that_did_not_answer_both_is_left_out_and_counted_at_the_deadline() {
        let (me, b, c) = (Uid::new(), Uid::new(), Uid::new());
        let (tx, mut rx) = mpsc::unbounded_channel();
        // Three others: b answers both, c only one of the two, the third nothing (stopped).
        for item in [sockets(b, 2), rooms(b, &["team"]), sockets(c, 7)] {
            tx.send(item).expect("open");
        }
        let began = Instant::now();
        let answers = gather(&mut rx, 3, me, began + Duration::from_secs(1)).await;
        assert_eq!(
            began.elapsed(),
            Duration::from_secs(1),
            "waited until the deadline, once"
        );
        assert_eq!((answers.sockets, answers.unanswered), (2, 2));
        assert_eq!(answers.rooms, HashSet::from(["team".to_owned()]));
    }
}
