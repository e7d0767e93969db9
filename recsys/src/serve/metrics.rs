//! Request counts by route and status, a latency histogram per route, the kernel served as
//! an info gauge, and the connection layer's gauges and counters, in the Prometheus text
//! exposition format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::KernelInfo;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

#[derive(Default)]
struct Histogram {
    /// Per bucket, the requests at or under its bound (not cumulative; summed on export).
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Why the server closed a connection itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Closed {
    /// Room was needed for a new connection while this one sat idle or had not sent a
    /// whole request.
    Shed,
    /// A request head (or, on a new connection, the first one) took too long to arrive.
    HeaderTimeout,
    /// A kept-alive connection waited too long for its next request.
    IdleTimeout,
}

impl Closed {
    fn label(self) -> &'static str {
        match self {
            Closed::Shed => "shed",
            Closed::HeaderTimeout => "header_timeout",
            Closed::IdleTimeout => "idle_timeout",
        }
    }
}

/// The route label of requests that matched no route or never reached the router (a
/// request head hyper could not read, or one cut off by a timeout).
pub const OTHER_ROUTE: &str = "other";

#[derive(Default)]
struct Tables {
    requests: BTreeMap<(String, u16), u64>,
    latency: BTreeMap<String, Histogram>,
    closed: BTreeMap<Closed, u64>,
    accept_errors: u64,
}

/// The server's counters and gauges.
#[derive(Default)]
pub struct Metrics {
    tables: Mutex<Tables>,
    connections_open: AtomicUsize,
    in_flight: AtomicUsize,
}

/// A request counted as in flight until this is dropped.
pub struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Metrics {
    /// Counts one more request in flight, unless `max` already are.
    pub fn admit(&self, max: usize) -> Option<InFlight<'_>> {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| InFlight(&self.in_flight))
    }

    pub fn connection_opened(&self) {
        self.connections_open.fetch_add(1, Ordering::AcqRel);
    }

    pub fn connection_ended(&self) {
        self.connections_open.fetch_sub(1, Ordering::AcqRel);
    }

    pub fn closed(&self, why: Closed) {
        let mut t = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        *t.closed.entry(why).or_default() += 1;
    }

    pub fn accept_failed(&self) {
        self.tables
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .accept_errors += 1;
    }

    pub fn record(&self, route: &str, status: u16, elapsed: Duration) {
        let mut t = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        *t.requests.entry((route.to_string(), status)).or_default() += 1;
        let h = t.latency.entry(route.to_string()).or_default();
        let secs = elapsed.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|&b| secs <= b) {
            h.counts[i] += 1;
        }
        h.count += 1;
        h.sum += secs;
    }

    /// The Prometheus text of every counter, after the info gauge of `kernel`.
    pub fn render(&self, kernel: &KernelInfo) -> String {
        let t = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP recsys_kernel_info The attention kernel served (always 1)."
        );
        let _ = writeln!(out, "# TYPE recsys_kernel_info gauge");
        let mut labels = vec![("name", kernel.name.clone()), ("hash", kernel.hash.clone())];
        if let Some(id) = kernel.program_id {
            labels.push(("program_id", id.to_string()));
        }
        if let Some(campaign) = &kernel.campaign {
            labels.push(("campaign", campaign.clone()));
        }
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", label_value(v)))
            .collect();
        let _ = writeln!(out, "recsys_kernel_info{{{}}} 1", labels.join(","));
        let _ = writeln!(
            out,
            "# HELP recsys_requests_total HTTP requests by route and status."
        );
        let _ = writeln!(out, "# TYPE recsys_requests_total counter");
        for ((route, status), n) in &t.requests {
            let _ = writeln!(
                out,
                "recsys_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP recsys_request_duration_seconds Time from request to response by route."
        );
        let _ = writeln!(out, "# TYPE recsys_request_duration_seconds histogram");
        for (route, h) in &t.latency {
            let mut cumulative = 0;
            for (bound, n) in BUCKETS.iter().zip(h.counts) {
                cumulative += n;
                let _ = writeln!(
                    out,
                    "recsys_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "recsys_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "recsys_request_duration_seconds_sum{{route=\"{route}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "recsys_request_duration_seconds_count{{route=\"{route}\"}} {}",
                h.count
            );
        }
        let gauges = [
            (
                "recsys_connections_open",
                "Connections open now.",
                self.connections_open.load(Ordering::Acquire),
            ),
            (
                "recsys_requests_in_flight",
                "Requests being answered now, of at most --max-in-flight.",
                self.in_flight.load(Ordering::Acquire),
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} gauge");
            let _ = writeln!(out, "{name} {value}");
        }
        let _ = writeln!(
            out,
            "# HELP recsys_connections_closed_total Connections the server closed itself, by reason."
        );
        let _ = writeln!(out, "# TYPE recsys_connections_closed_total counter");
        for (why, n) in &t.closed {
            let _ = writeln!(
                out,
                "recsys_connections_closed_total{{reason=\"{}\"}} {n}",
                why.label()
            );
        }
        let _ = writeln!(
            out,
            "# HELP recsys_accept_errors_total Connections the listener failed to accept, such as for want of file descriptors."
        );
        let _ = writeln!(out, "# TYPE recsys_accept_errors_total counter");
        let _ = writeln!(out, "recsys_accept_errors_total {}", t.accept_errors);
        out
    }
}

/// A label value escaped as the exposition format asks: backslash, double quote, newline.
fn label_value(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
