//! Small statistics for timings: medians, rank correlation, and a speed-up with its confidence
//! interval from interleaved pairs of runs.

/// The median (the mean of the middle two for an even count). NaN for no values.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => sorted[n / 2],
        _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// Ranks from 1, tied values sharing the mean of their ranks.
fn ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0.0; values.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && values[order[end]] == values[order[start]] {
            end += 1;
        }
        let rank = (start + end + 1) as f64 / 2.0;
        for &i in &order[start..end] {
            ranks[i] = rank;
        }
        start = end;
    }
    ranks
}

/// Spearman's rank correlation of `xs` and `ys` (Pearson's correlation of their ranks, ties
/// ranked by their mean rank). NaN when either side is constant or the lengths differ.
pub fn spearman(xs: &[f64], ys: &[f64]) -> f64 {
    if xs.len() != ys.len() {
        return f64::NAN;
    }
    let (rx, ry) = (ranks(xs), ranks(ys));
    let n = rx.len() as f64;
    let (mx, my) = (rx.iter().sum::<f64>() / n, ry.iter().sum::<f64>() / n);
    let cov: f64 = rx.iter().zip(&ry).map(|(x, y)| (x - mx) * (y - my)).sum();
    let vx: f64 = rx.iter().map(|x| (x - mx).powi(2)).sum();
    let vy: f64 = ry.iter().map(|y| (y - my).powi(2)).sum();
    cov / (vx * vy).sqrt()
}

/// How much faster a candidate ran than a baseline, from pairs of runs taken in turn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Speedup {
    /// The geometric mean of the pairs' ratios, baseline time / candidate time.
    pub estimate: f64,
    /// The 95% confidence interval of the estimate (Student's t on the log ratios): with
    /// fewer than two pairs it is (0, ∞).
    pub lo: f64,
    pub hi: f64,
}

impl Speedup {
    /// `baseline[i]` and `candidate[i]` are the i-th pair of times (seconds).
    pub fn from_pairs(baseline: &[f64], candidate: &[f64]) -> Speedup {
        let logs: Vec<f64> = baseline
            .iter()
            .zip(candidate)
            .map(|(b, c)| (b.max(1e-12) / c.max(1e-12)).ln())
            .collect();
        let n = logs.len();
        let mean = logs.iter().sum::<f64>() / n.max(1) as f64;
        if n < 2 {
            return Speedup {
                estimate: mean.exp(),
                lo: 0.0,
                hi: f64::INFINITY,
            };
        }
        let variance = logs.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        let half_width = t_975(n - 1) * (variance / n as f64).sqrt();
        Speedup {
            estimate: mean.exp(),
            lo: (mean - half_width).exp(),
            hi: (mean + half_width).exp(),
        }
    }

    /// The speed-up where the interval excludes 1, else exactly 1: a difference the
    /// measurement cannot tell from noise is worth nothing.
    pub fn beyond_noise(&self) -> f64 {
        if self.lo > 1.0 || self.hi < 1.0 {
            self.estimate
        } else {
            1.0
        }
    }
}

/// The 97.5% quantile of Student's t with `dof` degrees of freedom (two-sided 95%).
fn t_975(dof: usize) -> f64 {
    const TABLE: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    TABLE.get(dof.wrapping_sub(1)).copied().unwrap_or(1.96)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spearman_of_monotone_reversed_and_tied_data() {
        let xs = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(spearman(&xs, &[10.0, 20.0, 25.0, 90.0, 100.0]), 1.0);
        assert_eq!(spearman(&xs, &[5.0, 4.0, 3.0, 2.0, 1.0]), -1.0);
        // Ranks 1, 2.5, 2.5, 4 against 1..4: covariance 4.5, variances 4.5 and 5 (sums).
        let tied = spearman(&[1.0, 2.0, 2.0, 3.0], &[1.0, 2.0, 3.0, 4.0]);
        assert!((tied - 4.5 / (4.5f64 * 5.0).sqrt()).abs() < 1e-12);
        assert!(spearman(&xs, &[1.0; 5]).is_nan());
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn a_steady_speedup_is_beyond_noise() {
        let s = Speedup::from_pairs(&[2.0, 2.1, 1.9, 2.0, 2.05], &[1.0, 1.02, 0.98, 1.01, 1.0]);
        assert!((s.estimate - 2.0).abs() < 0.05, "{s:?}");
        assert!(s.lo > 1.9 && s.hi < 2.1, "{s:?}");
        assert_eq!(s.beyond_noise(), s.estimate);
    }

    #[test]
    fn the_same_kernel_timed_twice_counts_as_one() {
        // Noise of ±10% in both directions: whatever the estimate, it is worth 1.0.
        let s = Speedup::from_pairs(&[1.0, 1.1, 0.9, 1.05, 0.95], &[1.08, 0.92, 1.0, 0.97, 1.1]);
        assert!(s.lo < 1.0 && s.hi > 1.0, "{s:?}");
        assert_eq!(s.beyond_noise(), 1.0);
    }

    #[test]
    fn a_clear_slowdown_stays_below_one() {
        let s = Speedup::from_pairs(&[1.0, 1.0, 1.0], &[2.0, 2.1, 1.95]);
        assert!(s.hi < 1.0);
        assert!(s.beyond_noise() < 0.55);
    }

    #[test]
    fn one_pair_says_nothing() {
        let s = Speedup::from_pairs(&[2.0], &[1.0]);
        assert_eq!((s.lo, s.hi), (0.0, f64::INFINITY));
        assert_eq!(s.beyond_noise(), 1.0);
    }
}
