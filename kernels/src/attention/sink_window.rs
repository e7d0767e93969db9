//! Attention sinks plus a sliding window (StreamingLLM, Xiao et al. 2023).

use std::ops::Range;

use super::{Coverage, KeyRule};
use crate::{Error, Result};

/// Key `k` is visible to query `q` iff `k <= q` and (`k < sinks` or `q - k < window`): the
/// first `sinks` tokens stay visible forever, the rest only within the window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SinkWindow {
    sinks: usize,
    window: usize,
}

impl SinkWindow {
    /// `window` counts the query itself, so it must be at least 1; `sinks` may be 0 (a plain
    /// sliding window).
    pub fn new(sinks: usize, window: usize) -> Result<SinkWindow> {
        if window == 0 {
            return Err(Error::InvalidRequest(format!(
                "sink window: window must be at least 1 (it counts the query itself), got 0 \
                 with {sinks} sinks"
            )));
        }
        Ok(SinkWindow { sinks, window })
    }

    /// How many first tokens stay visible to every later query.
    pub fn sinks(&self) -> usize {
        self.sinks
    }

    /// How many of the latest positions (the query's own included) each query sees.
    pub fn window(&self) -> usize {
        self.window
    }
}

impl KeyRule for SinkWindow {
    fn allows(&self, q: usize, k: usize) -> bool {
        k <= q && (k < self.sinks || q - k < self.window)
    }

    /// Exact for rectangles. With `q0..=q1` and `k0..=k1`:
    /// - Full iff the latest key is before the first query and every non-sink key is
    ///   within the window of the last query: `k1 <= q0` and (no key `>= sinks`, or
    ///   `max(k0, sinks) + window > q1`).
    /// - Empty iff no key is at or before the last query, or the rectangle has no sink key and
    ///   its closest causal pair is out of the window: `k0 >= sinks` and
    ///   `q0 - min(k1, q1) >= window`.
    fn coverage(&self, queries: Range<usize>, keys: Range<usize>) -> Coverage {
        let (q0, q1) = (queries.start, queries.end - 1);
        let (k0, k1) = (keys.start, keys.end - 1);
        let first_windowed_key = k0.max(self.sinks);
        if k0 > q1 || (k0 >= self.sinks && q0.saturating_sub(k1.min(q1)) >= self.window) {
            Coverage::Empty
        } else if k1 <= q0 && (first_windowed_key > k1 || first_windowed_key + self.window > q1) {
            Coverage::Full
        } else {
            Coverage::Partial
        }
    }
}
