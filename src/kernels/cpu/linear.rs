//! A linear layer, y = x·wᵀ + b, as one autograd node with its own backward (dx = dy·w,
//! dw = dyᵀ·x, db = the column sums of dy), at the run's precision. As candle ops the same layer
//! is a transpose, a matmul, a broadcast and an add, whose backward reduces the bias gradient
//! with a strided sum and adds every gradient into a fresh zero tensor; one node skips those
//! passes and gives the same numbers up to the order of the sums.
//!
//! `bf16` is autocast as PyTorch does it: weights, activations and gradients stay f32, and only
//! the three products (forward and both gradients) read bf16-rounded operands and accumulate in
//! f32 (`bf16_gemm`). LayerNorm, softmax, attention, the loss and the optimizer stay f32.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::kernels::cpu::bf16_gemm::{self, Bf16Kernel};
use crate::kernels::cpu::matrix::{product_f32, to_row_major, MatRef};
use crate::kernels::cpu::ops::{self, cpu_f32, with_f32};
use crate::kernels::cpu::simd;

pub use crate::util::precision::Precision;

/// x · wᵀ (+ bias) for x [N, in], a weight w [out, in] and a bias [out], in the given precision.
pub fn linear(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    precision: Precision,
) -> candle_core::Result<Tensor> {
    match bias {
        Some(b) => affine(
            x,
            w,
            b,
            Affine {
                precision,
                gelu: false,
            },
        ),
        None => x
            .contiguous()?
            .apply_op2(&w.contiguous()?, Product { precision }),
    }
}

/// gelu(x · wᵀ + b) (erf form) for inference: each block of rows gets its bias and activation
/// in one pass while it is in cache, instead of a second pass over a fresh tensor; the values
/// are the same bit for bit. GELU's gradient needs the pre-activation, which this op does not
/// keep: its backward (for gradients taken in eval mode, such as head importance) recomputes
/// it with one more product, so training keeps `linear` + GELU.
pub fn linear_gelu(
    x: &Tensor,
    w: &Tensor,
    bias: &Tensor,
    precision: Precision,
) -> candle_core::Result<Tensor> {
    affine(
        x,
        w,
        bias,
        Affine {
            precision,
            gelu: true,
        },
    )
}

fn affine(x: &Tensor, w: &Tensor, b: &Tensor, op: Affine) -> candle_core::Result<Tensor> {
    x.contiguous()?
        .apply_op3(&w.contiguous()?, &b.contiguous()?, op)
}

/// A · B at the given precision, C row-major.
fn product(a: MatRef, b: MatRef, precision: Precision) -> Vec<f32> {
    match precision {
        Precision::F32 => product_f32(a, b),
        Precision::Bf16 => bf16_gemm::matmul(a, b, Bf16Kernel::detect()),
    }
}

/// x [N, in] · w [out, in]ᵀ → [N, out]
fn forward(
    x: (&CpuStorage, &Layout),
    w: (&CpuStorage, &Layout),
    precision: Precision,
) -> candle_core::Result<Vec<f32>> {
    let (n, inp) = x.1.shape().dims2()?;
    let (out, w_in) = w.1.shape().dims2()?;
    if inp != w_in {
        candle_core::bail!(
            "linear: input has {inp} features, the weight [{out}, {w_in}] wants {w_in}"
        );
    }
    let x = MatRef::row_major(cpu_f32(x.0, x.1)?, n, inp);
    let w = MatRef::row_major(cpu_f32(w.0, w.1)?, out, inp);
    if precision == Precision::F32 && inp >= out {
        // Unless the layer widens, the f32 kernel runs 25–35% faster on a row-major copy of wᵀ
        // than on the transposed view (`cargo bench --bench matmul`, "x·(Wᵀ)"); the copy
        // costs far less than it saves.
        let wt = to_row_major(w.t());
        return Ok(product_f32(x, MatRef::row_major(&wt, inp, out)));
    }
    Ok(product(x, w.t(), precision))
}

/// dx = dy·w and dw = dyᵀ·x, as tensors shaped like x and w.
fn gradients(
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    precision: Precision,
) -> candle_core::Result<(Tensor, Tensor)> {
    let (n, inp) = x.dims2()?;
    let out = w.dim(0)?;
    let (dx, dw) = with_f32(dy, |dy| {
        let dy = MatRef::row_major(dy, n, out);
        let dx = with_f32(w, |w| {
            product(dy, MatRef::row_major(w, out, inp), precision)
        })?;
        let dw = with_f32(x, |x| {
            product(dy.t(), MatRef::row_major(x, n, inp), precision)
        })?;
        candle_core::Result::Ok((dx, dw))
    })??;
    let dev = x.device();
    Ok((
        Tensor::from_vec(dx, x.shape(), dev)?,
        Tensor::from_vec(dw, w.shape(), dev)?,
    ))
}

simd::twin! {
    /// Adds `bias` to every row of `y`.
    fn add_bias_rows(y: &mut [f32], bias: &[f32]) {
        for row in y.chunks_exact_mut(bias.len()) {
            for (v, b) in row.iter_mut().zip(bias) {
                *v += b;
            }
        }
    }
}

simd::twin! {
    /// Adds `bias` to every row of `y`, then applies GELU (erf form).
    fn add_bias_gelu_rows(y: &mut [f32], bias: &[f32]) {
        for row in y.chunks_exact_mut(bias.len()) {
            for (v, b) in row.iter_mut().zip(bias) {
                *v = ops::gelu(*v + b);
            }
        }
    }
}

simd::twin! {
    /// Adds each row of `dy` (rows of `sums.len()`) into `sums`, in row order.
    fn add_rows(dy: &[f32], sums: &mut [f32]) {
        for row in dy.chunks_exact(sums.len()) {
            for (s, v) in sums.iter_mut().zip(row) {
                *s += v;
            }
        }
    }
}

/// Rows per parallel task of the bias loops.
const ROWS: usize = 64;

/// The bias gradient: Σ over rows of dy [N, out]. Column blocks run in parallel; each column
/// is summed in row order.
fn column_sums(dy: &[f32], out: usize) -> Vec<f32> {
    const COLUMNS: usize = 128;
    let mut sums = vec![0f32; out];
    if out == 0 {
        return sums;
    }
    sums.par_chunks_mut(COLUMNS)
        .enumerate()
        .for_each(|(block, dst)| {
            let first = block * COLUMNS;
            for row in dy.chunks_exact(out) {
                add_rows(&row[first..first + dst.len()], dst);
            }
        });
    sums
}

/// x · wᵀ without a bias (the first factor of a low-rank linear, projections).
struct Product {
    precision: Precision,
}

impl CustomOp2 for Product {
    fn name(&self) -> &'static str {
        "linear-product"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let y = forward((s1, l1), (s2, l2), self.precision)?;
        let shape = Shape::from((l1.shape().dims()[0], l2.shape().dims()[0]));
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw) = gradients(x, w, grad, self.precision)?;
        Ok((Some(dx), Some(dw)))
    }
}

/// x · wᵀ + b, or gelu(x · wᵀ + b) for inference.
struct Affine {
    precision: Precision,
    gelu: bool,
}

impl CustomOp3 for Affine {
    fn name(&self) -> &'static str {
        "linear"
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
        let mut y = forward((s1, l1), (s2, l2), self.precision)?;
        let bias = cpu_f32(s3, l3)?;
        let out = l2.shape().dims()[0];
        if bias.len() != out {
            candle_core::bail!("linear: a bias of {} for {out} outputs", bias.len());
        }
        if out > 0 {
            y.par_chunks_mut(out * ROWS).for_each(|rows| {
                if self.gelu {
                    add_bias_gelu_rows(rows, bias)
                } else {
                    add_bias_rows(rows, bias)
                }
            });
        }
        let shape = Shape::from((l1.shape().dims()[0], out));
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // With GELU, the gradient at the pre-activation (recomputed: the op does not keep it).
        let dz = if self.gelu {
            let before = linear(x, w, Some(b), self.precision)?.detach();
            ops::gelu_backward(&before, grad)?
        } else {
            grad.clone()
        };
        let (dx, dw) = gradients(x, w, &dz, self.precision)?;
        let out = w.dim(0)?;
        let db = with_f32(&dz, |dy| column_sums(dy, out))?;
        let db = Tensor::from_vec(db, out, x.device())?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;
    use crate::kernels::cpu::ops::tests::max_diff;

    /// Rounds to bf16 and back, as the bf16 kernel reads its operands.
    fn rounded(t: &Tensor) -> Tensor {
        t.to_dtype(candle_core::DType::BF16)
            .unwrap()
            .to_dtype(candle_core::DType::F32)
            .unwrap()
    }

    fn var(shape: (usize, usize)) -> Var {
        Var::from_tensor(&Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap()).unwrap()
    }

    /// The op's output and its gradients for x, w (and b), given dy.
    fn run(x: &Var, w: &Var, b: Option<&Var>, dy: &Tensor, p: Precision) -> Vec<Tensor> {
        let y = linear(x.as_tensor(), w.as_tensor(), b.map(|b| b.as_tensor()), p).unwrap();
        let grads = (&y * dy).unwrap().sum_all().unwrap().backward().unwrap();
        let mut out = vec![
            y,
            grads.get(x).unwrap().clone(),
            grads.get(w).unwrap().clone(),
        ];
        if let Some(b) = b {
            out.push(grads.get(b).unwrap().clone());
        }
        out
    }

    /// At f32 the op equals candle's composite linear (matmul, broadcast add) in value and
    /// gradients, with and without a bias, on an odd shape.
    #[test]
    fn f32_linear_and_gradients_match_candle_ops() {
        let (x, w, b) = (var((37, 70)), var((51, 70)), var((1, 51)));
        let b = Var::from_tensor(&b.as_tensor().reshape(51).unwrap()).unwrap();
        let dy = Tensor::randn(0f32, 1.0, (37, 51), &Device::Cpu).unwrap();
        let want_y = x.matmul(&w.t().unwrap()).unwrap();
        let want = [
            want_y.broadcast_add(&b).unwrap(),
            dy.matmul(w.as_tensor()).unwrap(),
            dy.t().unwrap().matmul(x.as_tensor()).unwrap(),
            dy.sum(0).unwrap(),
        ];
        let got = run(&x, &w, Some(&b), &dy, Precision::F32);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(max_diff(g, w) < 1e-4, "output {i}: {}", max_diff(g, w));
        }
        let got = run(&x, &w, None, &dy, Precision::F32);
        assert!(max_diff(&got[0], &want_y) < 1e-4);
        assert!(max_diff(&got[1], &want[1]) < 1e-4);
        assert!(max_diff(&got[2], &want[2]) < 1e-4);
    }

    /// At bf16 the forward and both products equal the f32 products of the bf16-rounded
    /// operands; the bias and its gradient stay f32.
    #[test]
    fn bf16_linear_and_gradients_match_f32_on_rounded_operands() {
        let (x, w) = (var((37, 70)), var((51, 70)));
        let b = Var::from_tensor(&Tensor::randn(0f32, 1.0, 51, &Device::Cpu).unwrap()).unwrap();
        let dy = Tensor::randn(0f32, 1.0, (37, 51), &Device::Cpu).unwrap();
        let got = run(&x, &w, Some(&b), &dy, Precision::Bf16);
        let (rx, rw, r) = (rounded(x.as_tensor()), rounded(w.as_tensor()), rounded(&dy));
        let want = [
            rx.matmul(&rw.t().unwrap())
                .unwrap()
                .broadcast_add(&b)
                .unwrap(),
            r.matmul(&rw).unwrap(),
            r.t().unwrap().matmul(&rx).unwrap(),
            dy.sum(0).unwrap(),
        ];
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(max_diff(g, w) < 1e-4, "output {i}: {}", max_diff(g, w));
        }
        // And the f32 path is untouched: within bf16 rounding of the bf16 one, not equal to it.
        let y32 = linear(
            x.as_tensor(),
            w.as_tensor(),
            Some(b.as_tensor()),
            Precision::F32,
        )
        .unwrap();
        let gap = max_diff(&got[0], &y32);
        assert!(gap > 0.0 && gap < 0.5, "bf16 vs f32 gap {gap}");
    }

    /// The fused linear + GELU gives the two nodes' values bit for bit (130 rows: two parallel
    /// blocks and a partial one) and their gradients, at both precisions.
    #[test]
    fn linear_gelu_equals_linear_then_gelu() {
        let (x, w) = (var((130, 70)), var((51, 70)));
        let b = Var::from_tensor(&Tensor::randn(0f32, 1.0, 51, &Device::Cpu).unwrap()).unwrap();
        let dy = Tensor::randn(0f32, 1.0, (130, 51), &Device::Cpu).unwrap();
        for p in [Precision::F32, Precision::Bf16] {
            let (xt, wt, bt) = (x.as_tensor(), w.as_tensor(), b.as_tensor());
            let want = ops::gelu_erf(&linear(xt, wt, Some(bt), p).unwrap()).unwrap();
            let got = linear_gelu(xt, wt, bt, p).unwrap();
            assert_eq!(max_diff(&got, &want), 0.0, "{p:?}");
            let grads = |y: &Tensor| (y * &dy).unwrap().sum_all().unwrap().backward().unwrap();
            let (g_want, g_got) = (grads(&want), grads(&got));
            for v in [&x, &w, &b] {
                let (a, e) = (g_got.get(v).unwrap(), g_want.get(v).unwrap());
                assert!(max_diff(a, e) < 1e-4, "{p:?}: {}", max_diff(a, e));
            }
        }
    }

    /// A layer pruned to no outputs (or no inputs) still runs, forward and backward.
    #[test]
    fn empty_layers_run() {
        for (out, inp) in [(0, 6), (3, 0)] {
            let (x, w) = (var((4, inp)), var((out, inp)));
            let b = Var::from_tensor(
                &Tensor::zeros(out, candle_core::DType::F32, &Device::Cpu).unwrap(),
            )
            .unwrap();
            let dy = Tensor::ones((4, out), candle_core::DType::F32, &Device::Cpu).unwrap();
            let got = run(&x, &w, Some(&b), &dy, Precision::F32);
            assert_eq!(got[0].dims(), &[4, out]);
            assert_eq!(got[2].dims(), &[out, inp]);
        }
    }

    /// A shape mismatch is an error, not a panic.
    #[test]
    fn mismatched_shapes_are_errors() {
        let (x, w) = (var((4, 6)), var((3, 5)));
        assert!(linear(x.as_tensor(), w.as_tensor(), None, Precision::F32).is_err());
        let b = Tensor::zeros(4, candle_core::DType::F32, &Device::Cpu).unwrap();
        let w = var((3, 6));
        assert!(linear(x.as_tensor(), w.as_tensor(), Some(&b), Precision::F32).is_err());
    }
}
