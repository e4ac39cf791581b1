//! Session revalidation: every `auth.revalidate_interval_ms`, each local socket's session is
//! asked again; a socket whose session ended is disconnected, the others follow its rooms.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use socketioxide::SocketIo;
use socketioxide::adapter::Adapter;

use super::auth::{AuthError, SessionAuth};
use super::channels::Channels;
use super::service::handshake_headers;
use super::session::{self, Identity, log_id};
use crate::shutdown::Shutdown;

/// Periodic re-check of connected sockets' sessions.
pub struct Revalidation {
    /// `None` turns revalidation off.
    pub every: Option<Duration>,
    pub concurrency: usize,
    pub shutdown: Shutdown,
    pub(super) channels: Arc<Channels>,
}

impl Revalidation {
    /// Every `every`, re-checks each local socket's session; a socket whose session ended
    /// (logout, expiry) or now belongs to someone else is disconnected, and the others follow
    /// their session's rooms.
    pub(super) async fn run<A: Adapter>(self, io: SocketIo<A>, auth: Arc<SessionAuth>) {
        let Some(every) = self.every else { return };
        let mut ticker = tokio::time::interval(every);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = self.shutdown.draining() => return,
            }
            let checks = io.local().sockets().into_iter().filter_map(|socket| {
                let identity = socket.extensions.get::<Identity>()?;
                let credentials = auth.credentials(&handshake_headers(socket.req_parts())).ok()?;
                let auth = auth.clone();
                let channels = self.channels.clone();
                Some(async move {
                    match auth.authenticate(&credentials).await {
                        Ok(session) if session.user_id == identity.user_id => {
                            channels.follow_session(&socket, &session.rooms, &[]);
                            false
                        }
                        Ok(_) | Err(AuthError::Unauthorized) => {
                            tracing::info!(socket = %log_id(socket.id), user = %identity.user_id, "session ended: socket disconnected");
                            session::disconnect(&socket);
                            true
                        }
                        // The app is unreachable: keep the socket; the next round decides.
                        Err(AuthError::Unavailable(_)) => false,
                    }
                })
            });
            let closed = futures_util::stream::iter(checks)
                .buffer_unordered(self.concurrency.max(1))
                .filter(|closed| std::future::ready(*closed))
                .count()
                .await;
            if closed > 0 {
                tracing::info!(closed, "revalidation closed sockets whose session ended");
            }
        }
    }
}
