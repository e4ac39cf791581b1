//! sockgate: a sidecar that fronts an unmodified Node SSR app.
//!
//! It owns the public port, answers Socket.IO itself (authenticating sockets through the app's
//! own session route), reverse-proxies every other request to the app, and lets the app
//! publish to users over a Unix socket. [`run`] wires the parts together:
//!
//! ```text
//! request ─▶ server::Router ─┬─ /socket.io ─▶ realtime (origin, auth) ─▶ sockets
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

use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::config::{Config, ms};
use crate::metrics::Metrics;
use crate::ops::Ops;
use crate::proxy::Proxy;
use crate::publish::{PublishApi, PublishSocket};
use crate::realtime::{OriginPolicy, RoomRules, SessionAuth};
use crate::server::Router;
use crate::shutdown::Shutdown;
use crate::supervisor::{AppGate, Supervisor};
use crate::upstream::Upstream;

/// Runs sockgate until `shutdown` drains (or the supervised app dies), then waits for
/// in-flight work up to the drain deadline. `app` is the command to supervise, if any.
/// Returns the process exit status once every listener is closed and the publish socket is
/// removed.
pub async fn run(
    config: Config,
    app: Option<Vec<String>>,
    shutdown: Shutdown,
) -> anyhow::Result<i32> {
    let authority: http::uri::Authority = config
        .upstream_authority()
        .parse()
        .context("upstream.url has no host:port")?;
    // Assemble: every part is built once, here, and shared.
    let metrics = Arc::new(Metrics::new());
    let upstream = Upstream::new(&config.upstream, authority.clone());
    let min_body_rate = upload::MinRate::from(&config.proxy);
    let proxy = Proxy::new(
        upstream.clone(),
        config.proxy.trust_forwarded,
        shutdown.clone(),
        metrics.clone(),
        min_body_rate,
    );
    let auth = Arc::new(SessionAuth::new(
        &config.auth,
        RoomRules::new(&config),
        upstream.clone(),
        metrics.clone(),
    ));
    // The publish API's kicks make the session check forget the kicked user.
    let kicks = auth.clone();
    let cluster = match config.cluster.redis_url.as_str() {
        "" => None,
        url => {
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
            Some(
                cluster::connect(
                    url,
                    &config.cluster.tls_ca_file,
                    ms(config.cluster.request_timeout_ms),
                    metrics.clone(),
                )
                .await?,
            )
        }
    };
    let realtime =
        realtime::start(&config, cluster, auth, metrics.clone(), shutdown.clone()).await?;
    let hub = realtime.hub.clone();
    let gate = AppGate::new(app.is_none());
    let ops = Ops::new(
        metrics.clone(),
        hub.clone(),
        shutdown.clone(),
        gate.clone(),
        upstream.clone(),
        config
            .upstream
            .ready_path
            .parse()
            .context("upstream.ready_path is not a path")?,
    );
    let router = Arc::new(Router {
        realtime_path: config.realtime.path.clone(),
        origin: OriginPolicy::new(
            &config.realtime.allowed_origins,
            config.proxy.trust_forwarded,
        ),
        realtime: realtime.service,
        open_sockets: realtime.open,
        max_connections: config.realtime.max_connections,
        proxy: proxy.clone(),
        gate: gate.clone(),
        health_path: Some(config.server.health_path.clone()).filter(|p| !p.is_empty()),
        ops: ops.clone(),
        metrics: metrics.clone(),
        trust_forwarded: config.proxy.trust_forwarded,
        admission: realtime.admission,
        min_body_rate,
    });

    // Listen: public port, publish socket, optional admin port.
    let addr = config.server.listen_addr();
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (server.host/server.port)"))?;
    let publish_socket = PublishSocket::bind(&config.publish.socket, config.publish.mode()).await?;
    tracing::info!(
        listen = %listener.local_addr().unwrap_or(addr),
        upstream = %config.upstream.url,
        socketio = %config.realtime.path,
        publish_socket = %publish_socket.path().display(),
        "sockgate ready"
    );

    if !config.admin.listen.is_empty() {
        let admin = TcpListener::bind(&config.admin.listen)
            .await
            .with_context(|| format!("cannot listen on {} (admin.listen)", config.admin.listen))?;
        tracing::info!(listen = %config.admin.listen, "admin endpoints: /metrics /livez /readyz");
        tokio::spawn(ops.clone().serve_admin(admin, shutdown.clone()));
    }
    let api = PublishApi::new(
        hub.clone(),
        ops,
        kicks,
        config.publish.max_body_bytes,
        config.publish.max_batch,
        ms(config.publish.body_timeout_ms),
        metrics.clone(),
    );
    if !config.publish.tcp_listen.is_empty() {
        let tcp = TcpListener::bind(&config.publish.tcp_listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {} (publish.tcp_listen)",
                    config.publish.tcp_listen
                )
            })?;
        tracing::info!(listen = %config.publish.tcp_listen, "publish API also on loopback TCP (bearer token required)");
        tokio::spawn(publish::serve_tcp(
            tcp,
            api.requiring_token(&config.publish.token),
            shutdown.clone(),
        ));
    }
    let publishing = tokio::spawn(publish_socket.serve(api, shutdown.clone()));
    let serving = tokio::spawn({
        let shutdown = shutdown.clone();
        let server_config = config.server.clone();
        async move { server::serve(listener, router, &server_config, shutdown).await }
    });

    // Run until a signal, or until the supervised app dies.
    let mut supervisor = match app {
        Some(command) => {
            let supervisor = Supervisor::spawn(&command, &authority, &config.publish.socket)?;
            supervisor.open_gate_when_listening(authority.clone(), gate);
            Some(supervisor)
        }
        None => None,
    };
    let app_died = match supervisor.as_mut() {
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
    };
    // Drain: the public side stops, sockets are told to go, in-flight work gets the deadline.
    let (polling, websocket) = hub.sockets_by_transport();
    tracing::info!(
        sockets = polling + websocket,
        tunnels = proxy.tunnels().open_count(),
        drain_timeout_ms = config.server.drain_timeout_ms,
        "draining: no new connections; closing sockets so clients reconnect elsewhere"
    );
    let deadline = {
        let shutdown = shutdown.clone();
        let drain = ms(config.server.drain_timeout_ms);
        tokio::spawn(async move {
            tokio::time::sleep(drain).await;
            shutdown.force();
        })
    };
    // Closing waits for each socket's writer, which a client that stopped reading holds
    // forever: the deadline (or a second signal) cuts it; the process exiting closes the rest.
    tokio::select! {
        _ = hub.close_all() => {}
        _ = shutdown.forced() => tracing::warn!("drain deadline passed: sockets still closing are cut"),
    }
    let _ = serving.await;
    proxy.tunnels().closed().await;
    shutdown.finish();
    let _ = publishing.await;
    deadline.abort();
    let code = match (app_died, supervisor) {
        (Some(code), _) => code,
        (None, Some(child)) => {
            child
                .stop(ms(config.server.drain_timeout_ms), shutdown.aborted())
                .await
        }
        (None, None) => 0,
    };
    tracing::info!(code, "sockgate stopped");
    Ok(code)
}
