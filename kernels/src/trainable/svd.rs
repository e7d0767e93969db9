//! Singular value decomposition in f64 by one-sided Jacobi rotations (Hestenes 1958).
//!
//! Rotations of pairs of rows make the rows of a short, wide matrix mutually orthogonal:
//! then row `i` is `σ_i v_iᵀ`, and the accumulated rotations give `U`. It is simple, needs
//! no library, and is accurate to working precision even for small singular values, which
//! the eigenvalues of `A Aᵀ` would square away. A tall matrix is decomposed through its
//! transpose. Cost: a few sweeps of `m² / 2` rotations of length-`n` rows, fine for the
//! projection matrices of small models (384 × 576 for SmolLM2's stacked K and V).

use crate::{Error, Result};

/// `A = U · diag(σ) · Vᵀ` for an `[rows, cols]` matrix, with `k = min(rows, cols)` singular
/// values in descending order. Where `σ_i = 0`, column `i` of `U` or row `i` of `Vᵀ` may be
/// zero rather than a unit vector (any choice reconstructs `A`).
#[derive(Clone, Debug, PartialEq)]
pub struct Svd {
    pub rows: usize,
    pub cols: usize,
    /// `[rows, k]`, row-major.
    pub u: Vec<f64>,
    /// `k` values, largest first.
    pub singular_values: Vec<f64>,
    /// `[k, cols]`, row-major.
    pub vt: Vec<f64>,
}

/// Sweeps allowed before giving up; Jacobi converges quadratically, in well under 30.
const MAX_SWEEPS: usize = 60;

impl Svd {
    /// Decomposes `a`, `[rows, cols]` row-major.
    pub fn new(a: &[f64], rows: usize, cols: usize) -> Result<Svd> {
        if rows == 0 || cols == 0 || a.len() != rows * cols {
            return Err(Error::InvalidRequest(format!(
                "SVD: a [{rows}, {cols}] matrix needs rows, cols >= 1 and {} values, got {}",
                rows * cols,
                a.len()
            )));
        }
        if let Some(bad) = a.iter().find(|v| !v.is_finite()) {
            return Err(Error::InvalidRequest(format!(
                "SVD: the matrix holds a non-finite value ({bad})"
            )));
        }
        if rows <= cols {
            let (rotations, orthogonal_rows) = orthogonalize_rows(a.to_vec(), rows, cols)?;
            // Row i of the rotations is U's column i; row i of the result is σ_i v_iᵀ.
            let (sigma, vt) = normalize_rows(&orthogonal_rows, cols);
            Ok(Svd::sorted(
                rows,
                cols,
                transpose(&rotations, rows, rows),
                sigma,
                vt,
            ))
        } else {
            // Aᵀ = V Σ Uᵀ: the roles of the factors swap.
            let (rotations, orthogonal_rows) =
                orthogonalize_rows(transpose(a, rows, cols), cols, rows)?;
            let (sigma, ut) = normalize_rows(&orthogonal_rows, rows);
            Ok(Svd::sorted(
                rows,
                cols,
                transpose(&ut, cols, rows),
                sigma,
                rotations,
            ))
        }
    }

    /// Orders the factors by descending singular value.
    fn sorted(rows: usize, cols: usize, u: Vec<f64>, sigma: Vec<f64>, vt: Vec<f64>) -> Svd {
        let k = sigma.len();
        let mut order: Vec<usize> = (0..k).collect();
        order.sort_by(|&a, &b| sigma[b].total_cmp(&sigma[a]));
        Svd {
            rows,
            cols,
            u: (0..rows)
                .flat_map(|r| order.iter().map(move |&i| r * k + i))
                .map(|at| u[at])
                .collect(),
            singular_values: order.iter().map(|&i| sigma[i]).collect(),
            vt: order
                .iter()
                .flat_map(|&i| vt[i * cols..(i + 1) * cols].iter().copied())
                .collect(),
        }
    }

    /// The best rank-`rank` factors (Eckart–Young): `U_r` `[rows, rank]` and `Σ_r V_rᵀ`
    /// `[rank, cols]`, whose product is the truncated matrix.
    pub fn rank_factors(&self, rank: usize) -> Result<(Vec<f64>, Vec<f64>)> {
        let k = self.singular_values.len();
        if rank == 0 || rank > k {
            return Err(Error::InvalidRequest(format!(
                "SVD: rank {rank} must be between 1 and min(rows, cols) = {k}"
            )));
        }
        let u_r = (0..self.rows)
            .flat_map(|r| self.u[r * k..r * k + rank].iter().copied())
            .collect();
        let sigma_vt_r = (0..rank)
            .flat_map(|i| {
                let sigma = self.singular_values[i];
                self.vt[i * self.cols..(i + 1) * self.cols]
                    .iter()
                    .map(move |v| sigma * v)
            })
            .collect();
        Ok((u_r, sigma_vt_r))
    }

    /// `U_r Σ_r V_rᵀ`, `[rows, cols]`.
    pub fn reconstruct(&self, rank: usize) -> Result<Vec<f64>> {
        let (u_r, sigma_vt_r) = self.rank_factors(rank)?;
        Ok(matmul(&u_r, self.rows, rank, &sigma_vt_r, self.cols))
    }
}

/// Rotates pairs of rows of `b` (`[m, n]`, `m <= n`) until every pair is orthogonal.
/// Returns the accumulated rotation `Q` (`[m, m]`, with `Q · A = B`) and `B`.
fn orthogonalize_rows(mut b: Vec<f64>, m: usize, n: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    let mut q = vec![0.0; m * m];
    (0..m).for_each(|i| q[i * m + i] = 1.0);
    let tolerance = f64::EPSILON * m as f64;
    for _ in 0..MAX_SWEEPS {
        let mut rotated = false;
        // Squared row norms, kept current as rows rotate (and recomputed each sweep, so that
        // rounding cannot drift), so that a pair costs one dot product unless it rotates.
        let mut norms: Vec<f64> = b.chunks_exact(n).map(|row| dot(row, row)).collect();
        for i in 0..m {
            for j in i + 1..m {
                let (bi, bj) = row_pair(&mut b, n, i, j);
                let (alpha, beta) = (norms[i], norms[j]);
                let gamma = dot(bi, bj);
                if gamma.abs() <= tolerance * (alpha * beta).sqrt() || gamma == 0.0 {
                    continue;
                }
                rotated = true;
                // The rotation that zeroes the pair's inner product, with the smaller angle.
                let zeta = (beta - alpha) / (2.0 * gamma);
                let t = zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
                let cos = 1.0 / (1.0 + t * t).sqrt();
                let sin = cos * t;
                rotate(bi, bj, cos, sin);
                // The rotation moves t·γ of squared norm from row i to row j.
                (norms[i], norms[j]) = (alpha - t * gamma, beta + t * gamma);
                let (qi, qj) = row_pair(&mut q, m, i, j);
                rotate(qi, qj, cos, sin);
            }
        }
        if !rotated {
            return Ok((q, b));
        }
    }
    Err(Error::InvalidRequest(format!(
        "SVD: Jacobi rotations did not converge in {MAX_SWEEPS} sweeps"
    )))
}

/// Rows `i < j` of a row-major matrix with `width` columns, both mutable.
fn row_pair(matrix: &mut [f64], width: usize, i: usize, j: usize) -> (&mut [f64], &mut [f64]) {
    let (head, tail) = matrix.split_at_mut(j * width);
    (&mut head[i * width..(i + 1) * width], &mut tail[..width])
}

fn rotate(x: &mut [f64], y: &mut [f64], cos: f64, sin: f64) {
    for (a, b) in x.iter_mut().zip(y.iter_mut()) {
        let (xa, yb) = (*a, *b);
        *a = cos * xa - sin * yb;
        *b = sin * xa + cos * yb;
    }
}

/// Norms of the rows and the rows scaled to unit length (zero rows stay zero).
fn normalize_rows(rows: &[f64], width: usize) -> (Vec<f64>, Vec<f64>) {
    let mut norms = Vec::new();
    let mut unit = Vec::with_capacity(rows.len());
    for row in rows.chunks_exact(width) {
        let norm = dot(row, row).sqrt();
        norms.push(norm);
        unit.extend(row.iter().map(|v| if norm > 0.0 { v / norm } else { 0.0 }));
    }
    (norms, unit)
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `[rows, cols]` → `[cols, rows]`.
fn transpose(a: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    (0..cols)
        .flat_map(|c| (0..rows).map(move |r| a[r * cols + c]))
        .collect()
}

/// `a` `[rows, inner]` times `b` `[inner, cols]`.
fn matmul(a: &[f64], rows: usize, inner: usize, b: &[f64], cols: usize) -> Vec<f64> {
    let mut out = vec![0.0; rows * cols];
    for (r, out_row) in out.chunks_exact_mut(cols).enumerate() {
        for (i, b_row) in b.chunks_exact(cols).enumerate() {
            let a_ri = a[r * inner + i];
            out_row
                .iter_mut()
                .zip(b_row)
                .for_each(|(o, v)| *o += a_ri * v);
        }
    }
    out
}
