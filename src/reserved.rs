//! Names sockgate keeps for itself. A leaf: the configuration refuses prefixes that overlap
//! them, the publish API refuses rooms and events that use them, and the realtime side names
//! its own rooms with them.

/// Rooms and events whose names start with this are sockgate's own: the publish API refuses
/// them, so an app cannot reach a socket that is still being let in, or impersonate sockgate.
pub const INTERNAL_PREFIX: &str = "sockgate:";
