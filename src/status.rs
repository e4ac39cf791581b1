//! The status page: a recent history of sockets and deliveries, sampled in sockgate itself so
//! someone without Prometheus can still see the last minutes (`GET /` → `status.html`, which
//! reads `GET /status.json`). Served where the other operational endpoints are.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::metrics::Metrics;
use crate::realtime::Hub;

/// One sample every 2 s, kept 10 minutes: 300 samples of 24 bytes.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);
const SAMPLES_KEPT: usize = 300;

/// The page itself: one file, no external assets.
pub const PAGE: &str = include_str!("status.html");

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Open sockets on this instance.
    pub sockets: usize,
    /// Messages handed to sockets since start (the page plots the rate).
    pub deliveries: u64,
}

/// The ring of samples, filled by [`StatusHistory::run`].
#[derive(Default, Clone)]
pub struct StatusHistory {
    samples: Arc<Mutex<VecDeque<Sample>>>,
}

impl StatusHistory {
    pub fn samples(&self) -> Vec<Sample> {
        self.lock().iter().copied().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Sample>> {
        self.samples.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, sample: Sample) {
        let mut samples = self.lock();
        if samples.len() == SAMPLES_KEPT {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// Samples now and then every [`SAMPLE_EVERY`] for as long as sockgate runs.
    pub async fn run(self, hub: Arc<Hub>, metrics: Arc<Metrics>) {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            let (polling, websocket) = hub.sockets_by_transport();
            let at_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            self.record(Sample {
                at_ms,
                sockets: polling + websocket,
                deliveries: metrics.deliveries_total(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_newest_samples() {
        let history = StatusHistory::default();
        for i in 0..(SAMPLES_KEPT as u64 + 5) {
            history.record(Sample {
                at_ms: i,
                sockets: 0,
                deliveries: i,
            });
        }
        let samples = history.samples();
        assert_eq!(samples.len(), SAMPLES_KEPT);
        assert_eq!(samples[0].at_ms, 5);
        assert_eq!(samples[SAMPLES_KEPT - 1].at_ms, SAMPLES_KEPT as u64 + 4);
    }
}
