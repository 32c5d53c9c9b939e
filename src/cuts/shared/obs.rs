//! The SparseGPT pruning step for one weight matrix (Frantar & Alistarh, 2023), following the
//! reference implementation: inverse Hessian through Cholesky, its upper Cholesky factor, columns
//! in blocks with an adaptive mask per block (w²/d²), OBS error compensation inside the block and
//! a lazy batch update of the columns after it. N:M masks are chosen per group of M input
//! columns on the already-updated weights. Also the magnitude baseline.

use faer::linalg::solvers::DenseSolveCore;
use faer::{Mat, Side};

use crate::error::{Error, Result};

/// What to prune.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub enum Pattern {
    /// This fraction of each matrix's weights.
    Unstructured(f64),
    /// N zeros in every group of M consecutive input columns of a row.
    NofM { n: usize, m: usize },
}

/// Settings of the OBS solver.
#[derive(Debug, Clone, Copy)]
pub struct Solver {
    pub block: usize,
    /// Dampening, relative to the mean of the Hessian's diagonal.
    pub damp: f64,
}

/// What one matrix's pruning did.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct PruneStats {
    /// Σ (w − q)² / d² / 2: the OBS estimate of the squared output error.
    pub loss: f64,
    /// The damping finally used (raised when the damped Hessian was not positive definite).
    pub damp: f64,
    pub dead_inputs: usize,
}

/// Inverse of the damped Hessian and its upper Cholesky factor; dead inputs get H_ii = 1 and
/// their weights are zeroed. Damping is raised ×10 until the factorisation succeeds.
fn inverse_hessian_factor(
    h: &Mat<f64>,
    w: &mut [f64],
    cols: usize,
    damp: f64,
) -> Result<(Mat<f64>, f64, usize)> {
    let mut h = h.clone();
    let mut dead = 0;
    for j in 0..cols {
        if h[(j, j)] == 0.0 {
            h[(j, j)] = 1.0;
            dead += 1;
            for row in w.chunks_exact_mut(cols) {
                row[j] = 0.0;
            }
        }
    }
    let mean_diag = (0..cols).map(|j| h[(j, j)]).sum::<f64>() / cols as f64;
    let mut damp = damp;
    for _ in 0..10 {
        let damped = Mat::from_fn(cols, cols, |i, j| {
            h[(i, j)] + if i == j { damp * mean_diag } else { 0.0 }
        });
        if let Ok(llt) = damped.llt(Side::Lower) {
            let inverse = llt.inverse();
            if let Ok(factor) = inverse.llt(Side::Lower) {
                // Upper factor U with H⁻¹ = Uᵀ U.
                let upper = factor.L().transpose().to_owned();
                if upper.col_iter().all(|c| c.iter().all(|v| v.is_finite())) {
                    return Ok((upper, damp, dead));
                }
            }
        }
        damp = if damp > 0.0 { damp * 10.0 } else { 1e-6 };
    }
    Err(Error::Spec(
        "the Hessian is not positive definite even after raising the damping 10 times".into(),
    ))
}

/// Prunes `w` (rows × cols, row-major) in place with OBS updates; `h` is the input Hessian (cols×cols).
pub fn sparsegpt(
    w: &mut [f64],
    rows: usize,
    cols: usize,
    h: &Mat<f64>,
    pattern: Pattern,
    solver: Solver,
) -> Result<PruneStats> {
    let (hinv, damp, dead) = inverse_hessian_factor(h, w, cols, solver.damp)?;
    let mut loss = 0.0;
    let block = solver.block.max(1);
    let mut i1 = 0;
    while i1 < cols {
        let i2 = (i1 + block).min(cols);
        let count = i2 - i1;
        // W1 = W[:, i1:i2], worked on in place; Err1 collects the scaled errors.
        let mut err = vec![0f64; rows * count];
        let mut mask = vec![false; rows * count];
        if let Pattern::Unstructured(sparsity) = pattern {
            let mut scores: Vec<f64> = Vec::with_capacity(rows * count);
            for r in 0..rows {
                for c in 0..count {
                    let d = hinv[(i1 + c, i1 + c)];
                    scores.push(w[r * cols + i1 + c].powi(2) / (d * d));
                }
            }
            let mut sorted = scores.clone();
            sorted.sort_by(|a, b| a.total_cmp(b));
            let k = ((scores.len() as f64) * sparsity) as usize;
            if k < sorted.len() {
                let thresh = sorted[k];
                for (m, s) in mask.iter_mut().zip(&scores) {
                    *m = *s <= thresh;
                }
            } else {
                mask.iter_mut().for_each(|m| *m = true);
            }
        }
        for i in 0..count {
            let col = i1 + i;
            if let Pattern::NofM { n, m } = pattern {
                if i % m == 0 {
                    let width = m.min(count - i);
                    for r in 0..rows {
                        let mut group: Vec<(f64, usize)> = (0..width)
                            .map(|k| {
                                let d = hinv[(col + k, col + k)];
                                (w[r * cols + col + k].powi(2) / (d * d), k)
                            })
                            .collect();
                        group.sort_by(|a, b| a.0.total_cmp(&b.0));
                        for &(_, k) in group.iter().take(n.min(width)) {
                            mask[r * count + i + k] = true;
                        }
                    }
                }
            }
            let d = hinv[(col, col)];
            for r in 0..rows {
                let wv = w[r * cols + col];
                let q = if mask[r * count + i] { 0.0 } else { wv };
                loss += (wv - q).powi(2) / (d * d) / 2.0;
                let e = (wv - q) / d;
                err[r * count + i] = e;
                if e != 0.0 {
                    let row = &mut w[r * cols..(r + 1) * cols];
                    for j in col..i2 {
                        row[j] -= e * hinv[(col, j)];
                    }
                }
                w[r * cols + col] = q;
            }
        }
        // Lazy batch update of the columns after the block: W[:, i2:] -= Err1 · Hinv[i1:i2, i2:].
        if i2 < cols {
            let e = Mat::from_fn(rows, count, |r, c| err[r * count + c]);
            let update: Mat<f64> = &e * hinv.submatrix(i1, i2, count, cols - i2);
            for r in 0..rows {
                for j in i2..cols {
                    w[r * cols + j] -= update[(r, j - i2)];
                }
            }
        }
        i1 = i2;
    }
    Ok(PruneStats {
        loss,
        damp,
        dead_inputs: dead,
    })
}

/// The magnitude baseline: zero the smallest |w| (per matrix, or per N:M group), no updates.
pub fn magnitude(w: &mut [f64], rows: usize, cols: usize, pattern: Pattern) {
    match pattern {
        Pattern::Unstructured(sparsity) => {
            let mut sorted: Vec<f64> = w.iter().map(|v| v.abs()).collect();
            sorted.sort_by(|a, b| a.total_cmp(b));
            let k = ((w.len() as f64) * sparsity) as usize;
            if k == 0 {
                return;
            }
            let thresh = sorted[k - 1];
            let mut zeroed = 0;
            for v in w.iter_mut() {
                if v.abs() <= thresh && zeroed < k {
                    *v = 0.0;
                    zeroed += 1;
                }
            }
        }
        Pattern::NofM { n, m } => {
            for r in 0..rows {
                for g in (0..cols).step_by(m) {
                    let width = m.min(cols - g);
                    let mut idx: Vec<usize> = (0..width).collect();
                    idx.sort_by(|&a, &b| {
                        w[r * cols + g + a]
                            .abs()
                            .total_cmp(&w[r * cols + g + b].abs())
                    });
                    for &k in idx.iter().take(n.min(width)) {
                        w[r * cols + g + k] = 0.0;
                    }
                }
            }
        }
    }
}
