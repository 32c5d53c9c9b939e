//! The precision of the encoder's linears. `bf16` is autocast as PyTorch does it: weights,
//! activations and gradients stay f32, and only the matrix products of the linears (forward and
//! both gradients) read bf16-rounded operands and accumulate in f32 (`bf16_gemm`). LayerNorm,
//! softmax, attention, the loss and the optimizer stay f32.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};

use crate::model::bf16_gemm::{self, Bf16Kernel, MatRef};
use crate::model::ops::cpu_f32;

pub use crate::util::precision::Precision;

/// A line for logs: the precision and what runs its products on this machine.
pub fn describe(precision: Precision) -> String {
    match precision {
        Precision::F32 => "f32".into(),
        Precision::Bf16 => format!("bf16 linears ({})", Bf16Kernel::detect().describe()),
    }
}

/// x · wᵀ for x [N, in] and a linear's weight w [out, in], in the given precision.
pub fn linear_product(x: &Tensor, w: &Tensor, precision: Precision) -> candle_core::Result<Tensor> {
    match precision {
        Precision::F32 => x.matmul(&w.t()?),
        Precision::Bf16 => x.contiguous()?.apply_op2(
            &w.contiguous()?,
            Bf16Product {
                form: Form::InputWeightT,
            },
        ),
    }
}

/// The three products of a linear: the forward pass and its two gradients.
#[derive(Clone, Copy)]
enum Form {
    /// x [N, in] · w [out, in]ᵀ → [N, out]
    InputWeightT,
    /// dy [N, out] · w [out, in] → dx [N, in]
    GradWeight,
    /// dy [N, out]ᵀ · x [N, in] → dw [out, in]
    GradTInput,
}

struct Bf16Product {
    form: Form,
}

impl CustomOp2 for Bf16Product {
    fn name(&self) -> &'static str {
        "bf16-linear-product"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (r1, c1) = l1.shape().dims2()?;
        let (r2, c2) = l2.shape().dims2()?;
        let (d1, d2) = (cpu_f32(s1, l1)?, cpu_f32(s2, l2)?);
        let (m1, m2) = (MatRef::row_major(d1, r1, c1), MatRef::row_major(d2, r2, c2));
        let (a, b) = match self.form {
            Form::InputWeightT => (m1, m2.t()),
            Form::GradWeight => (m1, m2),
            Form::GradTInput => (m1.t(), m2),
        };
        if a.cols != b.rows {
            candle_core::bail!(
                "bf16 product: inner dimensions differ ({}×{} · {}×{})",
                a.rows,
                a.cols,
                b.rows,
                b.cols
            );
        }
        let c = bf16_gemm::matmul(a, b, Bf16Kernel::detect());
        Ok((CpuStorage::F32(c), Shape::from((a.rows, b.cols))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let Form::InputWeightT = self.form else {
            candle_core::bail!("the gradient products have no gradient of their own");
        };
        let grad = grad.contiguous()?;
        let dx = grad.apply_op2_no_bwd(
            &w.contiguous()?,
            &Bf16Product {
                form: Form::GradWeight,
            },
        )?;
        let dw = grad.apply_op2_no_bwd(
            &x.contiguous()?,
            &Bf16Product {
                form: Form::GradTInput,
            },
        )?;
        Ok((Some(dx), Some(dw)))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;
    use crate::model::ops::tests::max_diff;

    /// Rounds to bf16 and back, as the kernel reads its operands.
    fn rounded(t: &Tensor) -> Tensor {
        t.to_dtype(candle_core::DType::BF16)
            .unwrap()
            .to_dtype(candle_core::DType::F32)
            .unwrap()
    }

    /// Forward and both gradients equal the f32 products of the bf16-rounded operands.
    #[test]
    fn bf16_product_and_gradients_match_f32_on_rounded_operands() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (37, 70), &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::randn(0f32, 1.0, (51, 70), &dev).unwrap()).unwrap();
        let dy = Tensor::randn(0f32, 1.0, (37, 51), &dev).unwrap();
        let y = linear_product(x.as_tensor(), w.as_tensor(), Precision::Bf16).unwrap();
        let want = rounded(x.as_tensor())
            .matmul(&rounded(w.as_tensor()).t().unwrap())
            .unwrap();
        assert!(max_diff(&y, &want) < 1e-4);
        let grads = (&y * &dy).unwrap().sum_all().unwrap().backward().unwrap();
        let dx = grads.get(x.as_tensor()).unwrap();
        let dw = grads.get(w.as_tensor()).unwrap();
        let r = rounded(&dy);
        let want_dx = r.matmul(&rounded(w.as_tensor())).unwrap();
        let want_dw = r.t().unwrap().matmul(&rounded(x.as_tensor())).unwrap();
        assert!(
            max_diff(dx, &want_dx) < 1e-4,
            "dx {}",
            max_diff(dx, &want_dx)
        );
        assert!(
            max_diff(dw, &want_dw) < 1e-4,
            "dw {}",
            max_diff(dw, &want_dw)
        );
        // And the f32 path is untouched: within bf16 rounding of the bf16 one, not equal to it.
        let y32 = linear_product(x.as_tensor(), w.as_tensor(), Precision::F32).unwrap();
        let gap = max_diff(&y, &y32);
        assert!(gap > 0.0 && gap < 0.5, "bf16 vs f32 gap {gap}");
    }
}
