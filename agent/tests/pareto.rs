//! Pareto fronts and hypervolumes on hand-made points, and against brute-force twins.

use agent::pareto::{dominates, hypervolume, pareto_front, Direction};
use proptest::prelude::*;

const MAX_MIN: [Direction; 2] = [Direction::Max, Direction::Min];
const MAX_MAX: [Direction; 2] = [Direction::Max, Direction::Max];

#[test]
fn the_front_keeps_the_non_dominated_points_best_x_first() {
    // (speedup, kl): larger speedup and smaller KL are better.
    let points = [
        [1.0, 0.01], // 0: on the front (best KL)
        [2.0, 0.05], // 1: on the front
        [1.5, 0.05], // 2: dominated by 1
        [3.0, 0.50], // 3: on the front (best speedup)
        [2.0, 0.05], // 4: same as 1: the first is kept
        [0.5, 0.02], // 5: dominated by 0
        [3.0, 0.60], // 6: dominated by 3
    ];
    // Maximising both, (3, 0.6) beats every other point.
    assert_eq!(pareto_front(&points, MAX_MAX), vec![6]);
    assert_eq!(pareto_front(&points, MAX_MIN), vec![3, 1, 0]);
    assert!(dominates(points[1], points[2], MAX_MIN));
    assert!(
        !dominates(points[1], points[4], MAX_MIN),
        "equal points do not dominate"
    );
    assert!(!dominates(points[0], points[3], MAX_MIN));
    assert!(pareto_front(&[], MAX_MIN).is_empty());
    assert_eq!(
        pareto_front(&[[f64::NAN, 0.0], [1.0, 1.0]], MAX_MIN),
        vec![1]
    );
}

#[test]
fn hypervolume_of_hand_made_fronts() {
    // Maximise both from (0, 0): a staircase of 1×3, 2×2, 3×1 covers 3 + 2 + 1 = 6.
    let stairs = [[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]];
    assert_eq!(hypervolume(&stairs, MAX_MAX, [0.0, 0.0]), 6.0);
    // A dominated point and a point outside the reference add nothing.
    let more = [[1.0, 3.0], [2.0, 2.0], [3.0, 1.0], [1.0, 1.0], [5.0, -1.0]];
    assert_eq!(hypervolume(&more, MAX_MAX, [0.0, 0.0]), 6.0);
    // Speedup up, KL down, from (speedup 1, KL 0.5): (2, 0.1) covers 1 × 0.4, and
    // (3, 0.3) adds 1 × 0.2 beyond it.
    let mixed = [[2.0, 0.1], [3.0, 0.3]];
    assert!((hypervolume(&mixed, MAX_MIN, [1.0, 0.5]) - 0.6).abs() < 1e-12);
    assert_eq!(hypervolume(&[], MAX_MIN, [1.0, 0.5]), 0.0);
    // A point on the reference's edge encloses no area.
    assert_eq!(hypervolume(&[[1.0, 0.1]], MAX_MIN, [1.0, 0.5]), 0.0);
}

/// The area of the union of the boxes [reference, point], by cutting the plane at every
/// coordinate and testing each cell's centre: slow, and obviously right.
fn union_area(points: &[[f64; 2]], reference: [f64; 2]) -> f64 {
    let mut xs: Vec<f64> = points.iter().map(|p| p[0]).chain([reference[0]]).collect();
    let mut ys: Vec<f64> = points.iter().map(|p| p[1]).chain([reference[1]]).collect();
    xs.sort_by(f64::total_cmp);
    ys.sort_by(f64::total_cmp);
    let mut area = 0.0;
    for x in xs.windows(2) {
        for y in ys.windows(2) {
            let centre = [(x[0] + x[1]) / 2.0, (y[0] + y[1]) / 2.0];
            let covered = points.iter().any(|p| {
                centre[0] > reference[0]
                    && centre[0] < p[0]
                    && centre[1] > reference[1]
                    && centre[1] < p[1]
            });
            if covered {
                area += (x[1] - x[0]) * (y[1] - y[0]);
            }
        }
    }
    area
}

fn small_points() -> impl Strategy<Value = Vec<[f64; 2]>> {
    // Integers on a small grid, so ties and duplicates are common.
    prop::collection::vec(
        (0..8i32, 0..8i32).prop_map(|(x, y)| [x as f64, y as f64]),
        0..12,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn the_front_is_exactly_the_points_nobody_dominates(points in small_points()) {
        let front = pareto_front(&points, MAX_MIN);
        for (i, p) in points.iter().enumerate() {
            let dominated = points.iter().any(|q| dominates(*q, *p, MAX_MIN));
            let duplicate_of_earlier = points[..i].contains(p);
            prop_assert_eq!(front.contains(&i), !dominated && !duplicate_of_earlier, "point {}", i);
        }
    }

    #[test]
    fn hypervolume_equals_the_area_of_the_union_of_boxes(points in small_points()) {
        let reference = [1.0, 1.0];
        let fast = hypervolume(&points, MAX_MAX, reference);
        let slow = union_area(&points, reference);
        prop_assert!((fast - slow).abs() < 1e-9, "{} vs {}", fast, slow);
        // Minimising a negated axis is the same problem.
        let flipped: Vec<[f64; 2]> = points.iter().map(|p| [p[0], -p[1]]).collect();
        let same = hypervolume(&flipped, MAX_MIN, [1.0, -1.0]);
        prop_assert!((same - slow).abs() < 1e-9);
    }
}
