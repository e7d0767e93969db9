//! `evokernel bench`: measurements that print ratios against a peer measured in the same run.

pub mod core;
pub mod kernels;
mod plot;

use ::kernels::stats::median;
