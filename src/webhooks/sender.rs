//! The webhook queue and its one sender: events wait in a bounded [`Outbox`] (the oldest is
//! dropped when it is full, counted, logged once per episode); the [`Sender`] takes up to
//! `max_batch` after a short linger, POSTs them as `{"events":[…]}` (signed when a secret is
//! set) and retries the same body with exponential backoff on 5xx, 429, timeouts and
//! connection errors, `max_attempts` tries in all. One batch is in flight at a time.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Notify;

use super::{Event, signature};
use crate::metrics::Metrics;

/// Longest wait between two tries of a batch.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Most of a receiver's answer read (and thrown away) so its connection can be reused.
const MAX_ANSWER: usize = 64 * 1024;
/// The signature header.
pub const SIGNATURE: &str = "x-sockgate-signature";

/// Events waiting to be sent, at most `max`.
#[derive(Clone)]
pub struct Outbox(Arc<Inner>);

struct Inner {
    state: Mutex<State>,
    ready: Notify,
    max: usize,
    metrics: Arc<Metrics>,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Event>,
    /// Events are being dropped, and that was logged; cleared by the next delivered batch.
    dropping: bool,
}

impl Outbox {
    pub fn new(max: usize, metrics: Arc<Metrics>) -> Self {
        Self(Arc::new(Inner {
            state: Mutex::default(),
            ready: Notify::new(),
            max: max.max(1),
            metrics,
        }))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `event`, dropping the oldest waiting one when full.
    pub fn push(&self, event: Event) {
        let mut state = self.state();
        if state.queue.len() >= self.0.max {
            state.queue.pop_front();
            self.0.metrics.webhook_dropped();
            if !state.dropping {
                state.dropping = true;
                tracing::warn!(
                    max_queue = self.0.max,
                    "webhook queue full (receiver down or slow): dropping the oldest events \
                     until a batch is delivered again (sockgate_webhook_events_dropped_total)"
                );
            }
        }
        state.queue.push_back(event);
        self.0.metrics.webhook_queue(state.queue.len());
        drop(state);
        self.0.ready.notify_one();
    }

    fn len(&self) -> usize {
        self.state().queue.len()
    }

    /// Up to `max` events from the front.
    fn take(&self, max: usize) -> Vec<Event> {
        let mut state = self.state();
        let n = state.queue.len().min(max);
        let batch = state.queue.drain(..n).collect();
        self.0.metrics.webhook_queue(state.queue.len());
        batch
    }

    fn delivered(&self) {
        self.state().dropping = false;
    }

    async fn wait(&self) {
        while self.len() == 0 {
            self.0.ready.notified().await;
        }
    }
}

/// How one try of a batch ended.
#[derive(Debug, PartialEq)]
enum Outcome {
    Delivered,
    /// Worth another try: 5xx, 429, timeout, connection error.
    Retry(String),
    /// Refused for good (another 4xx, or a 3xx): not retried.
    Refused(String),
}

fn judge(status: StatusCode) -> Outcome {
    if status.is_success() {
        Outcome::Delivered
    } else if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        Outcome::Retry(format!("answered {status}"))
    } else {
        Outcome::Refused(format!("answered {status}"))
    }
}

/// Wait before try `attempt + 1` (`attempt` ≥ 1 tries made): `base · 2^(attempt-1)`, capped.
fn backoff(base: Duration, attempt: u32) -> Duration {
    base.saturating_mul(1u32 << (attempt - 1).min(16))
        .min(MAX_BACKOFF)
}

pub struct Sender {
    pub outbox: Outbox,
    pub target: Uri,
    pub secret: Option<Vec<u8>>,
    pub max_batch: usize,
    pub linger: Duration,
    pub max_attempts: u32,
    pub retry_base: Duration,
    pub timeout: Duration,
    pub metrics: Arc<Metrics>,
}

impl Sender {
    pub async fn run(self) {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(self.timeout));
        connector.set_nodelay(true);
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
        loop {
            self.outbox.wait().await;
            if self.outbox.len() < self.max_batch {
                tokio::time::sleep(self.linger).await;
            }
            let batch = self.outbox.take(self.max_batch.max(1));
            if batch.is_empty() {
                continue;
            }
            self.deliver(&client, &batch).await;
        }
    }

    async fn deliver(&self, client: &Client<HttpConnector, Full<Bytes>>, batch: &[Event]) {
        let body: Bytes = match serde_json::to_vec(&serde_json::json!({ "events": batch })) {
            Ok(body) => body.into(),
            Err(e) => {
                tracing::error!("webhook batch not encoded: {e}");
                self.metrics.webhook_failed(batch.len());
                return;
            }
        };
        let signature = self.secret.as_deref().map(|s| signature::sign(s, &body));
        let mut attempt = 0;
        loop {
            attempt += 1;
            let outcome = self.post(client, body.clone(), signature.as_deref()).await;
            match outcome {
                Outcome::Delivered => {
                    self.metrics.webhook_delivered(batch.len());
                    self.outbox.delivered();
                    return;
                }
                Outcome::Retry(why) if attempt < self.max_attempts => {
                    let wait = backoff(self.retry_base, attempt);
                    tracing::debug!(
                        attempt,
                        ?wait,
                        "webhook batch not delivered ({why}): retrying"
                    );
                    tokio::time::sleep(wait).await;
                }
                Outcome::Retry(why) | Outcome::Refused(why) => {
                    tracing::warn!(
                        events = batch.len(),
                        attempts = attempt,
                        url = %self.target,
                        "webhook batch given up ({why})"
                    );
                    self.metrics.webhook_failed(batch.len());
                    return;
                }
            }
        }
    }

    async fn post(
        &self,
        client: &Client<HttpConnector, Full<Bytes>>,
        body: Bytes,
        signature: Option<&str>,
    ) -> Outcome {
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(self.target.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::USER_AGENT, "sockgate-webhooks");
        if let Some(signature) = signature {
            req = req.header(SIGNATURE, signature);
        }
        let req = match req.body(Full::new(body)) {
            Ok(req) => req,
            Err(e) => return Outcome::Refused(format!("request not built: {e}")),
        };
        let exchange = async {
            let resp = client
                .request(req)
                .await
                .map_err(|e| format!("unreachable: {e}"))?;
            let status = resp.status();
            // Read (bounded) so the connection goes back to the pool; its content is unused.
            let _ = Limited::new(resp.into_body(), MAX_ANSWER).collect().await;
            Ok::<_, String>(status)
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(status)) => judge(status),
            Ok(Err(why)) => Outcome::Retry(why),
            Err(_) => Outcome::Retry(format!("no answer within {:?}", self.timeout)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: u32) -> Event {
        Event {
            id: format!("i-{n}"),
            name: super::super::ONLINE,
            user_id: Some(format!("u{n}")),
            room: None,
            at: 0,
        }
    }

    #[test]
    fn a_full_outbox_drops_the_oldest_and_counts_it() {
        let metrics = Arc::new(Metrics::new());
        let outbox = Outbox::new(3, metrics.clone());
        for n in 0..5 {
            outbox.push(event(n));
        }
        let ids: Vec<_> = outbox.take(10).into_iter().map(|e| e.id).collect();
        assert_eq!(ids, ["i-2", "i-3", "i-4"]);
        let text = metrics.render();
        assert!(
            text.contains("sockgate_webhook_events_dropped_total 2"),
            "{text}"
        );
    }

    #[test]
    fn only_server_errors_and_429_are_retried() {
        assert_eq!(judge(StatusCode::NO_CONTENT), Outcome::Delivered);
        assert!(matches!(judge(StatusCode::BAD_GATEWAY), Outcome::Retry(_)));
        assert!(matches!(
            judge(StatusCode::TOO_MANY_REQUESTS),
            Outcome::Retry(_)
        ));
        assert!(matches!(judge(StatusCode::FORBIDDEN), Outcome::Refused(_)));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let base = Duration::from_millis(500);
        assert_eq!(backoff(base, 1), Duration::from_millis(500));
        assert_eq!(backoff(base, 3), Duration::from_secs(2));
        assert_eq!(backoff(base, 40), MAX_BACKOFF);
    }
}
