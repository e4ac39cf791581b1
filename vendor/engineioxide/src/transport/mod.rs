//! All transports modules available in engineioxide

use engineioxide_core::{OpenPacket, Sid, TransportType};

use crate::config::EngineIoConfig;

pub mod polling;
pub mod ws;
pub mod ws_raw;

fn make_open_packet(transport: TransportType, id: Sid, config: &EngineIoConfig) -> OpenPacket {
    // sockgate patch: websocket is offered only when the server allows it, as the reference
    // server does (`upgrades: []` on a polling-only server, whose clients would otherwise try
    // an upgrade that is refused).
    let upgrades = if transport == TransportType::Polling
        && config.allowed_transport(TransportType::Websocket)
    {
        smallvec::smallvec![TransportType::Websocket]
    } else {
        smallvec::smallvec![]
    };
    OpenPacket {
        sid: id,
        upgrades,
        ping_timeout: config.ping_timeout,
        ping_interval: config.ping_interval,
        max_payload: config.max_payload,
    }
}
