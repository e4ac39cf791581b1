//! Logging setup: `tracing` with an env filter (`RUST_LOG` wins over `log.filter`), as text
//! for people or JSON lines for log pipelines.
//!
//! The HTTP/2 library warns once per offending frame (an unsolicited PING ack, ...): a peer
//! could write the log for us. Those events never reach the output; [`AbuseLayer`] turns them
//! into one report of the connection being polled (`abuse`).

use std::io::IsTerminal;

use tracing::{Level, Metadata, Subscriber};
use tracing_subscriber::filter::{EnvFilter, FilterExt, LevelFilter, Targets, filter_fn};
use tracing_subscriber::layer::{Filter, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, fmt};

use crate::abuse::AbuseLayer;
use crate::config::{LogConfig, LogFormat};

/// Where the HTTP/2 library logs what a peer did wrong.
const H2: &str = "h2";

pub fn init(config: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let output = fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let output = match config.format {
        LogFormat::Json => output.json().flatten_event(true).boxed(),
        LogFormat::Text => output.boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(output.with_filter(output_filter(filter)))
        .with(AbuseLayer.with_filter(Targets::new().with_target(H2, Level::WARN)))
        .try_init();
}

/// What reaches the output: what `filter` passes, but the peer warnings.
///
/// The function filter says it may pass any level: without a hint, the pair had none, so the
/// subscriber's most verbose level (and the `log` crate's, which tungstenite logs through) was
/// TRACE whatever `filter` said, and every `log::trace!` on the WebSocket write path went
/// through the subscriber to be refused there (BENCHMARKS.md, issue 32 stage 2).
fn output_filter<S>(filter: EnvFilter) -> impl Filter<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    filter.and(filter_fn(|meta| !peer_warning(meta)).with_max_level_hint(LevelFilter::TRACE))
}

/// An HTTP/2 library warning: about what the peer sent, so the peer decides how many.
fn peer_warning(meta: &Metadata<'_>) -> bool {
    let target = meta.target();
    *meta.level() == Level::WARN
        && target
            .strip_prefix(H2)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::Registry;

    use super::*;

    /// The output's level is the env filter's, so what it refuses is not even looked at.
    #[test]
    fn the_output_filter_is_as_verbose_as_the_env_filter() {
        for (directives, level) in [
            ("info", LevelFilter::INFO),
            ("warn,h2=error", LevelFilter::WARN),
        ] {
            let filter = output_filter::<Registry>(EnvFilter::new(directives));
            assert_eq!(filter.max_level_hint(), Some(level), "{directives}");
        }
    }
}
