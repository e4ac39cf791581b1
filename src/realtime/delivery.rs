//! What a delivery through socketioxide gives back: the local emit (one encode for every
//! socket it selects, the full ones counted) and [`HubError`], why the hub did not deliver.

use socketioxide::adapter::{Adapter, AdapterError};
use socketioxide::operators::BroadcastOperators;
use socketioxide::{BroadcastError, SocketError};

/// Why the hub did not deliver a publish or a kick. The publish API answers [`HubError::Draining`]
/// with a 503 (the service's state) and the others with a 500; each text is the answer's body.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The drain has begun (`Hub::close_all`): this instance has no sockets any more.
    #[error(
        "sockgate is draining (shutting down): its sockets are closed; publish through another instance or retry once it is back"
    )]
    Draining,
    /// The message could not be encoded for the sockets. Kept as socketioxide reported it (a
    /// broadcast's error in its words; every delivery is a broadcast, encoded once).
    #[error(transparent)]
    Serialize(Box<dyn std::error::Error + Send>),
    /// This instance's adapter failed a local broadcast (as socketioxide words it).
    #[error("Adapter error: {0}")]
    Adapter(AdapterError),
}

/// Emits to this instance's sockets that `to` selects, the packet encoded once for all of
/// them (not once per socket). A socket whose buffer is full (a client that stopped reading)
/// misses the message and is closed by the engine as a slow consumer (see `CloseWhenFull` in
/// `realtime/mod.rs`): it reconnects and catches up instead of holding memory. Returns
/// (targeted, dropped), the targeted counted from the adapter's socket ids, without looking
/// each socket up.
pub(super) async fn emit_locally<A: Adapter, P: serde::Serialize + ?Sized>(
    to: BroadcastOperators<A>,
    event: &str,
    payload: &P,
) -> Result<(usize, usize), HubError> {
    let recipients = to.count();
    if recipients == 0 {
        // socketioxide encodes before it looks for sockets: a room with none here (often the
        // recovering companion of a user room) costs nothing.
        return Ok((0, 0));
    }
    let dropped = match to.emit(event, payload).await {
        Ok(()) => 0,
        Err(BroadcastError::Socket(errors)) => full_count(&errors),
        Err(e @ BroadcastError::Serialize(_)) => return Err(HubError::Serialize(Box::new(e))),
        Err(BroadcastError::Adapter(e)) => return Err(HubError::Adapter(e)),
    };
    Ok((recipients, dropped))
}

/// How many sockets a broadcast found full (each closed by the engine as a slow consumer).
pub(super) fn full_count(errors: &[SocketError]) -> usize {
    errors
        .iter()
        .filter(|e| matches!(e, SocketError::InternalChannelFull))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hub error answers the publish API with socketioxide's words, as it did when the
    /// error was passed on as its text; `Adapter` restates them, so it is checked against them.
    #[test]
    fn hub_errors_read_as_socketioxide_wrote_them() {
        let failure = || AdapterError(Box::new(std::io::Error::other("no route")));
        assert_eq!(
            HubError::Adapter(failure()).to_string(),
            BroadcastError::Adapter(failure()).to_string()
        );
        let unencodable = || socketioxide::ParserError::new(std::io::Error::other("bad value"));
        assert_eq!(
            HubError::Serialize(Box::new(BroadcastError::Serialize(unencodable()))).to_string(),
            BroadcastError::Serialize(unencodable()).to_string()
        );
        assert_eq!(
            HubError::Serialize(Box::new(unencodable())).to_string(),
            unencodable().to_string()
        );
    }
}
