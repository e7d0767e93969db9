//! The accept loop and the life of each connection.
//!
//! Our own loop over hyper's HTTP/1 connection builder rather than `axum::serve`, which
//! holds a connection as long as its client likes, has no cap, and stops accepting for a
//! second after every accept error. Here:
//! - a request head must arrive within `header_read_timeout` (from the opening, or from the
//!   first byte of a later request), a kept-alive connection may wait `idle_timeout` for its
//!   next request, a body `body_read_timeout` (in the handler); a client cut off mid-request
//!   is told so with a JSON 408;
//! - at most [`connection_cap`] connections are open; at the cap, the oldest one that is not
//!   answering a whole request (idle, or still sending its request) is shed, so that a new
//!   client always gets in; only when every connection is answering does accepting wait;
//! - an accept error (such as running out of file descriptors) sheds one connection or
//!   waits a little, and the loop goes on.

use std::collections::BTreeMap;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use super::connection::{Phase, Slot, Tracked, Watched};
use super::metrics::OTHER_ROUTE;
use super::{ApiError, App, AppState, ServeConfig};

/// File descriptors kept free of connections: the listener's, the runtime's, the standard
/// streams'.
const RESERVED_DESCRIPTORS: usize = 32;

/// How long a connection closed after an error answer keeps reading what its client still
/// sends: closing a socket with unread data resets it, and the client may lose the answer.
const LINGER: Duration = Duration::from_millis(500);

/// The most connections the server holds open: `max_connections`, or fewer when the
/// process's open-file limit (the soft `RLIMIT_NOFILE`) leaves less room.
pub fn connection_cap(config: &ServeConfig) -> usize {
    let cap = config.max_connections.max(1);
    match open_file_limit() {
        Some(limit) => cap.min(limit.saturating_sub(RESERVED_DESCRIPTORS).max(1)),
        None => cap,
    }
}

#[cfg(unix)]
fn open_file_limit() -> Option<usize> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only the struct it is handed, which lives on this stack.
    let read = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    (read && limit.rlim_cur != libc::RLIM_INFINITY)
        .then(|| usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX))
}

#[cfg(not(unix))]
fn open_file_limit() -> Option<usize> {
    None
}

fn out_of_descriptors(error: &io::Error) -> bool {
    #[cfg(unix)]
    {
        matches!(
            error.raw_os_error(),
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
        )
    }
    #[cfg(not(unix))]
    {
        let _ = error;
        false
    }
}

/// Serves `app` on `listener` until Ctrl-C, letting requests in flight finish.
pub async fn run(listener: TcpListener, app: App) {
    serve(listener, app, async {
        // If the signal cannot be watched, serve until the process is killed.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    })
    .await
}

/// Serves `app` on `listener` until `shutdown` completes; then accepts no more, closes
/// connections waiting for a request, and returns once the requests in flight are answered.
pub async fn serve(listener: TcpListener, app: App, shutdown: impl Future<Output = ()>) {
    let App { router, state } = app;
    let cap = connection_cap(&state.config);
    let registry = Arc::new(Registry {
        slots: Mutex::default(),
        ended: Notify::new(),
        epoch: Instant::now(),
        state: state.clone(),
    });
    let mut builder = http1::Builder::new();
    // hyper answers a head over this size with a bodiless 431 that `Watched` rewrites as
    // JSON; our own timers, not hyper's, bound how long a head may take.
    builder
        .max_header_size(state.config.max_header_bytes)
        .header_read_timeout(None);
    let (stop, stopped) = watch::channel(());
    tokio::pin!(shutdown);
    let mut next_id = 0;
    loop {
        let accepted = tokio::select! {
            accepted = async {
                registry.make_room(cap).await;
                listener.accept().await
            } => accepted,
            () = &mut shutdown => break,
        };
        match accepted {
            Ok((stream, _)) => {
                // Answers are small and whole: send them at once.
                let _ = stream.set_nodelay(true);
                next_id += 1;
                let slot = registry.open(next_id);
                tokio::spawn(connection(
                    stream,
                    slot,
                    registry.clone(),
                    router.clone(),
                    builder.clone(),
                    stopped.clone(),
                ));
            }
            Err(error) => {
                state.metrics.accept_failed();
                if out_of_descriptors(&error) {
                    registry.shed_oldest();
                    let _ =
                        tokio::time::timeout(Duration::from_millis(100), registry.ended.notified())
                            .await;
                } else {
                    // A client that reset before we accepted it; do not spin on a broken
                    // listener either.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
    }
    drop(listener);
    let _ = stop.send(());
    registry.wait_empty().await;
}

/// The open connections, by accept order.
struct Registry {
    slots: Mutex<BTreeMap<u64, Arc<Slot>>>,
    /// Woken when a connection has ended and its socket is closed.
    ended: Notify,
    epoch: Instant,
    state: Arc<AppState>,
}

impl Registry {
    fn slots(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Slot>>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn open(&self, id: u64) -> Arc<Slot> {
        let slot = Arc::new(Slot::new(id, self.epoch));
        self.slots().insert(id, slot.clone());
        self.state.metrics.connection_opened();
        slot
    }

    fn end(&self, id: u64) {
        self.slots().remove(&id);
        self.state.metrics.connection_ended();
        self.ended.notify_one();
    }

    /// Closes the oldest connection that is not answering a whole request; false if every
    /// one is.
    fn shed_oldest(&self) -> bool {
        let shed = self
            .slots()
            .values()
            .any(|slot| slot.close_unless_working());
        if shed {
            self.state.metrics.closed(super::metrics::Closed::Shed);
        }
        shed
    }

    /// Returns once fewer than `cap` connections are open, shedding one if need be.
    async fn make_room(&self, cap: usize) {
        loop {
            let (open, closing) = {
                let slots = self.slots();
                let closing = slots
                    .values()
                    .filter(|s| s.phase() == Phase::Closing)
                    .count();
                (slots.len(), closing)
            };
            if open < cap {
                return;
            }
            // Shed one unless one is already on its way out; when every connection is
            // answering a request, none is shed and this waits for one to end.
            if closing == 0 {
                self.shed_oldest();
            }
            self.ended.notified().await;
        }
    }

    async fn wait_empty(&self) {
        while !self.slots().is_empty() {
            self.ended.notified().await;
        }
    }
}

/// Ends a connection's registration when its task ends, after its socket has closed.
struct Registered(Arc<Registry>, u64);

impl Drop for Registered {
    fn drop(&mut self) {
        self.0.end(self.1);
    }
}

enum Event {
    Done(hyper::Result<()>),
    Closed,
    Tick,
    Stop,
}

async fn connection(
    stream: TcpStream,
    slot: Arc<Slot>,
    registry: Arc<Registry>,
    router: Router,
    builder: http1::Builder,
    mut stop: watch::Receiver<()>,
) {
    let _registered = Registered(registry.clone(), slot.id);
    let state = &registry.state;
    let config = state.config;
    let io = TokioIo::new(Watched::new(stream, slot.clone(), state.clone()));
    let service = Tracked {
        router,
        slot: slot.clone(),
    };
    let mut conn = builder.serve_connection(io, service);
    let mut stopping = false;
    loop {
        let deadline = slot.deadline(&config);
        let event = tokio::select! {
            done = poll_fn(|cx| conn.poll_without_shutdown(cx)) => Event::Done(done),
            () = slot.closing.notified() => Event::Closed,
            () = sleep_until(deadline.map(|(at, _)| at)) => Event::Tick,
            _ = stop.changed(), if !stopping => Event::Stop,
        };
        match event {
            Event::Done(Ok(())) | Event::Closed => return,
            Event::Done(Err(error)) => {
                // hyper has answered a head it could not read (rewritten as JSON by
                // `Watched`); let the client read that answer before the socket closes.
                if error.is_parse() {
                    close_with(conn.into_parts().io.into_inner(), None).await;
                }
                return;
            }
            Event::Tick => {
                let Some((at, why)) = slot.deadline(&config) else {
                    continue;
                };
                let mid_head = slot.mid_head();
                if Instant::now() < at || !slot.close_unless_working() {
                    continue;
                }
                state.metrics.closed(why);
                let answer = mid_head.then(|| {
                    state
                        .metrics
                        .record(OTHER_ROUTE, 408, config.header_read_timeout);
                    ApiError::new(
                        StatusCode::REQUEST_TIMEOUT,
                        "headers",
                        format!(
                            "the request line and headers did not all arrive within {:?}",
                            config.header_read_timeout
                        ),
                    )
                });
                close_with(conn.into_parts().io.into_inner(), answer).await;
                return;
            }
            Event::Stop => {
                stopping = true;
                if slot.close_if_waiting() {
                    return;
                }
                // Answer the request in hand, then close.
                Pin::new(&mut conn).graceful_shutdown();
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Writes `answer` if any, then half-closes the socket and reads what the client still
/// sends for a short while, so that the client reads the answer rather than a reset.
async fn close_with(mut io: Watched, answer: Option<ApiError>) {
    let _ = tokio::time::timeout(LINGER, async {
        if let Some(answer) = answer {
            io.write_all(&answer.http1_bytes()).await?;
        }
        io.shutdown().await?;
        let mut sink = [0u8; 4096];
        while io.read(&mut sink).await? > 0 {}
        io::Result::Ok(())
    })
    .await;
}
