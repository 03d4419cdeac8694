//! The API's HTTP/1.1 server loop: hyper's connection driver with the limits a shared
//! gateway needs, which `axum::serve` does not let us set.
//!
//! - At most `connections_max` connections are served at once (each holds a file
//!   descriptor); one past the cap is answered `503` with `Retry-After` and closed, so a
//!   flood of idle or slow connections can neither exhaust the descriptors nor leave
//!   well-behaved clients without an answer. The refused connection lingers briefly (at
//!   most `REFUSED_LINGER`, `REFUSED_LINGERING_MAX` at once) reading what the client
//!   sends, because closing a socket that then receives the client's request resets it,
//!   and a reset can discard the `503` before the client reads it.
//! - hyper's header read timeout (it needs a timer, which `axum::serve` does not give it)
//!   closes a connection that does not send a complete request head in time, also between
//!   keep-alive requests. The body's read timeout is the handlers' (`api.rs`).
//! - Shutdown stops accepting, tells every connection to finish the request it is
//!   answering and close, waits at most `drain` for that, then drops what is left (a
//!   half-sent request holds nothing that must be kept: its statement has not started).

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::api::{Node, RETRY_AFTER_S};

/// How long accepting pauses after an error (the descriptor limit reached, say), so the
/// loop does not spin on an error that persists.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// How long a refused connection is kept open, at most, to read the client's request after
/// the `503` (see the module header).
const REFUSED_LINGER: Duration = Duration::from_millis(500);
/// Refused connections lingering at once, at most; past it a refused connection is closed
/// as soon as its `503` is written.
const REFUSED_LINGERING_MAX: usize = 256;

/// Serves `router` on `listener` until `shutdown` completes, then drains as described above.
/// Serves the API of `node` on `listener` until `shutdown` completes, then drains for at
/// most `drain` as described above. Limits are `node.config`'s, counts go to
/// `node.counters`.
pub async fn serve(listener: TcpListener, node: Arc<Node>, drain: Duration, shutdown: impl Future<Output = ()>) {
    let connections_max = node.config.connections_max;
    assert!(connections_max > 0, "the config refuses api.connections_max = 0");
    let router = crate::api::router(node.clone());
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(Duration::from_millis(node.config.header_read_timeout_ms));
    let builder = Arc::new(builder);
    let served = Arc::new(Semaphore::new(connections_max));
    let lingering = Arc::new(Semaphore::new(REFUSED_LINGERING_MAX));
    let counters = &node.counters;
    let (close_tx, close_rx) = watch::channel(());
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    if let Ok(permit) = served.clone().try_acquire_owned() {
                        counters.connections_accepted.fetch_add(1, Ordering::Relaxed);
                        let (builder, router, close, node) =
                            (builder.clone(), router.clone(), close_rx.clone(), node.clone());
                        connections.spawn(async move {
                            node.counters.connections_open.fetch_add(1, Ordering::Relaxed);
                            connection(stream, &builder, router, close).await;
                            node.counters.connections_open.fetch_sub(1, Ordering::Relaxed);
                            drop(permit);
                        });
                    } else {
                        counters.connections_refused.fetch_add(1, Ordering::Relaxed);
                        match lingering.clone().try_acquire_owned() {
                            Ok(permit) => drop(tokio::spawn(refuse_lingering(stream, permit))),
                            Err(_) => refuse(stream),
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "accepting an API connection failed; pausing");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            },
        }
    }
    drop(listener);
    drop(close_rx);
    // Every connection task watches the channel: the send wakes them to shut down.
    let _ = close_tx.send(());
    let open = connections.len();
    let drained = tokio::time::timeout(drain, async { while connections.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::info!(open = connections.len(), of = open, "dropping API connections still open after the drain time");
        connections.shutdown().await;
    }
}

/// Drives one connection; on the close signal, finishes the request being answered (if
/// any) and closes.
async fn connection(stream: TcpStream, builder: &http1::Builder, router: Router, mut close: watch::Receiver<()>) {
    let service = TowerToHyperService::new(router);
    let mut conn = std::pin::pin!(builder.serve_connection(TokioIo::new(stream), service));
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%error, "API connection ended with an error");
            }
            return;
        }
        _ = close.changed() => conn.as_mut().graceful_shutdown(),
    }
    let _ = conn.await;
}

/// The `503` a connection over the cap gets.
fn refusal() -> String {
    let body = format!("{{\"error\":\"too many connections (api.connections_max); retry in {RETRY_AFTER_S} s\"}}");
    format!(
        "HTTP/1.1 503 Service Unavailable\r\nRetry-After: {RETRY_AFTER_S}\r\nContent-Type: application/json\r\n\
         Connection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Answers a connection over the cap with `503`, ends its sending side, and reads what the
/// client sends until it closes (at most `REFUSED_LINGER`), so the answer is not lost to a
/// reset.
async fn refuse_lingering(mut stream: TcpStream, _permit: OwnedSemaphorePermit) {
    let answer = async {
        stream.write_all(refusal().as_bytes()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<(), std::io::Error>(())
    };
    let _ = tokio::time::timeout(REFUSED_LINGER, answer).await;
}

/// Answers a connection over the cap with `503` and closes it, without waiting for
/// anything (when too many refused connections linger already): the answer fits the
/// socket's send buffer, and what the client has sent so far is read and dropped first,
/// because closing a socket with unread bytes resets it and the client might lose the
/// answer.
fn refuse(stream: TcpStream) {
    let _ = stream.try_write(refusal().as_bytes());
    let mut sink = [0u8; 4096];
    while matches!(stream.try_read(&mut sink), Ok(n) if n > 0) {}
}
