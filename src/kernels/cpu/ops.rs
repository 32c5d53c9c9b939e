//! Fused CPU ops with their own backward passes. candle's fused `LayerNorm` and
//! `softmax_last_dim` are custom ops without a backward, so gradients through them are silently
//! dropped (the test that every parameter gets a gradient fails with them); these replace them and
//! are checked against composite candle ops (which do have gradients) in the tests below.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Storage, Tensor};
use rayon::prelude::*;

use super::simd;

/// Elements per parallel task: small enough to use both cores, large enough to amortise.
const CHUNK: usize = 1 << 14;

pub(crate) fn cpu_f32<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
) -> candle_core::Result<&'a [f32]> {
    let data = storage.as_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("fused op needs a contiguous input"),
    }
}

/// Runs `f` on the contiguous f32 data of a CPU tensor.
pub(crate) fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => Ok(f(cpu_f32(cpu, layout)?)),
        _ => candle_core::bail!("fused ops run on the CPU only"),
    }
}

/// LayerNorm over the last dimension: (x, weight, bias) → y.
struct LayerNormOp {
    eps: f32,
}

/// Rows per parallel task of the row-wise ops.
const ROWS: usize = 32;

#[inline(always)]
fn row_stats(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f32;
    let mean = simd::sum(row) / n;
    let mut acc = [0f32; 16];
    let chunks = row.chunks_exact(16);
    let tail: f32 = chunks
        .remainder()
        .iter()
        .map(|v| (v - mean) * (v - mean))
        .sum();
    for c in chunks {
        for i in 0..16 {
            acc[i] += (c[i] - mean) * (c[i] - mean);
        }
    }
    let var = (simd::sum(&acc) + tail) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

simd::twin! {
    /// LayerNorm of each row of `x` (rows of `w.len()`) into `dst`.
    fn norm_rows(x: &[f32], w: &[f32], b: &[f32], eps: f32, dst: &mut [f32]) {
        let h = w.len();
        for (row, out) in x.chunks_exact(h).zip(dst.chunks_exact_mut(h)) {
            let (mean, rstd) = row_stats(row, eps);
            for i in 0..h {
                out[i] = (row[i] - mean) * rstd * w[i] + b[i];
            }
        }
    }
}

simd::twin! {
    /// LayerNorm backward for the rows of `x`: writes their dx and adds their share of dw and db.
    fn norm_rows_backward(
        x: &[f32],
        dy: &[f32],
        w: &[f32],
        eps: f32,
        dx: &mut [f32],
        dw: &mut [f32],
        db: &mut [f32],
        scratch: &mut [f32],
    ) {
        let h = w.len();
        let (xhat, g) = scratch.split_at_mut(h);
        for ((row, dy), dst) in x
            .chunks_exact(h)
            .zip(dy.chunks_exact(h))
            .zip(dx.chunks_exact_mut(h))
        {
            let (mean, rstd) = row_stats(row, eps);
            for i in 0..h {
                xhat[i] = (row[i] - mean) * rstd;
                g[i] = dy[i] * w[i];
                dw[i] += dy[i] * xhat[i];
                db[i] += dy[i];
            }
            let (mean_g, mean_gx) = (simd::sum(g) / h as f32, simd::dot(g, xhat) / h as f32);
            for i in 0..h {
                dst[i] = rstd * (g[i] - mean_g - xhat[i] * mean_gx);
            }
        }
    }
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "fused-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = cpu_f32(s1, l1)?;
        let w = cpu_f32(s2, l2)?;
        let b = cpu_f32(s3, l3)?;
        let h = w.len();
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(h * ROWS)
            .zip(x.par_chunks(h * ROWS))
            .for_each(|(dst, rows)| norm_rows(rows, w, b, self.eps, dst));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let h = w.elem_count();
        let ws = w.to_vec1::<f32>()?;
        // Rows in parallel, reading x and the gradient in place; each task adds its rows' dw and
        // db into its own partial sums.
        let (dx, partials) = with_f32(x, |xs| {
            with_f32(grad, |dys| {
                let mut dx = vec![0f32; xs.len()];
                let partials: Vec<Vec<f32>> = dx
                    .par_chunks_mut(h * ROWS)
                    .zip(xs.par_chunks(h * ROWS).zip(dys.par_chunks(h * ROWS)))
                    .map(|(dst, (rows, dy))| {
                        let mut sums = vec![0f32; 4 * h];
                        let (dwdb, scratch) = sums.split_at_mut(2 * h);
                        let (dw, db) = dwdb.split_at_mut(h);
                        norm_rows_backward(rows, dy, &ws, self.eps, dst, dw, db, scratch);
                        sums.truncate(2 * h);
                        sums
                    })
                    .collect();
                (dx, partials)
            })
        })??;
        let mut dw = vec![0f32; h];
        let mut db = vec![0f32; h];
        for p in &partials {
            simd::axpy(1.0, &p[..h], &mut dw);
            simd::axpy(1.0, &p[h..], &mut db);
        }
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(Tensor::from_vec(dw, w.shape(), dev)?),
            Some(Tensor::from_vec(db, w.shape(), dev)?),
        ))
    }
}

/// Layer normalisation over the last dimension, with gradients for x, weight and bias.
pub fn layer_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> candle_core::Result<Tensor> {
    x.contiguous()?
        .apply_op3(weight, bias, LayerNormOp { eps: eps as f32 })
}

/// Softmax over the last dimension.
struct SoftmaxOp;

impl CustomOp1 for SoftmaxOp {
    fn name(&self) -> &'static str {
        "fused-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = cpu_f32(s, l)?;
        let n = l.dims().last().copied().unwrap_or(1).max(1);
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(n)
            .zip(x.par_chunks(n))
            .for_each(|(dst, row)| {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0f32;
                for (d, v) in dst.iter_mut().zip(row) {
                    *d = (v - max).exp();
                    sum += *d;
                }
                let inv = 1.0 / sum;
                dst.iter_mut().for_each(|d| *d *= inv);
            });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let n = y.dims().last().copied().unwrap_or(1).max(1);
        let dys = grad.flatten_all()?.to_vec1::<f32>()?;
        let dx = with_f32(y, |ys| {
            let mut dx = vec![0f32; ys.len()];
            dx.par_chunks_mut(n)
                .zip(ys.par_chunks(n).zip(dys.par_chunks(n)))
                .for_each(|(dst, (yr, dyr))| {
                    let dot: f32 = yr.iter().zip(dyr).map(|(a, b)| a * b).sum();
                    for i in 0..n {
                        dst[i] = yr[i] * (dyr[i] - dot);
                    }
                });
            dx
        })?;
        Ok(Some(Tensor::from_vec(dx, y.shape(), y.device())?))
    }
}

/// Softmax over the last dimension, with a gradient.
pub fn softmax_last_dim(x: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1(SoftmaxOp)
}

/// erf(x) by Abramowitz & Stegun 7.1.26 (|error| ≤ 1.5e-7): one exp instead of the slow
/// software erf candle calls, which cost ~10% of a forward pass.
#[inline(always)]
fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152_1 + t * 1.061_405_4))));
    (1.0 - poly * simd::exp(-a * a)).copysign(x)
}

const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1 / √(2π)
const INV_SQRT_2PI: f32 = 0.398_942_3;

/// GELU, erf form: x·Φ(x).
#[inline(always)]
pub(crate) fn gelu(v: f32) -> f32 {
    0.5 * v * (1.0 + erf(v * FRAC_1_SQRT_2))
}

simd::twin! {
    fn gelu_slice(src: &[f32], dst: &mut [f32]) {
        for (d, &v) in dst.iter_mut().zip(src) {
            *d = gelu(v);
        }
    }
}

simd::twin! {
    fn gelu_grad_slice(src: &[f32], dy: &[f32], dst: &mut [f32]) {
        for ((d, &v), &g) in dst.iter_mut().zip(src).zip(dy) {
            let cdf = 0.5 * (1.0 + erf(v * FRAC_1_SQRT_2));
            *d = g * (cdf + v * INV_SQRT_2PI * simd::exp(-0.5 * v * v));
        }
    }
}

/// The exact (erf) GELU of HF's `gelu`, x·Φ(x), with its derivative Φ(x) + x·φ(x).
struct GeluOp;

impl CustomOp1 for GeluOp {
    fn name(&self) -> &'static str {
        "fused-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = cpu_f32(s, l)?;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(dst, src)| {
                gelu_slice(src, dst);
            });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(gelu_backward(x, grad)?))
    }
}

/// The gradient of GELU (erf form) at `x`, given the output's gradient.
pub(crate) fn gelu_backward(x: &Tensor, grad: &Tensor) -> candle_core::Result<Tensor> {
    let dx = with_f32(x, |xs| {
        with_f32(grad, |dys| {
            let mut dx = vec![0f32; xs.len()];
            dx.par_chunks_mut(CHUNK)
                .zip(xs.par_chunks(CHUNK).zip(dys.par_chunks(CHUNK)))
                .for_each(|(dst, (src, dy))| gelu_grad_slice(src, dy, dst));
            dx
        })
    })??;
    Tensor::from_vec(dx, x.shape(), x.device())
}

/// GELU (erf form) with a gradient.
pub fn gelu_erf(x: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1(GeluOp)
}

simd::twin! {
    /// dst = a ⊙ mask + r
    fn scaled_add_slice(a: &[f32], mask: &[f32], r: &[f32], dst: &mut [f32]) {
        for i in 0..dst.len() {
            dst[i] = a[i] * mask[i] + r[i];
        }
    }
}

simd::twin! {
    /// dst = g ⊙ mask
    fn masked_slice(g: &[f32], mask: &[f32], dst: &mut [f32]) {
        for i in 0..dst.len() {
            dst[i] = g[i] * mask[i];
        }
    }
}

/// a ⊙ mask + r (dropout on a sub-block's output, then the residual), as one node.
struct ScaledAddOp {
    mask: Vec<f32>,
}

impl CustomOp2 for ScaledAddOp {
    fn name(&self) -> &'static str {
        "fused-dropout-residual"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (a, r) = (cpu_f32(s1, l1)?, cpu_f32(s2, l2)?);
        if l1.shape() != l2.shape() || a.len() != self.mask.len() {
            candle_core::bail!(
                "dropout-residual: shapes {:?} and {:?} with a mask of {}",
                l1.shape(),
                l2.shape(),
                self.mask.len()
            );
        }
        let mut out = vec![0f32; a.len()];
        out.par_chunks_mut(CHUNK)
            .zip(a.par_chunks(CHUNK))
            .zip(self.mask.par_chunks(CHUNK).zip(r.par_chunks(CHUNK)))
            .for_each(|((dst, a), (mask, r))| scaled_add_slice(a, mask, r, dst));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        a: &Tensor,
        _r: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let da = with_f32(grad, |g| {
            let mut da = vec![0f32; g.len()];
            da.par_chunks_mut(CHUNK)
                .zip(g.par_chunks(CHUNK).zip(self.mask.par_chunks(CHUNK)))
                .for_each(|(dst, (g, mask))| masked_slice(g, mask, dst));
            da
        })?;
        Ok((
            Some(Tensor::from_vec(da, a.shape(), a.device())?),
            Some(grad.clone()),
        ))
    }
}

/// a ⊙ mask + r with gradients for a and r: one pass and one node instead of a multiply and an
/// add (the mask holds inverted-dropout multipliers, one per element of a).
pub fn scaled_add(a: &Tensor, mask: Vec<f32>, r: &Tensor) -> candle_core::Result<Tensor> {
    a.contiguous()?
        .apply_op2(&r.contiguous()?, ScaledAddOp { mask })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    fn random(shape: &[usize], seed: u64) -> Tensor {
        let mut rng = crate::util::rng::Rng::new(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// Gradients of Σ(out · probe), a loss that reaches every output element.
    pub(crate) fn grads(out: Tensor, probe: &Tensor) -> candle_core::backprop::GradStore {
        (out * probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap()
    }

    pub(crate) fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    fn composite_layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Tensor {
        let mean = x.mean_keepdim(D::Minus1).unwrap();
        let xc = x.broadcast_sub(&mean).unwrap();
        let var = xc.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        let xhat = xc
            .broadcast_div(&(var + eps).unwrap().sqrt().unwrap())
            .unwrap();
        xhat.broadcast_mul(w).unwrap().broadcast_add(b).unwrap()
    }

    #[test]
    fn layer_norm_matches_composite_forward_and_backward() {
        let x = Var::from_tensor(&random(&[3, 5, 16], 1)).unwrap();
        let w = Var::from_tensor(&(random(&[16], 2) + 1.0).unwrap()).unwrap();
        let b = Var::from_tensor(&random(&[16], 3)).unwrap();
        let probe = random(&[3, 5, 16], 4);
        let fused = layer_norm(&x, &w, &b, 1e-5).unwrap();
        let reference = composite_layer_norm(&x, &w, &b, 1e-5);
        assert!(max_diff(&fused, &reference) < 1e-5);
        let g1 = grads(fused, &probe);
        let g2 = grads(reference, &probe);
        for v in [&x, &w, &b] {
            let (a, r) = (g1.get(v).unwrap(), g2.get(v).unwrap());
            assert!(max_diff(a, r) < 1e-4, "{}", max_diff(a, r));
        }
    }

    #[test]
    fn softmax_matches_composite_forward_and_backward() {
        let x = Var::from_tensor(&(random(&[2, 3, 4, 7], 5) * 3.0).unwrap()).unwrap();
        let probe = random(&[2, 3, 4, 7], 6);
        let fused = softmax_last_dim(&x).unwrap();
        let reference = candle_nn::ops::softmax(&x, D::Minus1).unwrap();
        assert!(max_diff(&fused, &reference) < 1e-6);
        let g1 = grads(fused, &probe);
        let g2 = grads(reference, &probe);
        assert!(max_diff(g1.get(&x).unwrap(), g2.get(&x).unwrap()) < 1e-5);
    }

    #[test]
    fn gelu_matches_candle_forward_and_backward() {
        let x = Var::from_tensor(&(random(&[4, 33], 7) * 3.0).unwrap()).unwrap();
        let probe = random(&[4, 33], 8);
        let fused = gelu_erf(&x).unwrap();
        let reference = x.as_tensor().gelu_erf().unwrap();
        assert!(max_diff(&fused, &reference) < 1e-6);
        let g1 = grads(fused, &probe);
        let g2 = grads(reference, &probe);
        assert!(max_diff(g1.get(&x).unwrap(), g2.get(&x).unwrap()) < 1e-5);
    }

    #[test]
    fn scaled_add_matches_composite_forward_and_backward() {
        let a = Var::from_tensor(&random(&[5, 37], 11)).unwrap();
        let r = Var::from_tensor(&random(&[5, 37], 12)).unwrap();
        let mask: Vec<f32> = (0..5 * 37)
            .map(|i| if i % 3 == 0 { 0.0 } else { 1.25 })
            .collect();
        let probe = random(&[5, 37], 13);
        let fused = scaled_add(&a, mask.clone(), &r).unwrap();
        let m = Tensor::from_vec(mask, (5, 37), &Device::Cpu).unwrap();
        let reference = ((a.as_tensor() * &m).unwrap() + r.as_tensor()).unwrap();
        assert_eq!(max_diff(&fused, &reference), 0.0);
        let (g1, g2) = (grads(fused, &probe), grads(reference, &probe));
        for v in [&a, &r] {
            assert_eq!(max_diff(g1.get(v).unwrap(), g2.get(v).unwrap()), 0.0);
        }
        assert!(scaled_add(&a, vec![1.0; 3], &r).is_err());
    }

    #[test]
    fn layer_norm_gradient_matches_finite_differences() {
        let x0 = random(&[2, 6], 9);
        let w = random(&[6], 10);
        let b = random(&[6], 11);
        let probe = random(&[2, 6], 12);
        let loss = |x: &Tensor| -> f64 {
            (layer_norm(x, &w, &b, 1e-5).unwrap() * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64
        };
        let xv = Var::from_tensor(&x0).unwrap();
        let grads = (layer_norm(&xv, &w, &b, 1e-5).unwrap() * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let analytic = grads
            .get(&xv)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let base = x0.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let eps = 1e-2f32;
        for i in 0..base.len() {
            let mut plus = base.clone();
            plus[i] += eps;
            let mut minus = base.clone();
            minus[i] -= eps;
            let t = |v: Vec<f32>| Tensor::from_vec(v, (2, 6), &Device::Cpu).unwrap();
            let numeric = (loss(&t(plus)) - loss(&t(minus))) / (2.0 * eps as f64);
            assert!(
                (numeric - analytic[i] as f64).abs() < 2e-2,
                "{i}: {numeric} vs {}",
                analytic[i]
            );
        }
    }
}
