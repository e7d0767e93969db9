//! What a campaign knows between evaluations: islands of scored programs, the mutator
//! bandit, and the texts, numbers and feedback that prompts show. A resumed campaign
//! rebuilds it from the database through the same [`Search::admit`] that built it live, so
//! the two cannot drift apart.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use evaluator::Evaluation;

use super::bandit::{Arm, Bandit};
use super::population::{migrate, Axis, Island, Member};
use crate::campaign::CampaignConfig;
use crate::db::MutatorStats;

/// A program the search has evaluated, as parents and prompts need it.
#[derive(Clone, Debug)]
pub struct Known {
    pub id: i64,
    pub text: Arc<str>,
    pub generation: u32,
    /// Its standing: the mean score over its trials when it passed every one.
    pub score: Option<f64>,
    /// The first trial's metrics and feedback.
    pub metrics: BTreeMap<String, f64>,
    pub feedback: String,
}

/// A stored program, as the search needs it to take in its evaluations.
#[derive(Clone, Copy, Debug)]
pub struct Origin<'a> {
    pub id: i64,
    pub text: &'a str,
    pub island: u32,
    pub generation: u32,
    /// Seeds join every island.
    pub is_seed: bool,
}

pub struct Search {
    pub axes: Vec<Axis>,
    pub islands: Vec<Island>,
    pub bandit: Bandit,
    pub known: HashMap<i64, Known>,
    /// The newest lessons, oldest first.
    pub insights: Vec<String>,
    migration_interval: u64,
    migrants: usize,
    /// First evaluations taken in: the migration clock.
    admitted: u64,
    /// The archive as last written to the database, to write only what changed.
    written_cells: HashMap<(u32, String), i64>,
}

/// Insights a prompt shows at most.
const INSIGHTS_SHOWN: usize = 5;

impl Search {
    pub fn new(config: &CampaignConfig) -> Search {
        let axes = config
            .archive
            .descriptors
            .iter()
            .map(|d| Axis {
                name: d.name.clone(),
                lo: d.range[0],
                hi: d.range[1],
                bins: d.bins as usize,
            })
            .collect();
        let arms = config
            .mutator_weights()
            .into_iter()
            .map(|(mutator, weight)| Arm::new(mutator, weight))
            .collect();
        Search {
            axes,
            islands: vec![Island::default(); config.islands.count as usize],
            bandit: Bandit::new(arms),
            known: HashMap::new(),
            insights: Vec::new(),
            migration_interval: u64::from(config.islands.migration_interval),
            migrants: config.islands.migrants as usize,
            admitted: 0,
            written_cells: HashMap::new(),
        }
    }

    /// Takes in the statistics a resumed campaign's bandit had learnt.
    pub fn restore_bandit(&mut self, stats: &[MutatorStats]) {
        for arm in &mut self.bandit.arms {
            let name = arm.mutator.name();
            if let Some(s) = stats.iter().find(|s| s.mutator == name) {
                arm.uses = s.uses.max(0) as u64;
                arm.reward = s.reward_sum;
            }
        }
    }

    pub fn add_insight(&mut self, text: String) {
        self.insights.push(text);
        let excess = self.insights.len().saturating_sub(INSIGHTS_SHOWN);
        self.insights.drain(..excess);
    }

    /// Takes in a program's evaluations (its first trial, then any confirmations): it
    /// joins its island (every island, for a seed) when it passed them all, and every
    /// `migration_interval` first evaluations the islands trade their best.
    pub fn admit(&mut self, origin: Origin, evaluations: &[Evaluation]) {
        let Some(first) = evaluations.first() else {
            return;
        };
        let passed_all = evaluations.iter().all(|e| e.passed && e.score.is_some());
        let score = passed_all.then(|| {
            evaluations.iter().filter_map(|e| e.score).sum::<f64>() / evaluations.len() as f64
        });
        self.known.insert(
            origin.id,
            Known {
                id: origin.id,
                text: Arc::from(origin.text),
                generation: origin.generation,
                score,
                metrics: first.metrics.clone(),
                feedback: first.feedback.clone(),
            },
        );
        if let Some(score) = score {
            let member = Member {
                id: origin.id,
                score,
                tiebreak: first.metrics.get(TIEBREAK).copied().unwrap_or(0.0),
                descriptors: first.descriptors.clone(),
                objectives: objectives(score, first),
            };
            let count = self.islands.len() as u32;
            let homes: Vec<usize> = if origin.is_seed {
                (0..self.islands.len()).collect()
            } else {
                vec![(origin.island % count) as usize]
            };
            for home in homes {
                self.islands[home].add(&self.axes, member.clone());
            }
        }
        self.admitted += 1;
        if self.islands.len() > 1
            && self.migration_interval > 0
            && self.admitted.is_multiple_of(self.migration_interval)
        {
            let moved = migrate(&mut self.islands, &self.axes, self.migrants);
            tracing::debug!("migration moved {moved} programs between islands");
        }
    }

    /// The best program over every island, and its standing.
    pub fn best(&self) -> Option<(i64, f64)> {
        self.islands
            .iter()
            .filter_map(|island| island.ranked().first().map(|m| (m.id, m.score)))
            .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)))
    }

    /// The best standing on an island.
    pub fn island_best(&self, island: u32) -> Option<f64> {
        self.islands
            .get(island as usize)
            .and_then(|i| i.ranked().first().map(|m| m.score))
    }

    /// Archive cells whose elite changed since the last call: `(island, cell key, program)`.
    pub fn archive_changes(&mut self) -> Vec<(u32, String, i64)> {
        let mut changes = Vec::new();
        for (i, island) in self.islands.iter().enumerate() {
            for (cell, id) in island.elites() {
                let key = (i as u32, cell_key(&cell));
                if self.written_cells.get(&key) != Some(&id) {
                    changes.push((key.0, key.1.clone(), id));
                    self.written_cells.insert(key, id);
                }
            }
        }
        changes
    }
}

/// A cell's coordinates as the database keys it: bins joined by commas.
fn cell_key(cell: &[usize]) -> String {
    cell.iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The metric that orders programs of equal score: the cost model's FLOP reduction, which a
/// drop-in task reports beside its measured speed-up (other tasks rank ties by id).
const TIEBREAK: &str = "flops_reduction";

/// The two objectives of the islands' Pareto fronts, both to maximise: the score, and the
/// fidelity (KL) when the task measures one, else the first descriptor, as a cost.
fn objectives(score: f64, evaluation: &Evaluation) -> [f64; 2] {
    let cost = evaluation
        .metrics
        .get("kl_max_mean")
        .or_else(|| evaluation.descriptors.values().next())
        .copied()
        .unwrap_or(0.0);
    [score, -cost]
}
