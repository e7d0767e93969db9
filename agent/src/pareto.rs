//! Pareto fronts over two metrics, and their hypervolume (the area they dominate), for
//! `kernels pareto` and for comparing campaigns.

pub use evaluator::metric::Direction;

/// True when `a` is at least as good as `b` in both coordinates and better in one.
pub fn dominates(a: [f64; 2], b: [f64; 2], directions: [Direction; 2]) -> bool {
    let ga = [directions[0].gain(a[0]), directions[1].gain(a[1])];
    let gb = [directions[0].gain(b[0]), directions[1].gain(b[1])];
    ga[0] >= gb[0] && ga[1] >= gb[1] && (ga[0] > gb[0] || ga[1] > gb[1])
}

/// Indices of the points no other point dominates, ordered best first in x. Of points
/// that coincide, the first is kept. Points with a NaN coordinate are never on the front.
pub fn pareto_front(points: &[[f64; 2]], directions: [Direction; 2]) -> Vec<usize> {
    let gains: Vec<[f64; 2]> = points
        .iter()
        .map(|p| [directions[0].gain(p[0]), directions[1].gain(p[1])])
        .collect();
    let mut order: Vec<usize> = (0..points.len())
        .filter(|&i| !gains[i][0].is_nan() && !gains[i][1].is_nan())
        .collect();
    // Best x first; among equal x, best y first; then input order.
    order.sort_by(|&a, &b| {
        gains[b][0]
            .total_cmp(&gains[a][0])
            .then(gains[b][1].total_cmp(&gains[a][1]))
            .then(a.cmp(&b))
    });
    // Walking down x, a point is on the front when its y beats every point before it.
    let mut front = Vec::new();
    let mut best_y = f64::NEG_INFINITY;
    for i in order {
        if gains[i][1] > best_y || front.is_empty() {
            best_y = gains[i][1];
            front.push(i);
        }
    }
    front
}

/// The area dominated by `points` and bounded by `reference` (a point worse than any of
/// interest in both metrics). Points not strictly better than the reference in both
/// coordinates add nothing.
pub fn hypervolume(points: &[[f64; 2]], directions: [Direction; 2], reference: [f64; 2]) -> f64 {
    let r = [
        directions[0].gain(reference[0]),
        directions[1].gain(reference[1]),
    ];
    let useful: Vec<[f64; 2]> = points
        .iter()
        .filter(|p| directions[0].gain(p[0]) > r[0] && directions[1].gain(p[1]) > r[1])
        .copied()
        .collect();
    let mut area = 0.0;
    let mut covered_y = r[1];
    // The front, best x first: each point adds the strip its y rises above the last one.
    for i in pareto_front(&useful, directions) {
        let g = [
            directions[0].gain(useful[i][0]),
            directions[1].gain(useful[i][1]),
        ];
        if g[1] > covered_y {
            area += (g[0] - r[0]) * (g[1] - covered_y);
            covered_y = g[1];
        }
    }
    area
}
