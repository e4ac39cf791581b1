//! The publish API, served over HTTP/1.1 on a Unix domain socket: only processes on this
//! machine that may open the socket file can publish; nothing on the public port can. For
//! apps that cannot speak to a Unix socket, the same API can also listen on a loopback TCP
//! port, where every request must carry a bearer token.

mod api;
mod message;
mod socket_dir;

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, UnixListener, UnixStream};

use crate::accept::{self, Until};
use crate::shutdown::Shutdown;

pub use api::PublishApi;
pub use message::{InvalidField, Publish, parse_batch, parse_publish};
pub use socket_dir::BindError;

/// The bound socket; its file is removed when this is dropped.
pub struct PublishSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl PublishSocket {
    /// Binds `path` with file mode `mode`, in a directory only we can change (created if
    /// missing, see `socket_dir`). A stale file of ours left by a crashed run is replaced; a
    /// socket another live process listens on is not.
    pub async fn bind(path: &Path, mode: u32) -> Result<Self, BindError> {
        let io_err = |e| BindError::Io(path.to_owned(), e);
        socket_dir::prepare(path, mode)?;
        match std::fs::symlink_metadata(path) {
            Ok(meta) if !meta.file_type().is_socket() => {
                return Err(BindError::NotASocket(path.to_owned()));
            }
            Ok(_) => match UnixStream::connect(path).await {
                Ok(_) => return Err(BindError::InUse(path.to_owned())),
                Err(_) => {
                    tracing::info!(path = %path.display(), "replacing stale publish socket");
                    std::fs::remove_file(path).map_err(io_err)?;
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(e)),
        }
        let listener = UnixListener::bind(path).map_err(io_err)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io_err)?;
        Ok(Self {
            listener,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves the API until the public side has drained (apps may still publish, and probes
    /// read "draining", meanwhile), then lets open requests finish.
    pub async fn serve(self, api: PublishApi, shutdown: Shutdown) {
        serve_api(&self.listener, api, shutdown).await;
    }
}

/// Serves the API on a loopback TCP port; `api` must require a token.
pub async fn serve_tcp(listener: TcpListener, api: PublishApi, shutdown: Shutdown) {
    serve_api(&listener, api, shutdown).await;
}

/// Serves HTTP/1.1 on each connection until the public side has drained; open requests then
/// finish (or are cut at the drain deadline).
async fn serve_api<L: accept::Listener>(listener: L, api: PublishApi, shutdown: Shutdown) {
    let api = Arc::new(api);
    let accepting = accept::serve(
        listener,
        |e| tracing::warn!("publish API accept failed: {e}"),
        Until::Finished,
        &shutdown,
        |stream, _peer, drain| {
            let api = api.clone();
            let service = hyper::service::service_fn(move |req| {
                let api = api.clone();
                async move { Ok::<_, std::convert::Infallible>(api.handle(req).await) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(30))
                .serve_connection(TokioIo::new(stream), service);
            Some(async move {
                if let Err(e) = drain.serve(conn).await {
                    tracing::debug!("publish connection ended: {e}");
                }
            })
        },
    );
    accepting.await;
}

impl Drop for PublishSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
