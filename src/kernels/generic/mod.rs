//! The model's ops written with standard candle ops, differentiated by candle's autograd: they
//! run on any device. candle's own fused `layer_norm` and `softmax_last_dim` have no backward
//! (their gradients vanish silently), so LayerNorm and softmax are written out here.

pub(crate) mod adamw;

use candle_core::{DType, Tensor, D};

use super::Multipliers;
use crate::util::precision::Precision;

/// x · wᵀ (+ bias). bf16 is autocast as PyTorch does it on a GPU: the product reads bf16
/// operands (its gradients too, through the casts) and the bias is added in f32.
pub fn linear(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    precision: Precision,
) -> candle_core::Result<Tensor> {
    let y = match precision {
        Precision::F32 => x.matmul(&w.t()?)?,
        Precision::Bf16 => x
            .to_dtype(DType::BF16)?
            .matmul(&w.to_dtype(DType::BF16)?.t()?)?
            .to_dtype(DType::F32)?,
    };
    match bias {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

/// LayerNorm over the last dimension: (x − mean) / √(var + eps) · weight + bias.
pub fn layer_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> candle_core::Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let centred = x.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    centred
        .broadcast_div(&(var + eps)?.sqrt()?)?
        .broadcast_mul(weight)?
        .broadcast_add(bias)
}

/// Softmax over the last dimension (max-shifted).
pub fn softmax_last_dim(x: &Tensor) -> candle_core::Result<Tensor> {
    candle_nn::ops::softmax(x, D::Minus1)
}

/// GELU, erf form.
pub fn gelu_erf(x: &Tensor) -> candle_core::Result<Tensor> {
    x.gelu_erf()
}

/// The context and, when asked, the probabilities of one layer's attention.
pub struct Attention {
    /// [B, L, heads·d]
    pub context: Tensor,
    /// [B, heads, L, L], before dropout.
    pub probs: Tensor,
}

/// Self-attention with per-head products: q, k, v [B, L, heads·d]; `mask_bias` [B, 1, 1, L];
/// `dropout` [B, heads, L, L] multipliers; `gate` [heads] multiplies each head's output.
/// `fused_softmax` takes the CPU softmax op (the fused kernels' path when probabilities or
/// gates are needed).
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    mask_bias: &Tensor,
    dropout: Option<Multipliers>,
    gate: Option<&Tensor>,
    fused_softmax: bool,
) -> candle_core::Result<Attention> {
    let (b, l, width) = q.dims3()?;
    let d = width / heads;
    let split = |t: &Tensor| -> candle_core::Result<Tensor> {
        t.reshape((b, l, heads, d))?.transpose(1, 2)?.contiguous()
    };
    let (q, k, v) = (split(q)?, split(k)?, split(v)?);
    let scores =
        (q.matmul(&k.t()?.contiguous()?)? * (1.0 / (d as f64).sqrt()))?.broadcast_add(mask_bias)?;
    let probs = if fused_softmax {
        super::cpu::ops::softmax_last_dim(&scores)?
    } else {
        softmax_last_dim(&scores)?
    };
    let dropped = match dropout {
        Some(m) => (&probs * m.tensor(&probs)?)?,
        None => probs.clone(),
    };
    let mut context = dropped.matmul(&v)?;
    if let Some(g) = gate {
        context = context.broadcast_mul(&g.reshape((1, heads, 1, 1))?)?;
    }
    let context = context
        .transpose(1, 2)?
        .contiguous()?
        .reshape((b, l, width))?;
    Ok(Attention { context, probs })
}
