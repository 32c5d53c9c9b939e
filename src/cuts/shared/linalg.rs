//! faer bridges: candle tensors ⇄ f64 matrices and a truncated SVD. Tall matrices (embedding
//! tables) go through the eigendecomposition of the small Gram matrix, which is ~10× faster than a
//! thin SVD and exact to f64 rounding for the leading singular vectors we keep.

use candle_core::{Device, Tensor};
use faer::{Mat, MatRef, Side};

use crate::error::{Error, Result};

/// A 2-d tensor as an f64 matrix.
pub fn to_mat(t: &Tensor) -> Result<Mat<f64>> {
    let (m, n) = t.dims2()?;
    let v = t.flatten_all()?.to_vec1::<f32>()?;
    Ok(Mat::from_fn(m, n, |i, j| v[i * n + j] as f64))
}

/// An f64 matrix as an f32 tensor.
pub fn to_tensor(m: MatRef<'_, f64>) -> Result<Tensor> {
    let (r, c) = (m.nrows(), m.ncols());
    let mut v = Vec::with_capacity(r * c);
    for i in 0..r {
        for j in 0..c {
            v.push(m[(i, j)] as f32);
        }
    }
    Ok(Tensor::from_vec(v, (r, c), &Device::Cpu)?)
}

/// W ≈ left · rightᵀ with `left` = U_r Σ_r (m×r) and `right` = V_r (n×r, orthonormal columns).
pub struct TruncatedSvd {
    pub left: Mat<f64>,
    pub right: Mat<f64>,
    /// All singular values, largest first.
    pub singular_values: Vec<f64>,
}

impl TruncatedSvd {
    /// Fraction of the squared Frobenius norm kept by the first `rank` singular values.
    pub fn retained_energy(&self, rank: usize) -> f64 {
        energy(&self.singular_values, rank)
    }

    /// ‖W − W_r‖_F / ‖W‖_F.
    pub fn relative_error(&self, rank: usize) -> f64 {
        (1.0 - self.retained_energy(rank)).max(0.0).sqrt()
    }
}

/// Fraction of Σσ² carried by the first `rank` values.
pub fn energy(singular_values: &[f64], rank: usize) -> f64 {
    let total: f64 = singular_values.iter().map(|s| s * s).sum();
    if total == 0.0 {
        return 1.0;
    }
    singular_values
        .iter()
        .take(rank)
        .map(|s| s * s)
        .sum::<f64>()
        / total
}

/// The best rank-`rank` approximation of `w` (Eckart–Young). `what` names the matrix (its
/// tensor, and how it was formed) in every error, so a failure says which of a model's many
/// matrices it was.
pub fn truncated_svd(w: MatRef<'_, f64>, rank: usize, what: &str) -> Result<TruncatedSvd> {
    let fail = |msg: String| Error::Spec(format!("SVD of {what}: {msg}"));
    let (m, n) = (w.nrows(), w.ncols());
    if rank == 0 || rank > m.min(n) {
        return Err(Error::Internal(format!(
            "SVD of {what}: rank {rank} is outside 1..={}",
            m.min(n)
        )));
    }
    // A product computed in f32 (a factorized table multiplied out, a whitened weight) may
    // overflow even when every stored weight is finite; the solvers would turn it into NaN
    // factors instead of failing.
    if let Some((i, j)) = first_non_finite(w) {
        return Err(fail(format!(
            "the {m}×{n} matrix holds a non-finite value at ({i}, {j})"
        )));
    }
    let svd = svd_of_finite(w, rank).map_err(fail)?;
    let finite = |x: &Mat<f64>| first_non_finite(x.as_ref()).is_none();
    if !(finite(&svd.left)
        && finite(&svd.right)
        && svd.singular_values.iter().all(|s| s.is_finite()))
    {
        return Err(fail(
            "the factors are not finite (the values are too large to decompose in f64)".into(),
        ));
    }
    Ok(svd)
}

/// The first (row, column) holding NaN or ±∞.
fn first_non_finite(w: MatRef<'_, f64>) -> Option<(usize, usize)> {
    (0..w.ncols())
        .flat_map(|j| (0..w.nrows()).map(move |i| (i, j)))
        .find(|&(i, j)| !w[(i, j)].is_finite())
}

fn svd_of_finite(w: MatRef<'_, f64>, rank: usize) -> std::result::Result<TruncatedSvd, String> {
    let (m, n) = (w.nrows(), w.ncols());
    if m >= 4 * n {
        return gram_svd(w, rank);
    }
    if n >= 4 * m {
        // Wᵀ = V Σ Uᵀ: solve the transpose and swap the factors.
        let t = gram_svd(w.transpose(), rank)?;
        // Wᵀ ≈ t.left · t.rightᵀ with t.left = V Σ, t.right = U → W ≈ (U Σ) Vᵀ.
        let sigma = &t.singular_values;
        let left = Mat::from_fn(m, rank, |i, k| t.right[(i, k)] * sigma[k]);
        let right = Mat::from_fn(n, rank, |j, k| {
            if sigma[k] > 0.0 {
                t.left[(j, k)] / sigma[k]
            } else {
                0.0
            }
        });
        return Ok(TruncatedSvd {
            left,
            right,
            singular_values: t.singular_values,
        });
    }
    let svd = w
        .thin_svd()
        .map_err(|e| format!("the SVD did not converge ({e:?})"))?;
    let (u, s, v) = (svd.U(), svd.S(), svd.V());
    let sigma: Vec<f64> = (0..m.min(n)).map(|k| s[k]).collect();
    let left = Mat::from_fn(m, rank, |i, k| u[(i, k)] * sigma[k]);
    let right = Mat::from_fn(n, rank, |j, k| v[(j, k)]);
    Ok(TruncatedSvd {
        left,
        right,
        singular_values: sigma,
    })
}

/// Tall W (m ≫ n): eigen-decompose WᵀW = V Σ² Vᵀ, then U Σ = W V.
fn gram_svd(w: MatRef<'_, f64>, rank: usize) -> std::result::Result<TruncatedSvd, String> {
    let n = w.ncols();
    let gram: Mat<f64> = w.transpose() * w;
    let eig = gram.self_adjoint_eigen(Side::Lower).map_err(|e| {
        format!("the eigendecomposition of its Gram matrix did not converge ({e:?})")
    })?;
    // Eigenvalues come in nondecreasing order: reverse for largest first.
    let (values, vectors) = (eig.S(), eig.U());
    let order: Vec<usize> = (0..n).rev().collect();
    let singular_values: Vec<f64> = order.iter().map(|&k| values[k].max(0.0).sqrt()).collect();
    let right = Mat::from_fn(n, rank, |j, k| vectors[(j, order[k])]);
    let left: Mat<f64> = w * &right;
    Ok(TruncatedSvd {
        left,
        right,
        singular_values,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::rng::Rng;

    fn random(m: usize, n: usize, seed: u64) -> Mat<f64> {
        let mut rng = Rng::new(seed);
        Mat::from_fn(m, n, |_, _| rng.normal() as f64)
    }

    fn reconstruction_error(w: &Mat<f64>, svd: &TruncatedSvd) -> f64 {
        let approx: Mat<f64> = &svd.left * svd.right.transpose();
        let diff = w - &approx;
        diff.norm_l2() / w.norm_l2()
    }

    #[test]
    fn gram_and_thin_svd_paths_agree_with_eckart_young() {
        for (m, n) in [(200, 12), (12, 200), (30, 20)] {
            let w = random(m, n, (m * n) as u64);
            let svd = truncated_svd(w.as_ref(), 5, "w").unwrap();
            let err = reconstruction_error(&w, &svd);
            assert!(
                (err - svd.relative_error(5)).abs() < 1e-9,
                "{m}x{n}: {err} vs {}",
                svd.relative_error(5)
            );
            let full = truncated_svd(w.as_ref(), m.min(n), "w").unwrap();
            assert!(reconstruction_error(&w, &full) < 1e-9);
        }
    }

    #[test]
    fn exact_low_rank_matrices_are_recovered() {
        let w: Mat<f64> = &random(100, 3, 1) * random(3, 16, 2);
        let svd = truncated_svd(w.as_ref(), 3, "w").unwrap();
        assert!(reconstruction_error(&w, &svd) < 1e-9);
        assert!(svd.retained_energy(3) > 1.0 - 1e-12);
    }

    #[test]
    fn every_failure_names_the_matrix() {
        let name = "`encoder.layer.3.attention.self.query.weight`";
        for (m, n) in [(200, 12), (12, 200), (30, 20)] {
            let mut w = random(m, n, 7);
            w[(m / 2, n / 2)] = f64::INFINITY;
            let err = truncated_svd(w.as_ref(), 2, name)
                .err()
                .unwrap()
                .to_string();
            assert!(err.contains(name) && err.contains("non-finite"), "{err}");
            let w = random(m, n, 8);
            let err = truncated_svd(w.as_ref(), 0, name)
                .err()
                .unwrap()
                .to_string();
            assert!(err.contains(name), "{err}");
        }
    }
}
