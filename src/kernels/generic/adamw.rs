//! AdamW state as tensors on the parameters' device, updated with standard candle ops: the same
//! arithmetic as the in-place host update ([`crate::kernels::cpu::adamw`]), and the clipping
//! factor computed on the device, so an update reads nothing back to the host.

use candle_core::{DType, Device, Tensor, Var};

use crate::error::Result;
use crate::kernels::cpu::adamw::AdamUpdate;

/// One parameter's moments, accumulated gradient and zero mask, on its device.
pub struct DeviceMoments {
    m: Tensor,
    v: Tensor,
    /// None until a backward pass reaches the parameter (then treated as zeros).
    grad: Option<Tensor>,
    /// 1 where the weight may change, 0 where it must stay zero (pruned weights).
    keep: Option<Tensor>,
}

impl DeviceMoments {
    pub fn new(value: &Tensor, keep_zeros: bool) -> Result<Self> {
        let keep = if keep_zeros {
            Some(value.ne(0f32)?.to_dtype(DType::F32)?)
        } else {
            None
        };
        Ok(DeviceMoments {
            m: value.zeros_like()?,
            v: value.zeros_like()?,
            grad: None,
            keep,
        })
    }

    pub fn accumulate(&mut self, g: &Tensor) -> Result<()> {
        let g = g.detach();
        self.grad = Some(match self.grad.take() {
            Some(acc) => (acc + g)?,
            None => g,
        });
        Ok(())
    }

    /// Replaces the accumulated gradient (tests of the update's arithmetic).
    #[cfg(test)]
    pub fn replace_grad(&mut self, g: Tensor) {
        self.grad = Some(g);
    }

    fn grad_sum_of_squares(&self) -> Result<Option<Tensor>> {
        Ok(match &self.grad {
            Some(g) if g.elem_count() > 0 => Some(g.sqr()?.sum_all()?.to_dtype(DType::F64)?),
            _ => None,
        })
    }

    /// One update of `var`: the gradient times `scale` (a device scalar: clipping ÷
    /// accumulation steps; `u.grad_scale` is not read); clears the gradient.
    pub fn update(&mut self, var: &Var, scale: &Tensor, u: AdamUpdate) -> Result<()> {
        let w = var.as_tensor();
        if w.elem_count() == 0 {
            self.grad = None;
            return Ok(());
        }
        let g = match self.grad.take() {
            Some(g) => g.broadcast_mul(scale)?,
            None => w.zeros_like()?,
        };
        let (b1, b2) = (u.beta1 as f64, u.beta2 as f64);
        self.m = ((&self.m * b1)? + (&g * (1.0 - b1))?)?;
        self.v = ((&self.v * b2)? + (g.sqr()? * (1.0 - b2))?)?;
        let step_size = (u.lr / u.bias1) as f64;
        let inv_bias2_sqrt = (1.0 / u.bias2.sqrt()) as f64;
        let shrink = (1.0 - u.lr * u.decay) as f64;
        let denominator = ((self.v.sqrt()? * inv_bias2_sqrt)? + u.eps as f64)?;
        let mut next = ((w * shrink)? - ((&self.m / denominator)? * step_size)?)?;
        if let Some(keep) = &self.keep {
            next = (next * keep)?;
        }
        var.set(&next)?;
        Ok(())
    }

    pub fn to_host(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        Ok((
            self.m.flatten_all()?.to_vec1::<f32>()?,
            self.v.flatten_all()?.to_vec1::<f32>()?,
        ))
    }

    /// Replaces the moments with saved host values.
    pub fn set(&mut self, m: Vec<f32>, v: Vec<f32>, like: &Tensor) -> Result<()> {
        self.m = Tensor::from_vec(m, like.shape(), like.device())?;
        self.v = Tensor::from_vec(v, like.shape(), like.device())?;
        Ok(())
    }
}

/// √(Σ g²) over every parameter's accumulated gradient, as a device scalar (f64).
pub fn global_norm(states: &[&DeviceMoments], device: &Device) -> Result<Tensor> {
    let mut total: Option<Tensor> = None;
    for s in states {
        if let Some(sq) = s.grad_sum_of_squares()? {
            total = Some(match total {
                Some(t) => (t + sq)?,
                None => sq,
            });
        }
    }
    match total {
        Some(t) => Ok(t.sqrt()?),
        None => Ok(Tensor::zeros((), DType::F64, device)?),
    }
}

/// The factor every gradient is multiplied by: clipping to `max_norm` (0 = none) of the
/// (already averaged) `norm`, divided by the accumulation steps — as the host update does:
/// `max_norm / (norm + 1e-6)` when `norm > max_norm`, else 1. A device scalar (f32).
pub fn clip_scale(norm: &Tensor, max_norm: f64, scale_down: f64) -> Result<Tensor> {
    let one = norm.ones_like()?;
    let clip = if max_norm > 0.0 {
        let clipped = ((norm + 1e-6)?.recip()? * max_norm)?;
        norm.gt(max_norm)?.where_cond(&clipped, &one)?
    } else {
        one
    };
    Ok((clip / scale_down)?.to_dtype(DType::F32)?)
}
