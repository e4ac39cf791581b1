//! sockgate's own pool of app connections (issue 34, stage 2) at the wire level: a raw TCP
//! app that counts the connections sockgate opens, the requests on them, and the connections
//! sockgate closes.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the raw app saw.
#[derive(Default)]
struct Seen {
    /// Connections that carried at least one request.
    used: AtomicUsize,
    /// Of those, the ones sockgate closed.
    closed: AtomicUsize,
    /// Request paths, in arrival order.
    paths: Mutex<Vec<String>>,
}

impl Seen {
    fn used(&self) -> usize {
        self.used.load(Ordering::SeqCst)
    }

    fn closed(&self) -> usize {
        self.closed.load(Ordering::SeqCst)
    }

    fn count(&self, path: &str) -> usize {
        self.paths
            .lock()
            .unwrap()
            .iter()
            .filter(|p| *p == path)
            .count()
    }
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

/// A keep-alive HTTP/1.1 app that answers `GET`s by path:
/// `/ok`; `/slow` (after 300 ms); `/then-close` (closes right after answering, without saying
/// so); `/linger-close` (closes 100 ms after answering, as Node does after its keep-alive
/// timeout); `/hang-up` (closes without answering); `/stream` (a chunked answer whose first
/// chunk comes at once and the rest never).
async fn raw_app() -> (u16, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Seen::default());
    let app = seen.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(serve(socket, app.clone()));
        }
    });
    (port, seen)
}

async fn serve(mut socket: TcpStream, seen: Arc<Seen>) {
    let mut requests = 0;
    let mut buf = Vec::new();
    loop {
        let Some(path) = read_request(&mut socket, &mut buf).await else {
            if requests > 0 {
                seen.closed.fetch_add(1, Ordering::SeqCst);
            }
            return;
        };
        if requests == 0 {
            seen.used.fetch_add(1, Ordering::SeqCst);
        }
        requests += 1;
        seen.paths.lock().unwrap().push(path.clone());
        match path.as_str() {
            "/slow" => {
                tokio::time::sleep(Duration::from_millis(300)).await;
                socket.write_all(OK).await.unwrap();
            }
            "/then-close" => {
                let _ = socket.write_all(OK).await;
                return;
            }
            "/linger-close" => {
                let _ = socket.write_all(OK).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
                return;
            }
            "/hang-up" => return,
            "/stream" => {
                let head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n";
                socket.write_all(head.as_bytes()).await.unwrap();
                buf.clear();
            }
            _ => socket.write_all(OK).await.unwrap(),
        }
    }
}

/// The path of the next request head on `socket` (`GET`s only), `None` once it is closed.
async fn read_request(socket: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            return head.split_whitespace().nth(1).map(str::to_owned);
        }
        let mut chunk = [0u8; 4096];
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

async fn until(limit: Duration, done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

#[tokio::test]
async fn a_pooled_connection_the_app_closed_is_not_used() {
    let (app, seen) = raw_app().await;
    let sg = sockgate(app, &[]);
    assert_eq!(get(sg.port(), "/linger-close").await.status(), 200);
    // The app has closed the pooled connection by now; it must be noticed at checkout.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get(sg.port(), "/ok").await.status(), 200);
    assert_eq!(seen.used(), 2);
    assert_eq!(seen.count("/ok"), 1);
}

#[tokio::test]
async fn an_unwritten_request_is_sent_again_and_a_written_one_is_not() {
    let (app, seen) = raw_app().await;
    let sg = sockgate(app, &[]);
    // Each answer's connection closes as the next request may be on its way to it.
    for round in 0..40 {
        let resp = get(sg.port(), "/then-close").await;
        assert_eq!(resp.status(), 200, "round {round}");
    }
    assert_eq!(
        seen.count("/then-close"),
        40,
        "no request reached the app twice"
    );
    // A request the app read and then dropped is not sent again: it may have done its work.
    let resp = get(sg.port(), "/hang-up").await;
    assert_eq!(resp.status(), 502);
    assert_eq!(seen.count("/hang-up"), 1);
}

#[tokio::test]
async fn a_client_gone_mid_body_closes_its_app_connection() {
    let (app, seen) = raw_app().await;
    let sg = sockgate(app, &[]);
    let mut client = TcpStream::connect(("127.0.0.1", sg.port())).await.unwrap();
    client
        .write_all(b"GET /stream HTTP/1.1\r\nhost: app.test\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("first") {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut chunk))
            .await
            .expect("the first chunk within 5 s")
            .unwrap();
        assert!(n > 0, "closed before the first chunk");
        got.extend_from_slice(&chunk[..n]);
    }
    drop(client);
    assert!(
        until(Duration::from_secs(3), || seen.closed() == 1).await,
        "the app connection of an abandoned body was not closed"
    );
    assert_eq!(get(sg.port(), "/ok").await.status(), 200);
    assert_eq!(seen.used(), 2, "the abandoned connection was pooled");
}

#[tokio::test]
async fn beyond_the_idle_bound_connections_are_opened_then_closed() {
    let (app, seen) = raw_app().await;
    let sg = sockgate(
        app,
        &[
            ("SIDECAR_UPSTREAM__POOL_MAX_IDLE_PER_HOST", "2"),
            ("SIDECAR_UPSTREAM__POOL_IDLE_TIMEOUT_MS", "1000"),
        ],
    );
    let burst = futures_util::future::join_all((0..6).map(|_| get(sg.port(), "/slow"))).await;
    assert!(burst.iter().all(|resp| resp.status() == 200));
    assert_eq!(seen.used(), 6, "six requests at once, six connections");
    assert!(
        until(Duration::from_secs(2), || seen.closed() == 4).await,
        "the pool kept more than 2 idle: {} closed",
        seen.closed()
    );
    let pair = futures_util::future::join_all((0..2).map(|_| get(sg.port(), "/slow"))).await;
    assert!(pair.iter().all(|resp| resp.status() == 200));
    assert_eq!(seen.used(), 6, "the two idle connections were reused");
    // Idle past the timeout, with no request to notice it: closed all the same.
    assert!(
        until(Duration::from_secs(4), || seen.closed() == 6).await,
        "idle connections outlived the idle timeout: {} closed",
        seen.closed()
    );
    assert_eq!(get(sg.port(), "/ok").await.status(), 200);
    assert_eq!(seen.used(), 7);
}
