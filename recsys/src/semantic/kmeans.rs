//! k-means with seeded k-means++ initialisation and Lloyd iterations until no point changes
//! its cluster, and residual k-means (RQ-KMeans): each level clusters what the levels before
//! it left unexplained.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Points as rows of a flat `[n, dim]` array.
#[derive(Clone, Copy, Debug)]
pub struct Points<'a> {
    pub data: &'a [f32],
    pub dim: usize,
}

impl<'a> Points<'a> {
    /// Checks that `data` holds whole rows of `dim` finite values.
    pub fn new(data: &'a [f32], dim: usize) -> Result<Points<'a>> {
        if dim == 0 || !data.len().is_multiple_of(dim) {
            return Err(Error::InvalidRequest(format!(
                "{} values are not whole rows of dimension {dim}",
                data.len()
            )));
        }
        if let Some(bad) = data.iter().position(|x| !x.is_finite()) {
            return Err(Error::InvalidRequest(format!(
                "point {} has a non-finite coordinate",
                bad / dim
            )));
        }
        Ok(Points { data, dim })
    }

    pub fn len(&self) -> usize {
        self.data.len() / self.dim
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn row(&self, i: usize) -> &'a [f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }
}

/// The points minus their mean, each scaled to unit length (a zero row stays zero).
pub fn centre_and_normalise(points: Points) -> Vec<f32> {
    let (n, dim) = (points.len(), points.dim);
    let mut mean = vec![0f64; dim];
    for i in 0..n {
        for (m, &x) in mean.iter_mut().zip(points.row(i)) {
            *m += f64::from(x) / n as f64;
        }
    }
    let mut out = Vec::with_capacity(points.data.len());
    for i in 0..n {
        let row: Vec<f64> = points
            .row(i)
            .iter()
            .zip(&mean)
            .map(|(&x, m)| f64::from(x) - m)
            .collect();
        let norm = row.iter().map(|x| x * x).sum::<f64>().sqrt();
        let scale = if norm > 0.0 { 1.0 / norm } else { 0.0 };
        out.extend(row.iter().map(|x| (x * scale) as f32));
    }
    out
}

fn distance2(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let d = f64::from(x - y);
            d * d
        })
        .sum()
}

/// A fitted k-means: `k` centroids and each point's cluster.
#[derive(Clone, Debug, PartialEq)]
pub struct KMeans {
    /// `[k, dim]`.
    pub centroids: Vec<f32>,
    pub dim: usize,
    pub assignments: Vec<u32>,
    /// Lloyd iterations run (assignment + update).
    pub iterations: usize,
    /// Whether the last iteration changed no assignment (else `max_iterations` stopped it).
    pub converged: bool,
}

impl KMeans {
    pub fn k(&self) -> usize {
        self.centroids.len() / self.dim
    }

    pub fn centroid(&self, c: usize) -> &[f32] {
        &self.centroids[c * self.dim..(c + 1) * self.dim]
    }

    /// The nearest centroid of `point` (ties to the lower index).
    pub fn nearest(&self, point: &[f32]) -> u32 {
        let mut best = (0, f64::INFINITY);
        for c in 0..self.k() {
            let d = distance2(point, self.centroid(c));
            if d < best.1 {
                best = (c as u32, d);
            }
        }
        best.0
    }

    /// Fits `k` clusters (fewer when there are fewer points) to `points`: k-means++ seeding
    /// from `seed`, then Lloyd iterations until no assignment changes or `max_iterations`.
    /// A cluster left empty is re-seeded with the point farthest from its centroid.
    pub fn fit(points: Points, k: usize, seed: u64, max_iterations: usize) -> Result<KMeans> {
        if points.is_empty() || k == 0 {
            return Err(Error::InvalidRequest(
                "k-means needs at least one point and one cluster".into(),
            ));
        }
        let k = k.min(points.len());
        let dim = points.dim;
        let mut rng = StdRng::seed_from_u64(seed);
        let mut model = KMeans {
            centroids: plus_plus(points, k, &mut rng),
            dim,
            assignments: vec![u32::MAX; points.len()],
            iterations: 0,
            converged: false,
        };
        while model.iterations < max_iterations {
            model.iterations += 1;
            let assigned: Vec<u32> = (0..points.len())
                .into_par_iter()
                .map(|i| model.nearest(points.row(i)))
                .collect();
            let changed = assigned != model.assignments;
            model.assignments = assigned;
            if !changed {
                model.converged = true;
                break;
            }
            model.update(points);
        }
        Ok(model)
    }

    /// Moves each centroid to the mean of its points; an empty cluster takes the point
    /// farthest from its own centroid, which splits the worst-fitted cluster.
    fn update(&mut self, points: Points) {
        let (k, dim) = (self.k(), self.dim);
        let mut sums = vec![0f64; k * dim];
        let mut counts = vec![0usize; k];
        for (i, &c) in self.assignments.iter().enumerate() {
            counts[c as usize] += 1;
            for (s, &x) in sums[c as usize * dim..][..dim]
                .iter_mut()
                .zip(points.row(i))
            {
                *s += f64::from(x);
            }
        }
        let mut taken = vec![false; points.len()];
        for c in 0..k {
            if counts[c] > 0 {
                for (out, s) in self.centroids[c * dim..][..dim]
                    .iter_mut()
                    .zip(&sums[c * dim..][..dim])
                {
                    *out = (s / counts[c] as f64) as f32;
                }
                continue;
            }
            let farthest = (0..points.len())
                .filter(|&i| !taken[i])
                .map(|i| {
                    let own = self.assignments[i] as usize;
                    (i, distance2(points.row(i), self.centroid(own)))
                })
                .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)));
            if let Some((i, _)) = farthest {
                taken[i] = true;
                self.centroids[c * dim..][..dim].copy_from_slice(points.row(i));
            }
        }
    }
}

/// k-means++: the first centre uniformly, each next one with probability proportional to
/// its squared distance from the nearest centre chosen so far.
fn plus_plus(points: Points, k: usize, rng: &mut StdRng) -> Vec<f32> {
    let n = points.len();
    let mut centroids = Vec::with_capacity(k * points.dim);
    let first = rng.random_range(0..n);
    centroids.extend_from_slice(points.row(first));
    let mut nearest: Vec<f64> = (0..n)
        .map(|i| distance2(points.row(i), points.row(first)))
        .collect();
    for _ in 1..k {
        let total: f64 = nearest.iter().sum();
        let chosen = if total > 0.0 {
            let mut target = rng.random::<f64>() * total;
            let mut chosen = n - 1;
            for (i, &d) in nearest.iter().enumerate() {
                if target < d {
                    chosen = i;
                    break;
                }
                target -= d;
            }
            chosen
        } else {
            // Every point sits on a centre already: any point will do.
            rng.random_range(0..n)
        };
        let centre = points.row(chosen);
        centroids.extend_from_slice(centre);
        for (i, d) in nearest.iter_mut().enumerate() {
            *d = d.min(distance2(points.row(i), centre));
        }
    }
    centroids
}

/// How residual k-means runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RqConfig {
    /// Levels of k-means (each item gets one code per level, then a disambiguation code).
    pub levels: usize,
    /// Clusters per level.
    pub codebook_size: usize,
    pub seed: u64,
    /// Lloyd iterations per level at most (each level normally converges well before).
    pub max_iterations: usize,
}

impl Default for RqConfig {
    fn default() -> Self {
        RqConfig {
            levels: 3,
            codebook_size: 64,
            seed: 42,
            max_iterations: 500,
        }
    }
}

/// What one level of residual k-means achieved.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LevelReport {
    /// Codes that at least one item uses.
    pub codes_used: usize,
    pub codebook_size: usize,
    pub iterations: usize,
    pub converged: bool,
    /// Mean squared norm of the residual after this level over that of the input vectors:
    /// how much of the embeddings is still unexplained.
    pub residual_share: f64,
}

/// Residual k-means: per level, the codebook, each point's code and the level's report.
#[derive(Clone, Debug, PartialEq)]
pub struct ResidualKMeans {
    pub levels: Vec<KMeans>,
    pub reports: Vec<LevelReport>,
}

impl ResidualKMeans {
    /// Level 1 clusters the points, level 2 the residuals (point − its level-1 centroid),
    /// level 3 the residuals of those, and so on. Level `l` is seeded with `seed + l`.
    pub fn fit(points: Points, config: &RqConfig) -> Result<ResidualKMeans> {
        if config.levels == 0 || config.codebook_size < 2 {
            return Err(Error::InvalidRequest(format!(
                "residual k-means needs at least one level and a codebook of at least 2 \
                 (got {} levels of {})",
                config.levels, config.codebook_size
            )));
        }
        if config.codebook_size > usize::from(u16::MAX) {
            return Err(Error::InvalidRequest(format!(
                "a codebook of {} codes does not fit a 16-bit code",
                config.codebook_size
            )));
        }
        let dim = points.dim;
        let norm2 = |data: &[f32]| -> f64 {
            data.iter()
                .map(|&x| f64::from(x) * f64::from(x))
                .sum::<f64>()
        };
        let total = norm2(points.data).max(f64::MIN_POSITIVE);
        let mut residual = points.data.to_vec();
        let mut levels = Vec::with_capacity(config.levels);
        let mut reports = Vec::with_capacity(config.levels);
        for level in 0..config.levels {
            let fitted = KMeans::fit(
                Points::new(&residual, dim)?,
                config.codebook_size,
                config.seed.wrapping_add(level as u64),
                config.max_iterations,
            )?;
            for (i, &c) in fitted.assignments.iter().enumerate() {
                let centre = fitted.centroid(c as usize);
                for (r, &m) in residual[i * dim..][..dim].iter_mut().zip(centre) {
                    *r -= m;
                }
            }
            let mut used = fitted.assignments.clone();
            used.sort_unstable();
            used.dedup();
            reports.push(LevelReport {
                codes_used: used.len(),
                codebook_size: config.codebook_size,
                iterations: fitted.iterations,
                converged: fitted.converged,
                residual_share: norm2(&residual) / total,
            });
            levels.push(fitted);
        }
        Ok(ResidualKMeans { levels, reports })
    }

    /// Each point's codes, level by level: `[n][levels]`.
    pub fn codes(&self) -> Vec<Vec<u16>> {
        let n = self.levels.first().map_or(0, |l| l.assignments.len());
        (0..n)
            .map(|i| {
                self.levels
                    .iter()
                    .map(|l| l.assignments[i] as u16)
                    .collect()
            })
            .collect()
    }
}
