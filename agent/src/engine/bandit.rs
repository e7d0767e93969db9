//! Choosing the next mutator: UCB1 over the mutators' rewards (did the child improve on its
//! parent), with each mutator's configured weight scaling its exploration bonus, so that a
//! mutator weighted 0 is never chosen and a heavier one is tried more while evidence is thin.

use rand::Rng;

use crate::mutate::Mutator;

/// One mutator's record; the database keeps it so that a resumed campaign goes on learning.
#[derive(Clone, Debug, PartialEq)]
pub struct Arm {
    pub mutator: Mutator,
    pub weight: f64,
    pub uses: u64,
    /// Sum of rewards in [0, 1].
    pub reward: f64,
}

impl Arm {
    pub fn new(mutator: Mutator, weight: f64) -> Self {
        Self {
            mutator,
            weight,
            uses: 0,
            reward: 0.0,
        }
    }

    fn mean(&self) -> f64 {
        self.reward / self.uses.max(1) as f64
    }
}

#[derive(Clone, Debug)]
pub struct Bandit {
    pub arms: Vec<Arm>,
    /// Exploration strength (√2 is UCB1's).
    pub exploration: f64,
}

impl Bandit {
    pub fn new(arms: Vec<Arm>) -> Self {
        Self {
            arms,
            exploration: std::f64::consts::SQRT_2,
        }
    }

    /// The arm to pull: an untried arm first (drawn by weight), else the highest
    /// `mean + exploration · w · sqrt(ln N / n)` with `w` the weight over the largest weight.
    /// `None` when every weight is 0.
    pub fn choose<R: Rng>(&self, rng: &mut R) -> Option<usize> {
        let max_weight = self.arms.iter().map(|a| a.weight).fold(0.0, f64::max);
        if max_weight <= 0.0 {
            return None;
        }
        let live = || self.arms.iter().enumerate().filter(|(_, a)| a.weight > 0.0);
        let untried: Vec<(usize, f64)> = live()
            .filter(|(_, a)| a.uses == 0)
            .map(|(i, a)| (i, a.weight))
            .collect();
        if !untried.is_empty() {
            return Some(weighted_choice(&untried, rng));
        }
        let total: u64 = live().map(|(_, a)| a.uses).sum();
        let index = |a: &Arm| {
            let bonus = (((total as f64).ln()) / a.uses as f64).sqrt();
            a.mean() + self.exploration * (a.weight / max_weight) * bonus
        };
        live()
            .max_by(|(_, a), (_, b)| index(a).total_cmp(&index(b)))
            .map(|(i, _)| i)
    }

    /// Records one pull of `arm` with a reward clamped to [0, 1].
    pub fn record(&mut self, arm: usize, reward: f64) {
        let reward = if reward.is_finite() {
            reward.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let arm = &mut self.arms[arm];
        arm.uses += 1;
        arm.reward += reward;
    }
}

/// Draws an index from `(index, weight)` pairs with probability proportional to weight.
pub fn weighted_choice<R: Rng>(items: &[(usize, f64)], rng: &mut R) -> usize {
    let total: f64 = items.iter().map(|(_, w)| w.max(0.0)).sum();
    let mut draw = rng.random::<f64>() * total;
    for &(i, w) in items {
        if draw < w.max(0.0) {
            return i;
        }
        draw -= w.max(0.0);
    }
    items.last().expect("not empty").0
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    /// The i-th mutator, for arms whose identity does not matter here.
    fn arm(i: usize, weight: f64) -> Arm {
        Arm::new(Mutator::ALL[i], weight)
    }

    #[test]
    fn untried_arms_come_first_and_zero_weights_never() {
        let mut bandit = Bandit::new(vec![arm(0, 1.0), arm(1, 0.0), arm(2, 1.0)]);
        let mut rng = StdRng::seed_from_u64(1);
        let first = bandit.choose(&mut rng).unwrap();
        bandit.record(first, 0.0);
        let second = bandit.choose(&mut rng).unwrap();
        assert_ne!(first, second);
        assert_ne!(second, 1);
        for _ in 0..100 {
            let arm = bandit.choose(&mut rng).unwrap();
            assert_ne!(arm, 1, "a weight of 0 turns an arm off");
            bandit.record(arm, 0.0);
        }
        assert!(Bandit::new(vec![arm(0, 0.0)]).choose(&mut rng).is_none());
    }

    #[test]
    fn the_better_arm_is_pulled_far_more_often() {
        let mut bandit = Bandit::new(vec![arm(0, 1.0), arm(1, 1.0)]);
        let mut rng = StdRng::seed_from_u64(2);
        for _ in 0..400 {
            let arm = bandit.choose(&mut rng).unwrap();
            let p = if arm == 0 { 0.6 } else { 0.1 };
            let reward = f64::from(u8::from(rng.random_bool(p)));
            bandit.record(arm, reward);
        }
        assert!(
            bandit.arms[0].uses > 3 * bandit.arms[1].uses,
            "{:?}",
            bandit.arms
        );
        assert!(
            bandit.arms[1].uses > 0,
            "exploration still tries the bad arm"
        );
    }

    #[test]
    fn rewards_are_clamped() {
        let mut bandit = Bandit::new(vec![arm(0, 1.0)]);
        bandit.record(0, 7.0);
        bandit.record(0, f64::NAN);
        bandit.record(0, -1.0);
        assert_eq!(bandit.arms[0].reward, 1.0);
        assert_eq!(bandit.arms[0].uses, 3);
    }
}
