//! The HTTP/1 server loop: every connection is watched so that none can hold a descriptor
//! without doing work. A connection must send a whole request header within
//! `header_read_timeout` of its first byte (or of connecting), may stay idle between requests
//! for `idle_timeout`, and at `max_connections` the longest idle one is closed to make room for
//! a new one (when every connection is busy, new ones wait in the listen backlog). A request
//! counts as busy until its response body is written, so long responses (event streams) are
//! never cut.
//!
//! hyper's own `header_read_timeout` is not used: it also runs while a keep-alive connection
//! waits for its next request, which would make the idle timeout the header timeout.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tower::ServiceExt;

use crate::config::LimitsConfig;

/// The connection limits of one server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

impl ConnectionLimits {
    pub fn from_config(limits: &LimitsConfig) -> Self {
        Self {
            header_read_timeout: Duration::from_millis(limits.header_read_timeout_ms.max(1)),
            idle_timeout: Duration::from_secs(limits.idle_timeout_s.max(1)),
            max_connections: limits
                .max_connections
                .unwrap_or_else(default_max_connections)
                .max(1),
        }
    }
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self::from_config(&LimitsConfig::default())
    }
}

/// Half the process's open-file limit: the other half stays for the database, agent calls,
/// webhooks and files.
pub fn default_max_connections() -> usize {
    match open_file_limit() {
        Some(n) => usize::try_from(n / 2)
            .unwrap_or(usize::MAX)
            .clamp(16, 1 << 16),
        None => 1024,
    }
}

#[cfg(unix)]
fn open_file_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given, which lives for the call.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    (rc == 0 && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

#[cfg(not(unix))]
fn open_file_limit() -> Option<u64> {
    None
}

/// "No time": no request header being read.
const NONE: u64 = u64::MAX;

/// What the server knows of one connection. Every change happens while the connection's own
/// task polls it, so the task's checks see a consistent state.
struct Conn {
    /// Requests being answered; a response counts until its body is written.
    in_flight: AtomicUsize,
    /// Server clock (ms) when the connection last had nothing in flight.
    idle_since: AtomicU64,
    /// Server clock (ms) of the first byte of the request header being read, or [`NONE`].
    head_since: AtomicU64,
    /// Asks the connection's task to drop it (to make room for a new one).
    close: Notify,
}

impl Conn {
    /// Since when the connection has done nothing useful, when nothing is in flight.
    fn quiet_since(&self) -> Option<u64> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        match self.head_since.load(Ordering::Acquire) {
            NONE => Some(self.idle_since.load(Ordering::Acquire)),
            head => Some(head),
        }
    }

    /// Why the connection must be closed now, if it must.
    fn expired(&self, now: u64, limits: &ConnectionLimits) -> Option<&'static str> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let head = self.head_since.load(Ordering::Acquire);
        if head != NONE {
            return (now.saturating_sub(head) >= millis(limits.header_read_timeout))
                .then_some("request header not received in time");
        }
        let idle = self.idle_since.load(Ordering::Acquire);
        (now.saturating_sub(idle) >= millis(limits.idle_timeout)).then_some("idle")
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

struct Server {
    epoch: Instant,
    limits: ConnectionLimits,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    next_id: AtomicU64,
    /// Signalled when a connection ends or goes idle (room may be made).
    freed: Notify,
}

impl Server {
    fn now(&self) -> u64 {
        millis(self.epoch.elapsed())
    }

    fn conns(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        self.conns.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Closes the connection idle the longest; `false` when none is idle.
    fn close_idlest(&self) -> bool {
        let mut conns = self.conns();
        let victim = conns
            .iter()
            .filter_map(|(id, c)| c.quiet_since().map(|since| (since, *id)))
            .min()
            .map(|(_, id)| id);
        match victim.and_then(|id| conns.remove(&id)) {
            Some(conn) => {
                conn.close.notify_one();
                true
            }
            None => false,
        }
    }
}

/// Counts a request from its dispatch until its response body is dropped.
struct InFlight {
    conn: Arc<Conn>,
    server: Arc<Server>,
}

impl InFlight {
    fn begin(conn: &Arc<Conn>, server: &Arc<Server>) -> Self {
        conn.in_flight.fetch_add(1, Ordering::AcqRel);
        conn.head_since.store(NONE, Ordering::Release);
        Self {
            conn: conn.clone(),
            server: server.clone(),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.conn.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.conn
                .idle_since
                .store(self.server.now(), Ordering::Release);
            self.server.freed.notify_one();
        }
    }
}

/// A response body that keeps its request counted as in flight until it is written.
struct Counted {
    body: Body,
    _in_flight: InFlight,
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The socket, noting when bytes of a request header start to arrive.
struct Watched {
    tcp: TcpStream,
    conn: Arc<Conn>,
    server: Arc<Server>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.tcp).poll_read(cx, buf);
        if buf.filled().len() > before
            && this.conn.in_flight.load(Ordering::Acquire) == 0
            && this.conn.head_since.load(Ordering::Acquire) == NONE
        {
            this.conn
                .head_since
                .store(this.server.now(), Ordering::Release);
        }
        result
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
}

/// Serves `app` on `listener` under `limits` until `shutdown` completes, then stops accepting
/// and lets in-flight requests finish (idle connections close at once).
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let server = Arc::new(Server {
        epoch: Instant::now(),
        limits,
        conns: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(0),
        freed: Notify::new(),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    // Every connection task holds a receiver; `closed` completes when the last one ends.
    let (done_tx, done_rx) = watch::channel(());
    tokio::pin!(shutdown);
    'accept: loop {
        let tcp = tokio::select! {
            _ = &mut shutdown => break 'accept,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of descriptors, most likely: free the one an idle client holds.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    if !server.close_idlest() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    continue;
                }
            },
        };
        // Make room: close the longest idle connection, or wait until one ends or goes idle.
        while server.conns().len() >= server.limits.max_connections && !server.close_idlest() {
            tokio::select! {
                _ = &mut shutdown => break 'accept,
                _ = server.freed.notified() => {}
            }
        }
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let id = server.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(server.now()),
            head_since: AtomicU64::new(server.now()),
            close: Notify::new(),
        });
        server.conns().insert(id, conn.clone());
        tokio::spawn(connection(
            server.clone(),
            id,
            conn,
            tcp,
            app.clone(),
            stop_rx.clone(),
            done_rx.clone(),
        ));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(done_rx);
    done_tx.closed().await;
    Ok(())
}

/// Serves one connection until it ends, is closed by a limit, or drains after a stop.
async fn connection(
    server: Arc<Server>,
    id: u64,
    conn: Arc<Conn>,
    tcp: TcpStream,
    app: axum::Router,
    mut stop: watch::Receiver<bool>,
    _done: watch::Receiver<()>,
) {
    let io = TokioIo::new(Watched {
        tcp,
        conn: conn.clone(),
        server: server.clone(),
    });
    let service = {
        let (conn, server) = (conn.clone(), server.clone());
        hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            // Counted at dispatch, before the handler first runs.
            let in_flight = InFlight::begin(&conn, &server);
            let app = app.clone();
            async move {
                let response = app.oneshot(request.map(Body::new)).await;
                response.map(|r| {
                    r.map(|body| Counted {
                        body,
                        _in_flight: in_flight,
                    })
                })
            }
        })
    };
    let limits = server.limits;
    let served = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
    tokio::pin!(served);
    let tick = (limits.header_read_timeout.min(limits.idle_timeout) / 4)
        .clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut draining = *stop.borrow();
    if draining {
        served.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            result = served.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                break;
            }
            _ = conn.close.notified() => {
                tracing::debug!("idle connection closed for a new one (limits.max_connections)");
                break;
            }
            changed = stop.changed(), if !draining => {
                draining = true;
                if changed.is_ok() {
                    served.as_mut().graceful_shutdown();
                }
            }
            _ = ticker.tick() => {
                if let Some(why) = conn.expired(server.now(), &limits) {
                    tracing::debug!(reason = why, "connection closed");
                    break;
                }
            }
        }
    }
    server.conns().remove(&id);
    server.freed.notify_one();
}
