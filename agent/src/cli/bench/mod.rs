//! `evokernel bench`: measurements that print ratios against a peer measured in the same run.

pub mod core;
pub mod kernels;
mod plot;

/// The median of a non-empty list of measurements.
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    }
}
