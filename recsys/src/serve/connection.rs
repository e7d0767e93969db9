//! One connection as the server sees it: where it stands (its [`Phase`], read by the
//! shedder and the timeouts), its socket (watched for the first byte of a request, and
//! with hyper's own bodiless error answers rewritten as JSON), and the service that hands
//! its requests to the router and tracks them through their phases.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{Request, Response, StatusCode};
use axum::Router;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::metrics::{Closed, OTHER_ROUTE};
use super::{ApiError, AppState, ServeConfig};

/// Where a connection stands. Only the `Working` phase is safe from shedding: every other
/// one is a client that has not sent a whole request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Phase {
    /// Accepted; no request head has arrived yet.
    Fresh = 0,
    /// A request head has arrived, its body has not all arrived.
    Reading = 1,
    /// A whole request is being answered.
    Working = 2,
    /// Answered; waiting for the next request on a kept-alive connection.
    Idle = 3,
    /// Chosen to be closed (shed, timed out, or the server is stopping).
    Closing = 4,
}

impl Phase {
    fn from_u8(n: u8) -> Phase {
        match n {
            0 => Phase::Fresh,
            1 => Phase::Reading,
            2 => Phase::Working,
            3 => Phase::Idle,
            _ => Phase::Closing,
        }
    }
}

/// One open connection, shared by its task, its socket, its service and the registry.
pub(super) struct Slot {
    /// Accept order: the shedder closes the lowest first.
    pub(super) id: u64,
    phase: AtomicU8,
    /// When the phase last changed, in milliseconds since `epoch`.
    since: AtomicU64,
    /// When a byte of the next request head first arrived (milliseconds since `epoch`
    /// plus one; 0: none yet). Read in the `Fresh` and `Idle` phases.
    heard: AtomicU64,
    epoch: Instant,
    /// Wakes the connection's task when the slot turns `Closing`.
    pub(super) closing: Notify,
}

impl Slot {
    pub(super) fn new(id: u64, epoch: Instant) -> Slot {
        let slot = Slot {
            id,
            phase: AtomicU8::new(Phase::Fresh as u8),
            since: AtomicU64::new(0),
            heard: AtomicU64::new(0),
            epoch,
            closing: Notify::new(),
        };
        slot.since.store(slot.now_ms(), Ordering::Release);
        slot
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn at(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }

    pub(super) fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Acquire))
    }

    /// Moves from one of `from` to `to`; false when the slot stood elsewhere (most often:
    /// it was closed meanwhile, and stays closed).
    fn step(&self, from: &[Phase], to: Phase) -> bool {
        let moved = self
            .phase
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
                from.contains(&Phase::from_u8(now)).then_some(to as u8)
            })
            .is_ok();
        if moved {
            self.since.store(self.now_ms(), Ordering::Release);
            if to == Phase::Idle {
                self.heard.store(0, Ordering::Release);
            }
        }
        moved
    }

    /// Closes the slot if no whole request is being answered on it; true if it did.
    pub(super) fn close_unless_working(&self) -> bool {
        self.close_from(&[Phase::Fresh, Phase::Reading, Phase::Idle])
    }

    /// Closes the slot if it waits for a request head; true if it did.
    pub(super) fn close_if_waiting(&self) -> bool {
        self.close_from(&[Phase::Fresh, Phase::Idle])
    }

    fn close_from(&self, from: &[Phase]) -> bool {
        let closed = self.step(from, Phase::Closing);
        if closed {
            self.closing.notify_one();
        }
        closed
    }

    /// Whether the client has begun a request head it has not finished: such a client is
    /// told why its connection closes, a silent one is not.
    pub(super) fn mid_head(&self) -> bool {
        self.heard.load(Ordering::Acquire) != 0
    }

    fn heard_bytes(&self) {
        if self.heard.load(Ordering::Acquire) == 0 {
            let _ = self.heard.compare_exchange(
                0,
                self.now_ms() + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
    }

    /// When the connection's current wait runs out, and why; `None` while a request is
    /// being read or answered (the body's own timeout and the bounded model work end those).
    pub(super) fn deadline(&self, config: &ServeConfig) -> Option<(Instant, Closed)> {
        let since = self.since.load(Ordering::Acquire);
        let heard = self.heard.load(Ordering::Acquire);
        match self.phase() {
            Phase::Fresh => Some((
                self.at(since) + config.header_read_timeout,
                Closed::HeaderTimeout,
            )),
            Phase::Idle if heard != 0 => Some((
                self.at(heard - 1) + config.header_read_timeout,
                Closed::HeaderTimeout,
            )),
            Phase::Idle => Some((self.at(since) + config.idle_timeout, Closed::IdleTimeout)),
            Phase::Reading | Phase::Working | Phase::Closing => None,
        }
    }
}

/// The socket of a connection, as hyper reads and writes it.
pub(super) struct Watched {
    stream: TcpStream,
    slot: Arc<Slot>,
    state: Arc<AppState>,
    /// A JSON answer that replaces one of hyper's own, not yet all written.
    replacement: Vec<u8>,
    written: usize,
}

impl Watched {
    pub(super) fn new(stream: TcpStream, slot: Arc<Slot>, state: Arc<AppState>) -> Watched {
        Watched {
            stream,
            slot,
            state,
            replacement: Vec::new(),
            written: 0,
        }
    }

    /// Writes what is left of a replacement answer.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.replacement.len() {
            let n = std::task::ready!(
                Pin::new(&mut self.stream).poll_write(cx, &self.replacement[self.written..])
            )?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        Poll::Ready(Ok(()))
    }
}

/// hyper answers a request head it cannot read (400, 414, 431) itself, with an empty body
/// and no content type; every answer of ours has a content type. Such a 4xx answer, written
/// whole in one piece as hyper writes it, is its own: the JSON error that replaces it. (hyper
/// also writes `100 Continue` heads, which pass untouched.)
fn replace_hypers_answer(bytes: &[u8]) -> Option<ApiError> {
    if !bytes.starts_with(b"HTTP/1.") {
        return None;
    }
    let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&bytes[..head_end]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let status: u16 = status_line.get(9..12)?.parse().ok()?;
    let has_content_type = lines.any(|line| {
        line.split_once(':')
            .is_some_and(|(name, _)| name.trim().eq_ignore_ascii_case("content-type"))
    });
    if has_content_type || bytes.len() != head_end + 4 {
        return None;
    }
    let status = StatusCode::from_u16(status).ok()?;
    if !status.is_client_error() {
        return None;
    }
    let (field, message) = match status {
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => (
            "headers",
            "the request line and headers are too large or too many",
        ),
        StatusCode::URI_TOO_LONG => ("path", "the request target is too long"),
        _ => (
            "request",
            "the request line or a header is not valid HTTP/1.1",
        ),
    };
    Some(ApiError::new(status, field, message))
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before && matches!(self.slot.phase(), Phase::Fresh | Phase::Idle) {
            self.slot.heard_bytes();
        }
        read
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.poll_replacement(cx))?;
        if let Some(error) = replace_hypers_answer(buf) {
            self.state
                .metrics
                .record(OTHER_ROUTE, error.status.as_u16(), Duration::ZERO);
            self.replacement = error.http1_bytes();
            self.written = 0;
            // The replacement goes out now or at the flush hyper always follows with.
            let _ = self.poll_replacement(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_replacement(cx))?;
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_replacement(cx))?;
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Hands each request to the router, moving the slot through its phases.
#[derive(Clone)]
pub(super) struct Tracked {
    pub(super) router: Router,
    pub(super) slot: Arc<Slot>,
}

type Answer = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for Tracked {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Answer;

    fn call(&self, request: Request<Incoming>) -> Answer {
        let whole = http_body::Body::is_end_stream(request.body());
        let to = if whole {
            Phase::Working
        } else {
            Phase::Reading
        };
        self.slot.step(&[Phase::Fresh, Phase::Idle], to);
        let slot = self.slot.clone();
        let request = request.map(|body| {
            Body::new(BodyWatch {
                body,
                slot: slot.clone(),
            })
        });
        let mut router = self.router.clone();
        Box::pin(async move {
            let answer = tower_service::Service::call(&mut router, request).await;
            slot.step(&[Phase::Reading, Phase::Working], Phase::Idle);
            answer
        })
    }
}

/// A request body that moves its slot from `Reading` to `Working` once it has all arrived.
struct BodyWatch {
    body: Incoming,
    slot: Arc<Slot>,
}

impl http_body::Body for BodyWatch {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = Pin::new(&mut self.body).poll_frame(cx);
        if matches!(frame, Poll::Ready(None)) || self.body.is_end_stream() {
            self.slot.step(&[Phase::Reading], Phase::Working);
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
