//! Request counts by route and status, a latency histogram per route, and the kernel served
//! as an info gauge, in the Prometheus text exposition format.

use std::collections::BTreeMap;
use std::fmt::Write;
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

#[derive(Default)]
struct Tables {
    requests: BTreeMap<(&'static str, u16), u64>,
    latency: BTreeMap<&'static str, Histogram>,
}

/// The server's counters.
#[derive(Default)]
pub struct Metrics {
    tables: Mutex<Tables>,
}

/// The route template a path belongs to, so that labels stay few.
pub fn route_of(path: &str) -> &'static str {
    match path {
        "/v1/recommend" => "/v1/recommend",
        "/healthz" => "/healthz",
        "/metrics" => "/metrics",
        "/openapi.json" => "/openapi.json",
        p if p.starts_with("/v1/items/") && p.ends_with("/similar") => "/v1/items/{id}/similar",
        _ => "other",
    }
}

impl Metrics {
    pub fn record(&self, route: &'static str, status: u16, elapsed: Duration) {
        let mut t = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        *t.requests.entry((route, status)).or_default() += 1;
        let h = t.latency.entry(route).or_default();
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
