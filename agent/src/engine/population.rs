//! The population a campaign evolves: islands that evolve apart and trade their best
//! programs now and then, each with a MAP-Elites grid (the best program per cell of the
//! descriptor space) and a Pareto front over two objectives. Parents are drawn from the
//! grid (diversity), the front (trade-offs) or by rank (fitness).

use std::collections::{BTreeMap, HashMap};

use rand::seq::IndexedRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::bandit::weighted_choice;

/// One axis of the descriptor space: a metric cut into equal bins over `[lo, hi]`; values
/// outside fall into the end bins.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Axis {
    pub name: String,
    pub lo: f64,
    pub hi: f64,
    pub bins: usize,
}

impl Axis {
    fn bin(&self, value: f64) -> Option<usize> {
        if !value.is_finite() || self.bins == 0 || self.hi <= self.lo {
            return None;
        }
        let at = ((value - self.lo) / (self.hi - self.lo) * self.bins as f64).floor();
        Some(at.clamp(0.0, (self.bins - 1) as f64) as usize)
    }
}

/// A program that passed evaluation, as the population knows it.
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    pub id: i64,
    pub score: f64,
    /// Breaks ties between equal scores, larger first: a deterministic estimate such as the
    /// cost model's, so that programs a measured score cannot tell apart still rank.
    pub tiebreak: f64,
    pub descriptors: BTreeMap<String, f64>,
    /// Two objectives, both to maximise (negate one to be minimised).
    pub objectives: [f64; 2],
}

impl Member {
    /// What ranks it: the score, then the tiebreak.
    fn standing(&self) -> (f64, f64) {
        (self.score, self.tiebreak)
    }
}

/// How often a parent comes from each source, and how strongly rank favours the best.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ParentMix {
    pub cells: f64,
    pub pareto: f64,
    pub fitness: f64,
    /// Drawing by rank, the k-th best has weight `rank_decay^k`: 0.8 gives the best about
    /// a fifth of the draws.
    pub rank_decay: f64,
}

impl Default for ParentMix {
    fn default() -> Self {
        Self {
            cells: 0.4,
            pareto: 0.2,
            fitness: 0.4,
            rank_decay: 0.8,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Island {
    pub members: Vec<Member>,
    /// The index in `members` of each cell's elite.
    cells: HashMap<Vec<usize>, usize>,
}

impl Island {
    /// The cell `descriptors` fall in; `None` when one is missing or not finite.
    pub fn cell_of(axes: &[Axis], descriptors: &BTreeMap<String, f64>) -> Option<Vec<usize>> {
        axes.iter()
            .map(|axis| descriptors.get(&axis.name).and_then(|v| axis.bin(*v)))
            .collect()
    }

    /// Adds `member` (once per id); returns whether it became its cell's elite.
    pub fn add(&mut self, axes: &[Axis], member: Member) -> bool {
        if self.members.iter().any(|m| m.id == member.id) {
            return false;
        }
        let cell = Self::cell_of(axes, &member.descriptors);
        self.members.push(member);
        let index = self.members.len() - 1;
        let Some(cell) = cell else {
            return false;
        };
        match self.cells.get(&cell) {
            Some(&elite) if self.members[elite].standing() >= self.members[index].standing() => {
                false
            }
            _ => {
                self.cells.insert(cell, index);
                true
            }
        }
    }

    /// Each occupied cell and its elite's id.
    pub fn elites(&self) -> Vec<(Vec<usize>, i64)> {
        let mut out: Vec<_> = self
            .cells
            .iter()
            .map(|(cell, &i)| (cell.clone(), self.members[i].id))
            .collect();
        out.sort();
        out
    }

    /// The members no other member dominates on both objectives.
    pub fn pareto_front(&self) -> Vec<&Member> {
        let dominates = |a: &Member, b: &Member| {
            a.objectives.iter().zip(&b.objectives).all(|(x, y)| x >= y)
                && a.objectives.iter().zip(&b.objectives).any(|(x, y)| x > y)
        };
        self.members
            .iter()
            .filter(|m| !self.members.iter().any(|other| dominates(other, m)))
            .collect()
    }

    /// Members by score, best first (ties by the tiebreak, then by id for reproducibility).
    pub fn ranked(&self) -> Vec<&Member> {
        let mut ranked: Vec<&Member> = self.members.iter().collect();
        ranked.sort_by(|a, b| {
            b.standing()
                .partial_cmp(&a.standing())
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(a.id.cmp(&b.id))
        });
        ranked
    }

    /// A parent drawn by `mix`; `None` while the island is empty.
    pub fn sample_parent<R: Rng>(&self, mix: ParentMix, rng: &mut R) -> Option<&Member> {
        if self.members.is_empty() {
            return None;
        }
        let source = weighted_choice(&[(0, mix.cells), (1, mix.pareto), (2, mix.fitness)], rng);
        match source {
            0 if !self.cells.is_empty() => {
                let mut elites: Vec<usize> = self.cells.values().copied().collect();
                elites.sort_unstable(); // map order is random; draws must not be
                Some(&self.members[*elites.choose(rng).expect("not empty")])
            }
            1 => self.pareto_front().choose(rng).copied(),
            _ => {
                let ranked = self.ranked();
                let weights: Vec<(usize, f64)> = (0..ranked.len())
                    .map(|k| (k, mix.rank_decay.powi(k as i32)))
                    .collect();
                Some(ranked[weighted_choice(&weights, rng)])
            }
        }
    }

    /// Up to `k` other members to show beside `parent`: the best half by score, the rest
    /// drawn from the cell elites.
    pub fn inspirations<R: Rng>(&self, parent: i64, k: usize, rng: &mut R) -> Vec<&Member> {
        let mut chosen: Vec<&Member> = self
            .ranked()
            .into_iter()
            .filter(|m| m.id != parent)
            .take(k.div_ceil(2))
            .collect();
        let mut elites: Vec<&Member> = self
            .elites()
            .into_iter()
            .filter_map(|(_, id)| self.members.iter().find(|m| m.id == id))
            .filter(|m| m.id != parent && !chosen.iter().any(|c| c.id == m.id))
            .collect();
        while chosen.len() < k && !elites.is_empty() {
            let i = rng.random_range(0..elites.len());
            chosen.push(elites.swap_remove(i));
        }
        chosen
    }
}

/// Copies each island's `count` best members to the next island in the ring; returns how
/// many arrived (a program an island already has does not arrive twice).
pub fn migrate(islands: &mut [Island], axes: &[Axis], count: usize) -> usize {
    let n = islands.len();
    if n < 2 {
        return 0;
    }
    let migrants: Vec<Vec<Member>> = islands
        .iter()
        .map(|island| island.ranked().into_iter().take(count).cloned().collect())
        .collect();
    let mut moved = 0;
    for (from, group) in migrants.into_iter().enumerate() {
        let target = &mut islands[(from + 1) % n];
        for member in group {
            if !target.members.iter().any(|m| m.id == member.id) {
                target.add(axes, member);
                moved += 1;
            }
        }
    }
    moved
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn axes() -> Vec<Axis> {
        vec![Axis {
            name: "kv_bytes_held_ratio".into(),
            lo: 0.0,
            hi: 1.0,
            bins: 4,
        }]
    }

    fn member(id: i64, score: f64, kv: f64) -> Member {
        Member {
            id,
            score,
            tiebreak: 0.0,
            descriptors: BTreeMap::from([("kv_bytes_held_ratio".to_string(), kv)]),
            objectives: [score, -kv],
        }
    }

    #[test]
    fn values_fall_in_their_bins_and_outliers_in_the_end_bins() {
        let axis = &axes()[0];
        assert_eq!(axis.bin(0.0), Some(0));
        assert_eq!(axis.bin(0.26), Some(1));
        assert_eq!(axis.bin(0.99), Some(3));
        assert_eq!(axis.bin(1.0), Some(3));
        assert_eq!(axis.bin(7.0), Some(3));
        assert_eq!(axis.bin(-1.0), Some(0));
        assert_eq!(axis.bin(f64::NAN), None);
        assert_eq!(Island::cell_of(&axes(), &BTreeMap::new()), None);
    }

    #[test]
    fn a_cell_keeps_its_best_program() {
        let mut island = Island::default();
        assert!(island.add(&axes(), member(1, 1.0, 0.1)));
        assert!(
            !island.add(&axes(), member(2, 0.5, 0.2)),
            "worse, same cell"
        );
        assert!(
            island.add(&axes(), member(3, 2.0, 0.15)),
            "better, same cell"
        );
        assert!(island.add(&axes(), member(4, 0.1, 0.9)), "new cell");
        assert!(
            !island.add(&axes(), member(4, 9.0, 0.9)),
            "an id enters once"
        );
        assert_eq!(island.elites(), vec![(vec![0], 3), (vec![3], 4)]);
    }

    #[test]
    fn equal_scores_rank_by_the_tiebreak() {
        let mut island = Island::default();
        let with_tiebreak = |id, tiebreak| Member {
            tiebreak,
            ..member(id, 1.0, 0.1)
        };
        island.add(&axes(), with_tiebreak(1, 1.5));
        assert!(
            island.add(&axes(), with_tiebreak(2, 2.5)),
            "same score, cheaper"
        );
        island.add(&axes(), with_tiebreak(3, 2.0));
        island.add(&axes(), member(4, 1.1, 0.9));
        let order: Vec<i64> = island.ranked().iter().map(|m| m.id).collect();
        assert_eq!(order, vec![4, 2, 3, 1]);
        assert_eq!(island.elites()[0], (vec![0], 2));
    }

    #[test]
    fn the_front_holds_exactly_the_undominated() {
        let mut island = Island::default();
        for (id, score, kv) in [(1, 1.0, 0.5), (2, 2.0, 0.9), (3, 0.5, 0.1), (4, 0.9, 0.6)] {
            island.add(&axes(), member(id, score, kv));
        }
        let mut front: Vec<i64> = island.pareto_front().iter().map(|m| m.id).collect();
        front.sort();
        assert_eq!(front, vec![1, 2, 3], "4 is dominated by 1");
    }

    #[test]
    fn parents_and_inspirations_come_from_the_island() {
        let mut island = Island::default();
        let mut rng = StdRng::seed_from_u64(3);
        assert!(island
            .sample_parent(ParentMix::default(), &mut rng)
            .is_none());
        for id in 0..10 {
            island.add(&axes(), member(id, id as f64, id as f64 / 10.0));
        }
        let mut best_drawn = 0;
        for _ in 0..200 {
            let parent = island
                .sample_parent(ParentMix::default(), &mut rng)
                .unwrap();
            assert!(island.members.contains(parent));
            best_drawn += usize::from(parent.id == 9);
        }
        assert!(best_drawn > 20, "the best is drawn often: {best_drawn}");
        let inspirations = island.inspirations(9, 4, &mut rng);
        assert_eq!(inspirations.len(), 4);
        assert!(inspirations.iter().all(|m| m.id != 9));
        assert_eq!(inspirations[0].id, 8, "the best other comes first");
    }

    #[test]
    fn migration_copies_the_best_along_the_ring() {
        let mut islands = vec![Island::default(), Island::default()];
        islands[0].add(&axes(), member(1, 5.0, 0.1));
        islands[0].add(&axes(), member(2, 1.0, 0.5));
        islands[1].add(&axes(), member(3, 3.0, 0.1));
        assert_eq!(migrate(&mut islands, &axes(), 1), 2);
        assert!(islands[1].members.iter().any(|m| m.id == 1));
        assert!(islands[0].members.iter().any(|m| m.id == 3));
        assert!(!islands[1].members.iter().any(|m| m.id == 2));
    }
}
