//! sockgate: a sidecar that fronts an unmodified Node SSR app.
//!
//! It owns the public port, answers Socket.IO itself (authenticating sockets through the app's
//! own session route), reverse-proxies every other request to the app, and lets the app
//! publish to users over a Unix socket. [`App`] wires the parts together: [`App::build`]
//! assembles every part once and binds the listeners (so a bad setting or a taken port fails
//! before anything is served); [`App::run`] serves, waits for a signal or the supervised app's
//! exit, and drains.
//!
//! ```text
//! request ─▶ server::Router ─┬─ /socket.io ─▶ realtime::Gate (origin, admission) ─▶ sockets
//!                            └─ otherwise ──▶ proxy ─▶ upstream (the app)
//! publish socket ─▶ publish::PublishApi ─▶ realtime::Hub ─▶ rooms ─▶ sockets
//! ```

pub mod abuse;
pub mod accept;
pub mod body;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod metrics;
pub mod occupancy;
pub mod ops;
pub mod proxy;
pub mod publish;
pub mod realtime;
pub mod redis_url;
pub mod reserved;
pub mod server;
pub mod shutdown;
pub mod status;
pub mod supervisor;
pub mod telemetry;
pub mod upload;
pub mod upstream;
pub mod webhooks;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use http::uri::Authority;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::cluster::Cluster;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::ops::Ops;
use crate::proxy::Proxy;
use crate::publish::{PublishApi, PublishSocket};
use crate::realtime::{Hub, RoomRules, SessionAuth};
use crate::server::Router;
use crate::shutdown::Shutdown;
use crate::supervisor::{AppGate, Supervisor};
use crate::upload::MinRate;
use crate::upstream::Upstream;

/// sockgate, assembled and listening, not yet serving.
pub struct App {
    config: Config,
    /// The command to supervise, if any.
    command: Option<Vec<String>>,
    shutdown: Shutdown,
    /// The app's address (`upstream.url`).
    authority: Authority,
    parts: Parts,
    listeners: Listeners,
}

/// What the listeners serve, each built once and shared.
struct Parts {
    hub: Arc<Hub>,
    proxy: Proxy,
    gate: AppGate,
    ops: Ops,
    router: Arc<Router>,
    api: PublishApi,
}

/// The bound listeners: public port, publish socket, optional admin and publish TCP ports.
struct Listeners {
    public: TcpListener,
    publish: PublishSocket,
    admin: Option<TcpListener>,
    publish_tcp: Option<TcpListener>,
}

/// The listeners' tasks: the public one drains first, the local endpoints once it is done.
struct Serving {
    public: JoinHandle<()>,
    local: Vec<JoinHandle<()>>,
}

impl App {
    /// Assembles every part and binds the listeners. `command` is the app to supervise, if
    /// any; `shutdown` is what the signal handler drives.
    pub async fn build(
        config: Config,
        command: Option<Vec<String>>,
        shutdown: Shutdown,
    ) -> anyhow::Result<Self> {
        let authority = config.upstream.url.authority().clone();
        let gate = AppGate::new(command.is_none());
        let parts = Parts::assemble(&config, &authority, gate, &shutdown).await?;
        let listeners = Listeners::bind(&config).await?;
        Ok(Self {
            config,
            command,
            shutdown,
            authority,
            parts,
            listeners,
        })
    }

    /// Serves until `shutdown` drains (or the supervised app dies), then waits for in-flight
    /// work up to the drain deadline. Returns the process exit status once every listener is
    /// closed and the publish socket is removed.
    pub async fn run(self) -> anyhow::Result<i32> {
        let (config, shutdown, parts) = (&self.config, &self.shutdown, &self.parts);
        let serving = self.listeners.serve(parts, config, shutdown);
        // Run until a signal, or until the supervised app dies.
        let mut supervisor = match &self.command {
            Some(command) => {
                let supervisor =
                    Supervisor::spawn(command, &self.authority, &config.publish.socket)?;
                supervisor.open_gate_when_listening(self.authority.clone(), parts.gate.clone());
                Some(supervisor)
            }
            None => None,
        };
        let app_died = stopped(supervisor.as_mut(), shutdown).await;
        drain(parts, serving, config, shutdown).await;
        let code = match (app_died, supervisor) {
            (Some(code), _) => code,
            (None, Some(child)) => {
                child
                    .stop(config.server.drain_timeout, shutdown.aborted())
                    .await
            }
            (None, None) => 0,
        };
        tracing::info!(code, "sockgate stopped");
        Ok(code)
    }
}

impl Parts {
    async fn assemble(
        config: &Config,
        authority: &Authority,
        gate: AppGate,
        shutdown: &Shutdown,
    ) -> anyhow::Result<Self> {
        let metrics = Arc::new(Metrics::new());
        let upstream = Upstream::new(&config.upstream, authority.clone());
        let min_body_rate = MinRate::from(&config.proxy);
        let proxy = Proxy::new(
            upstream.clone(),
            config.proxy.trust_forwarded,
            shutdown.clone(),
            metrics.clone(),
            min_body_rate,
        );
        let auth = Arc::new(SessionAuth::new(
            &config.auth,
            RoomRules::new(config),
            upstream.clone(),
            metrics.clone(),
        ));
        // The publish API's kicks make the session check forget the kicked user.
        let kicks = auth.clone();
        let cluster = connect_cluster(config, &metrics).await?;
        let realtime =
            realtime::start(config, cluster, auth, metrics.clone(), shutdown.clone()).await?;
        let hub = realtime.hub.clone();
        let ops = Ops::new(
            metrics.clone(),
            hub.clone(),
            shutdown.clone(),
            gate.clone(),
            upstream,
            config.upstream.ready_path.clone(),
        );
        let router = Arc::new(Router {
            realtime: realtime.gate,
            proxy: proxy.clone(),
            gate: gate.clone(),
            health_path: config.server.health_path.clone(),
            ops: ops.clone(),
            metrics: metrics.clone(),
        });
        let api = PublishApi::new(
            hub.clone(),
            ops.clone(),
            kicks,
            config.publish.max_body_bytes,
            config.publish.max_batch,
            config.publish.body_timeout,
            metrics,
        );
        Ok(Self {
            hub,
            proxy,
            gate,
            ops,
            router,
            api,
        })
    }
}

/// The Redis connection of cluster mode (`cluster.redis_url`), or `None` on one instance.
async fn connect_cluster(
    config: &Config,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Option<Cluster>> {
    let Some(url) = &config.cluster.redis_url else {
        return Ok(None);
    };
    if config
        .realtime
        .transports
        .contains(&config::Transport::Polling)
    {
        tracing::warn!(
            "cluster mode with HTTP long-polling enabled: polling needs sticky sessions \
             at the load balancer; set realtime.transports = [\"websocket\"] otherwise"
        );
    }
    let cluster = cluster::connect(
        url,
        config.cluster.tls_ca_file.as_deref(),
        config.cluster.request_timeout,
        config.cluster.pubsub,
        metrics.clone(),
    )
    .await?;
    Ok(Some(cluster))
}

impl Listeners {
    /// Binds the publish socket, the admin and publish TCP ports when configured, and the
    /// public port last: once it accepts, everything else is bound (what tests, scripts and
    /// platform health checks wait for).
    async fn bind(config: &Config) -> anyhow::Result<Self> {
        let publish =
            PublishSocket::bind(&config.publish.socket, config.publish.socket_mode).await?;
        let admin = bind_optional(
            config.admin.listen,
            "admin.listen",
            "admin endpoints: /metrics /livez /readyz",
        )
        .await?;
        let publish_tcp = bind_optional(
            config.publish.tcp_listen,
            "publish.tcp_listen",
            "publish API also on loopback TCP (bearer token required)",
        )
        .await?;
        let addr = config.server.listen_addr();
        let public = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} (server.host/server.port)"))?;
        tracing::info!(
            listen = %public.local_addr().unwrap_or(addr),
            upstream = %config.upstream.url,
            socketio = %config.realtime.path,
            publish_socket = %publish.path().display(),
            "sockgate ready"
        );
        Ok(Self {
            public,
            publish,
            admin,
            publish_tcp,
        })
    }

    /// Starts serving on every listener.
    fn serve(self, parts: &Parts, config: &Config, shutdown: &Shutdown) -> Serving {
        let mut local = Vec::new();
        if let Some(admin) = self.admin {
            local.push(tokio::spawn(
                parts.ops.clone().serve_admin(admin, shutdown.clone()),
            ));
        }
        if let Some(tcp) = self.publish_tcp {
            local.push(tokio::spawn(publish::serve_tcp(
                tcp,
                parts.api.requiring_token(&config.publish.token),
                shutdown.clone(),
            )));
        }
        local.push(tokio::spawn(
            self.publish.serve(parts.api.clone(), shutdown.clone()),
        ));
        let public = tokio::spawn({
            let shutdown = shutdown.clone();
            let router = parts.router.clone();
            let server_config = config.server.clone();
            let listener = self.public;
            async move { server::serve(listener, router, &server_config, shutdown).await }
        });
        Serving { public, local }
    }
}

/// Binds an optional TCP listener (`listen` empty: not configured) and says what it serves.
async fn bind_optional(
    listen: Option<SocketAddr>,
    setting: &str,
    serves: &str,
) -> anyhow::Result<Option<TcpListener>> {
    let Some(listen) = listen else {
        return Ok(None);
    };
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} ({setting})"))?;
    tracing::info!(listen = %listen, "{serves}");
    Ok(Some(listener))
}

/// Waits for the drain to begin: a signal, or the supervised app exiting on its own (whose
/// status is returned, and which begins the drain).
async fn stopped(supervisor: Option<&mut Supervisor>, shutdown: &Shutdown) -> Option<i32> {
    match supervisor {
        Some(child) => tokio::select! {
            code = child.exited() => {
                tracing::error!(code, "the app exited on its own; sockgate stops so the platform restarts both");
                shutdown.begin_drain();
                Some(code)
            }
            _ = shutdown.draining() => None,
        },
        None => {
            shutdown.draining().await;
            None
        }
    }
}

/// Drains: the public side stops, sockets are told to go, in-flight work gets the deadline;
/// then the local endpoints close and the publish socket is removed.
async fn drain(parts: &Parts, serving: Serving, config: &Config, shutdown: &Shutdown) {
    let (polling, websocket) = parts.hub.sockets_by_transport();
    tracing::info!(
        sockets = polling + websocket,
        tunnels = parts.proxy.tunnels().open_count(),
        drain_timeout_ms = config.server.drain_timeout.as_millis() as u64,
        "draining: no new connections; closing sockets so clients reconnect elsewhere"
    );
    let deadline = {
        let shutdown = shutdown.clone();
        let drain = config.server.drain_timeout;
        tokio::spawn(async move {
            tokio::time::sleep(drain).await;
            shutdown.force();
        })
    };
    // Closing waits for each socket's writer, which a client that stopped reading holds
    // forever: the deadline (or a second signal) cuts it; the process exiting closes the rest.
    tokio::select! {
        _ = parts.hub.close_all() => {}
        _ = shutdown.forced() => tracing::warn!("drain deadline passed: sockets still closing are cut"),
    }
    shutdown.sockets_are_closed();
    let _ = serving.public.await;
    parts.proxy.tunnels().closed().await;
    shutdown.finish();
    for local in serving.local {
        let _ = local.await;
    }
    deadline.abort();
}
