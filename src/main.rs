//! The `sockgate` binary: parse flags, load configuration, start logging, run until a signal.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use sockgate::config::{Config, LogFormat, Overrides, Runtime};
use sockgate::shutdown::{Shutdown, termination_signal};

/// sockgate fronts your Node app: it answers Socket.IO itself under /socket.io/, proxies every
/// other request to the app, and lets the app publish to users over a Unix socket.
///
/// Configuration, lowest to highest precedence: built-in defaults, sidecar.toml (or --config),
/// SIDECAR_* environment variables (nested keys joined by "__", e.g. SIDECAR_UPSTREAM__URL),
/// bare PORT, then these flags. `sockgate --print-config` shows the result.
#[derive(Debug, Parser)]
#[command(name = "sockgate", version, about, long_about)]
struct Cli {
    /// Configuration file to read instead of ./sidecar.toml (which is optional).
    #[arg(short, long, value_name = "PATH")]
    config: Option<PathBuf>,

    /// Address of the public listener (server.host), e.g. 0.0.0.0 or 127.0.0.1.
    #[arg(long, value_name = "IP")]
    host: Option<IpAddr>,

    /// Port of the public listener (server.port); overrides PORT and SIDECAR_SERVER__PORT.
    #[arg(short, long, value_name = "PORT")]
    port: Option<u16>,

    /// URL of the Node app (upstream.url), e.g. http://127.0.0.1:4321.
    #[arg(short, long, value_name = "URL")]
    upstream: Option<String>,

    /// Path of the Unix socket the app publishes on (publish.socket).
    #[arg(long, value_name = "PATH")]
    publish_socket: Option<PathBuf>,

    /// Log format (log.format): text for people, json for log pipelines.
    #[arg(long, value_name = "FORMAT", value_parser = parse_format)]
    log_format: Option<LogFormat>,

    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,

    /// Supervisor mode: the app command after `--` is started with HOST=127.0.0.1 and
    /// PORT=<upstream port>; sockgate waits for it to listen, stops it on SIGTERM after
    /// draining, and exits with its status (or non-zero if it dies on its own).
    #[arg(last = true, value_name = "APP COMMAND")]
    app: Vec<String>,
}

fn parse_format(text: &str) -> Result<LogFormat, String> {
    match text {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        other => Err(format!("`{other}` is not a log format: use text or json")),
    }
}

/// The runtime everything runs on (`server.runtime`).
fn build_runtime(runtime: Runtime) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = match runtime {
        Runtime::Multi => tokio::runtime::Builder::new_multi_thread(),
        Runtime::Single => tokio::runtime::Builder::new_current_thread(),
    };
    builder.enable_all().build()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let overrides = Overrides {
        host: cli.host,
        port: cli.port,
        upstream_url: cli.upstream,
        publish_socket: cli.publish_socket,
        log_format: cli.log_format,
    };
    let config = match Config::load(cli.config.as_deref(), &overrides) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("sockgate: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.print_config {
        print!("{}", config.to_toml());
        return ExitCode::SUCCESS;
    }
    sockgate::telemetry::init(&config.log);
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }

    let shape = config.server.runtime.resolve();
    let runtime = match build_runtime(shape) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sockgate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::debug!(runtime = ?shape, "async runtime (server.runtime)");
    runtime.block_on(async {
        let shutdown = Shutdown::new();
        tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                let signal = termination_signal().await;
                tracing::info!("{signal} received: draining");
                shutdown.begin_drain();
                let again = termination_signal().await;
                tracing::warn!("{again} received again: stopping now");
                shutdown.abort();
            }
        });
        let app = (!cli.app.is_empty()).then_some(cli.app);
        let run = async {
            sockgate::App::build(config, app, shutdown)
                .await?
                .run()
                .await
        };
        match run.await {
            Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
            Err(e) => {
                tracing::error!("{e:#}");
                eprintln!("sockgate: {e:#}");
                ExitCode::FAILURE
            }
        }
    })
}
