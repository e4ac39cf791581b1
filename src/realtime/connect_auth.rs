//! The `auth` payload of a Socket.IO CONNECT: its size is checked against
//! `realtime.max_auth_bytes` before it is parsed, and it is dropped once the session check has
//! read it (sockgate keeps only the offsets it asks for).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use socketioxide::adapter::Adapter;
use socketioxide::extract::TryData;
use socketioxide::handler::{FromConnectParts, Value};
use socketioxide::socket::Socket;

/// A CONNECT's `auth` as received, not parsed yet.
pub struct ConnectAuth<A: Adapter> {
    socket: Arc<Socket<A>>,
    raw: Option<Value>,
}

/// An `auth` over `realtime.max_auth_bytes`; the text is the client's `connect_error` message.
#[derive(Debug, thiserror::Error)]
#[error("auth is {bytes} bytes, over realtime.max_auth_bytes ({max})")]
pub struct AuthTooLarge {
    bytes: usize,
    max: usize,
}

impl<A: Adapter> FromConnectParts<A> for ConnectAuth<A> {
    type Error = Infallible;
    fn from_connect_parts(
        socket: &Arc<Socket<A>>,
        auth: &Option<Value>,
    ) -> Result<Self, Infallible> {
        // A clone of the received bytes' handle, not of the bytes.
        Ok(Self {
            socket: socket.clone(),
            raw: auth.clone(),
        })
    }
}

impl<A: Adapter> ConnectAuth<A> {
    /// The payload as JSON (none when absent or not valid), unless it is over `max` bytes
    /// as sent (JSON text, or msgpack bytes, attachments included): then it is not parsed.
    pub fn parse(self, max: usize) -> Result<Option<serde_json::Value>, AuthTooLarge> {
        let bytes = match &self.raw {
            None => 0,
            Some(Value::Str(text, attachments)) => {
                text.len()
                    + attachments
                        .as_ref()
                        .map_or(0, |a: &VecDeque<_>| a.iter().map(|b| b.len()).sum())
            }
            Some(Value::Bytes(data)) => data.len(),
        };
        if bytes > max {
            return Err(AuthTooLarge { bytes, max });
        }
        let Ok(TryData(parsed)) = TryData::from_connect_parts(&self.socket, &self.raw);
        Ok(parsed.ok())
    }
}
