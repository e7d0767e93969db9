//! The f64 SVD on matrices whose decomposition is known: a hand-worked 2 × 2, matrices built
//! from chosen singular values and random orthogonal factors (wide, tall, rank-deficient),
//! and the Eckart–Young error of every truncation.

mod mechanisms;

use kernels::trainable::svd::Svd;
use mechanisms::{assert_close, matmul, random_values};

/// A random `[n, k]` matrix with orthonormal columns (Gram–Schmidt, twice for accuracy).
fn orthonormal_columns(n: usize, k: usize, seed: u64) -> Vec<f64> {
    let raw = random_values(n * k, 1.0, seed);
    let mut columns: Vec<Vec<f64>> = (0..k)
        .map(|c| (0..n).map(|r| f64::from(raw[r * k + c])).collect())
        .collect();
    for c in 0..k {
        for _ in 0..2 {
            for p in 0..c {
                let projection: f64 = columns[c].iter().zip(&columns[p]).map(|(a, b)| a * b).sum();
                let previous = columns[p].clone();
                columns[c]
                    .iter_mut()
                    .zip(&previous)
                    .for_each(|(a, b)| *a -= projection * b);
            }
        }
        let norm = columns[c].iter().map(|v| v * v).sum::<f64>().sqrt();
        columns[c].iter_mut().for_each(|v| *v /= norm);
    }
    (0..n)
        .flat_map(|r| columns.iter().map(move |col| col[r]))
        .collect()
}

/// `U diag(σ) Vᵀ` with random orthonormal `U` `[rows, k]` and `V` `[cols, k]`.
fn with_singular_values(rows: usize, cols: usize, sigma: &[f64], seed: u64) -> Vec<f64> {
    let k = sigma.len();
    let u = orthonormal_columns(rows, k, seed);
    let v = orthonormal_columns(cols, k, seed + 1);
    let u_sigma: Vec<f64> = u
        .chunks_exact(k)
        .flat_map(|row| row.iter().zip(sigma).map(|(a, s)| a * s))
        .collect();
    let vt: Vec<f64> = (0..k)
        .flat_map(|i| (0..cols).map(move |c| (i, c)))
        .map(|(i, c)| v[c * k + i])
        .collect();
    matmul(&u_sigma, rows, k, &vt, cols)
}

fn frobenius_gap(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).powi(2))
        .sum::<f64>()
        .sqrt()
}

/// `Uᵀ U = I` on the columns whose singular value is non-zero, and `V Vᵀ = I` likewise.
fn assert_orthonormal(svd: &Svd) {
    let k = svd.singular_values.len();
    for i in 0..k {
        for j in 0..k {
            if svd.singular_values[i] == 0.0 || svd.singular_values[j] == 0.0 {
                continue;
            }
            let expected = if i == j { 1.0 } else { 0.0 };
            let uu: f64 = (0..svd.rows)
                .map(|r| svd.u[r * k + i] * svd.u[r * k + j])
                .sum();
            let vv: f64 = (0..svd.cols)
                .map(|c| svd.vt[i * svd.cols + c] * svd.vt[j * svd.cols + c])
                .sum();
            assert!((uu - expected).abs() < 1e-10, "Uᵀ U [{i}, {j}] = {uu}");
            assert!((vv - expected).abs() < 1e-10, "V Vᵀ [{i}, {j}] = {vv}");
        }
    }
}

#[test]
fn a_hand_worked_two_by_two() {
    // A Aᵀ = [[9, 12], [12, 41]] has eigenvalues 45 and 5.
    let svd = Svd::new(&[3.0, 0.0, 4.0, 5.0], 2, 2).unwrap();
    assert_close(
        &svd.singular_values,
        &[45f64.sqrt(), 5f64.sqrt()],
        1e-14,
        "singular values",
    );
    assert_close(
        &svd.reconstruct(2).unwrap(),
        &[3.0, 0.0, 4.0, 5.0],
        1e-14,
        "A",
    );
}

#[test]
fn known_singular_values_are_recovered_sorted_for_wide_and_tall_matrices() {
    let sigma = [7.0, 5.5, 3.0, 1.0, 0.25, 1e-6];
    for (rows, cols) in [(6, 11), (11, 6), (6, 6)] {
        let a = with_singular_values(rows, cols, &sigma, rows as u64 * 31 + cols as u64);
        let svd = Svd::new(&a, rows, cols).unwrap();
        assert_close(
            &svd.singular_values,
            &sigma,
            1e-12,
            &format!("σ of {rows}×{cols}"),
        );
        assert_orthonormal(&svd);
        assert_close(
            &svd.reconstruct(6).unwrap(),
            &a,
            1e-12,
            "full-rank reconstruction",
        );
    }
}

#[test]
fn truncation_error_is_the_eckart_young_bound() {
    let (rows, cols) = (9, 14);
    let a: Vec<f64> = random_values(rows * cols, 1.0, 5)
        .into_iter()
        .map(f64::from)
        .collect();
    let svd = Svd::new(&a, rows, cols).unwrap();
    let sigma = &svd.singular_values;
    assert!(
        sigma.windows(2).all(|w| w[0] >= w[1]),
        "not sorted: {sigma:?}"
    );
    for rank in 1..=rows {
        let tail: f64 = sigma[rank..].iter().map(|s| s * s).sum::<f64>().sqrt();
        let error = frobenius_gap(&svd.reconstruct(rank).unwrap(), &a);
        assert!(
            (error - tail).abs() < 1e-10,
            "rank {rank}: ‖A − A_r‖ = {error}, but the dropped σ give {tail}"
        );
    }
    // Any other rank-r matrix does worse: here, A with its last rows zeroed.
    let rank = 4;
    let mut rows_kept = a.clone();
    rows_kept[rank * cols..].fill(0.0);
    assert!(frobenius_gap(&rows_kept, &a) > frobenius_gap(&svd.reconstruct(rank).unwrap(), &a));
}

#[test]
fn rank_deficient_matrices_have_zero_singular_values_and_still_reconstruct() {
    let a = with_singular_values(8, 5, &[2.0, 1.0], 3);
    let svd = Svd::new(&a, 8, 5).unwrap();
    assert_close(&svd.singular_values[..2], &[2.0, 1.0], 1e-12, "σ");
    assert!(svd.singular_values[2..].iter().all(|s| s.abs() < 1e-12));
    assert_close(
        &svd.reconstruct(2).unwrap(),
        &a,
        1e-12,
        "rank-2 reconstruction",
    );
    assert_close(
        &svd.reconstruct(5).unwrap(),
        &a,
        1e-12,
        "full reconstruction",
    );
    let zero = Svd::new(&[0.0; 6], 2, 3).unwrap();
    assert_eq!(zero.singular_values, vec![0.0, 0.0]);
}

#[test]
fn factors_multiply_to_the_truncation() {
    let a: Vec<f64> = random_values(5 * 7, 1.0, 8)
        .into_iter()
        .map(f64::from)
        .collect();
    let svd = Svd::new(&a, 5, 7).unwrap();
    let (up, down) = svd.rank_factors(3).unwrap();
    assert_eq!((up.len(), down.len()), (5 * 3, 3 * 7));
    assert_close(
        &matmul(&up, 5, 3, &down, 7),
        &svd.reconstruct(3).unwrap(),
        1e-14,
        "U_r · Σ_r V_rᵀ",
    );
}

#[test]
fn bad_input_is_rejected() {
    let err = |r: Result<Svd, kernels::Error>| r.unwrap_err().to_string();
    assert!(err(Svd::new(&[1.0; 5], 2, 3)).contains("needs rows, cols >= 1 and 6 values"));
    assert!(err(Svd::new(&[], 0, 3)).contains("rows, cols >= 1"));
    assert!(err(Svd::new(&[1.0, f64::NAN], 1, 2)).contains("non-finite"));
    let svd = Svd::new(&[1.0, 2.0, 3.0, 4.0], 2, 2).unwrap();
    assert!(svd
        .rank_factors(0)
        .unwrap_err()
        .to_string()
        .contains("rank 0"));
    assert!(svd
        .rank_factors(3)
        .unwrap_err()
        .to_string()
        .contains("min(rows, cols) = 2"));
}
