//! The cluster's Redis link against a real `redis-server` (skipped when none is on PATH):
//! subscribing again after a reconnect must leave the connection's replies in step.
//!   cargo test --test cluster_link

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fred::interfaces::PubsubInterface;
use fred::prelude::{Builder, ClientLike, Config};
use fred::types::RespVersion;

/// A throwaway redis-server on a free loopback port, killed on drop.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start() -> Option<Redis> {
        let port = TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let redis = Redis { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(redis)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Redis confirms each channel of an `SSUBSCRIBE` with a reply of its own. When the adapter's
/// channels were subscribed again with one command, the extra confirmations were read as the
/// replies of the commands sent next on that connection, and from then on every command got
/// the reply of an earlier one (a publish "failing" with `Cannot convert array to number`, a
/// subscriber count from another request, the last commands waiting for replies that never
/// came) until the connection was replaced.
#[tokio::test]
async fn subscribing_again_keeps_replies_in_step() {
    let Some(redis) = Redis::start() else {
        eprintln!("skipped: redis-server is not on PATH");
        return;
    };
    let mut config = Config::from_url(&format!("redis://127.0.0.1:{}", redis.port)).unwrap();
    config.version = RespVersion::RESP3;
    let client = Builder::from_config(config)
        .with_performance_config(|p| p.default_command_timeout = Duration::from_secs(2))
        .build_subscriber_client()
        .unwrap();
    client.init().await.unwrap();
    // As the adapter and the canary subscribe: one channel at a time.
    let channels: Vec<String> = ["request#/#", "request#/#uid#", "response#/#uid#", "canary#"]
        .iter()
        .map(|c| format!("sockgate-test-{c}"))
        .collect();
    for channel in &channels {
        client.ssubscribe(channel.as_str()).await.unwrap();
    }

    for round in 0..20 {
        // Publishes queued behind the re-subscription, as a busy instance's are.
        let publishes = (0..10).map(|_| client.spublish::<i64, _, _>(channels[0].as_str(), "x"));
        let (subscribed, replies) = tokio::join!(
            sockgate::cluster::subscribe_each(&client, &channels),
            futures_util::future::join_all(publishes)
        );
        subscribed.unwrap();
        for reply in replies {
            match reply {
                Ok(receivers) => assert_eq!(receivers, 1, "round {round}: a reply out of step"),
                Err(e) => panic!("round {round}: a publish got another command's reply: {e}"),
            }
        }
    }
    let _ = client.quit().await;
}
