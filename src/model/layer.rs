//! One encoder layer (HF `BertLayer`: self-attention, residual + LayerNorm, feed-forward,
//! residual + LayerNorm) and its parts, each with a `forward` that runs through `kernels`.

use candle_core::Tensor;

use super::{dropout_mask, dropout_multipliers, Bert, LinearInputs, Mode, Params};
use crate::arch::{Activation, Key, LinearKind, LinearPart, LinearSlot};
use crate::kernels::{self, Kernels, KeyMask, Multipliers, Precision};

pub(super) struct Linear {
    /// Dense: [out, in]; low-rank: `down` [r, in] then `up` [out, r].
    pub(super) weights: LinearWeights,
    pub(super) bias: Tensor,
}

pub(super) enum LinearWeights {
    Dense(Tensor),
    LowRank { down: Tensor, up: Tensor },
}

impl Linear {
    pub(super) fn load(params: &Params, layer: usize, slot: LinearSlot, kind: LinearKind) -> Self {
        let key = |part| Key::Linear { layer, slot, part };
        let weights = match kind {
            LinearKind::Dense | LinearKind::Sparse { .. } => {
                LinearWeights::Dense(params.get(key(LinearPart::Weight)))
            }
            LinearKind::LowRank { .. } => LinearWeights::LowRank {
                down: params.get(key(LinearPart::Down)),
                up: params.get(key(LinearPart::Up)),
            },
        };
        Linear {
            weights,
            bias: params.get(key(LinearPart::Bias)),
        }
    }

    /// x: [N, in] → [N, out]
    pub(super) fn forward(
        &self,
        k: Kernels,
        x: &Tensor,
        precision: Precision,
    ) -> candle_core::Result<Tensor> {
        let (input, w) = self.last_product(k, x, precision)?;
        kernels::linear(k, &input, w, Some(&self.bias), precision)
    }

    /// gelu(forward(x)), the activation applied in the last product's own pass (inference:
    /// its backward recomputes the pre-activation, which training would pay on every step).
    fn forward_gelu(
        &self,
        k: Kernels,
        x: &Tensor,
        precision: Precision,
    ) -> candle_core::Result<Tensor> {
        let (input, w) = self.last_product(k, x, precision)?;
        kernels::linear_gelu(k, &input, w, &self.bias, precision)
    }

    /// The input and weight of the product that gets the bias: x and the weight, or for a
    /// low-rank linear x through its first factor and the second.
    fn last_product(
        &self,
        k: Kernels,
        x: &Tensor,
        precision: Precision,
    ) -> candle_core::Result<(Tensor, &Tensor)> {
        Ok(match &self.weights {
            LinearWeights::Dense(w) => (x.clone(), w),
            LinearWeights::LowRank { down, up } => {
                (kernels::linear(k, x, down, None, precision)?, up)
            }
        })
    }
}

pub(super) struct Norm {
    pub(super) weight: Tensor,
    pub(super) bias: Tensor,
    pub(super) eps: f64,
}

impl Norm {
    pub(super) fn forward(&self, k: Kernels, x: &Tensor) -> candle_core::Result<Tensor> {
        kernels::layer_norm(k, x, &self.weight, &self.bias, self.eps)
    }
}

/// HF `BertLayer`.
pub(super) struct EncoderLayer {
    pub(super) num_heads: usize,
    pub(super) query: Linear,
    pub(super) key: Linear,
    pub(super) value: Linear,
    pub(super) attention_output: Linear,
    pub(super) attention_norm: Norm,
    pub(super) intermediate: Linear,
    pub(super) output: Linear,
    pub(super) output_norm: Norm,
}

/// What a layer's forward pass reads besides its input: the model's settings, the batch's key
/// mask, this pass's head gates and what to return.
pub(super) struct LayerContext<'a> {
    pub(super) model: &'a Bert,
    pub(super) mask: &'a KeyMask,
    /// [heads] multipliers of each head's output.
    pub(super) gate: Option<&'a Tensor>,
    /// Return the attention probabilities.
    pub(super) want_probs: bool,
    /// Return the inputs of the layer's linears.
    pub(super) capture: bool,
}

/// A layer's output [B, L, H] and what the context asked for.
pub(super) struct LayerOutput {
    pub(super) hidden: Tensor,
    /// [B, heads, L, L]; None when not asked for or without heads.
    pub(super) probs: Option<Tensor>,
    pub(super) linear_inputs: Option<LinearInputs>,
}

impl EncoderLayer {
    /// x [B, L, H] → the layer's output. Without gates or probabilities the fused kernels run
    /// their one-node attention; otherwise the per-head products of the generic path.
    pub(super) fn forward(
        &self,
        x: &Tensor,
        ctx: &LayerContext,
        mode: &mut Mode,
    ) -> candle_core::Result<LayerOutput> {
        let (b, l, h) = x.dims3()?;
        let m = ctx.model;
        let (k, p) = (m.kernels, m.precision);
        let flat = x.reshape((b * l, h))?;
        let (attn, context, probs) = self.attention(&flat, (b, l), ctx, mode)?;
        let residual = dropout_mask(&attn, m.hidden_dropout, mode)?;
        let x1 = self
            .attention_norm
            .forward(k, &dropout_residual(k, &attn, residual, &flat)?)?;
        let inter = match (&mode, m.arch.activation) {
            (Mode::Eval, Activation::GeluErf) => self.intermediate.forward_gelu(k, &x1, p)?,
            _ => activation(k, &self.intermediate.forward(k, &x1, p)?, m.arch.activation)?,
        };
        let out = self.output.forward(k, &inter, p)?;
        let residual = dropout_mask(&out, m.hidden_dropout, mode)?;
        let y = self
            .output_norm
            .forward(k, &dropout_residual(k, &out, residual, &x1)?)?;
        let linear_inputs = ctx.capture.then(|| LinearInputs {
            attention: flat,
            context,
            ffn: x1,
            ffn_activation: inter,
        });
        Ok(LayerOutput {
            hidden: y.reshape((b, l, h))?,
            probs,
            linear_inputs,
        })
    }

    /// The attention sub-block on `flat` [B·L, H]: its output (before dropout and residual),
    /// the heads' context (the attention output's input; None without heads) and, when asked,
    /// the probabilities.
    fn attention(
        &self,
        flat: &Tensor,
        (b, l): (usize, usize),
        ctx: &LayerContext,
        mode: &mut Mode,
    ) -> candle_core::Result<(Tensor, Option<Tensor>, Option<Tensor>)> {
        let m = ctx.model;
        let (k, p) = (m.kernels, m.precision);
        let h = m.arch.hidden;
        if self.num_heads == 0 {
            // No heads left: the sub-block contributes only the output bias; the residual stays.
            let bias = self
                .attention_output
                .bias
                .broadcast_as((b * l, h))?
                .contiguous()?;
            return Ok((bias, None, None));
        }
        let heads = self.num_heads;
        let width = heads * m.arch.head_dim;
        let shaped = |t: Tensor| t.reshape((b, l, width));
        let q = shaped(self.query.forward(k, flat, p)?)?;
        let key = shaped(self.key.forward(k, flat, p)?)?;
        let v = shaped(self.value.forward(k, flat, p)?)?;
        let dropout = |mode: &mut Mode| -> candle_core::Result<Option<Multipliers>> {
            match mode {
                Mode::Train(rng) if m.attention_dropout > 0.0 => Ok(Some(dropout_multipliers(
                    &(b, heads, l, l).into(),
                    m.attention_dropout,
                    rng,
                    flat.device(),
                )?)),
                _ => Ok(None),
            }
        };
        let (context, probs) = if ctx.gate.is_none() && !ctx.want_probs {
            let context =
                kernels::self_attention(k, &q, &key, &v, heads, ctx.mask, dropout(mode)?)?;
            (context, None)
        } else {
            let out = kernels::self_attention_with_probs(
                k,
                &q,
                &key,
                &v,
                heads,
                ctx.mask,
                dropout(mode)?,
                ctx.gate,
            )?;
            (out.context, Some(out.probs))
        };
        let context = context.reshape((b * l, width))?;
        let out = self.attention_output.forward(k, &context, p)?;
        Ok((out, Some(context), probs))
    }
}

fn activation(k: Kernels, x: &Tensor, act: Activation) -> candle_core::Result<Tensor> {
    match act {
        Activation::GeluErf => kernels::gelu_erf(k, x),
        Activation::GeluTanh => x.gelu(),
        Activation::Relu => x.relu(),
    }
}

/// dropout(a) + r (the residual after a sub-block), in one pass when training.
fn dropout_residual(
    k: Kernels,
    a: &Tensor,
    mask: Option<Multipliers>,
    r: &Tensor,
) -> candle_core::Result<Tensor> {
    match mask {
        Some(mask) => kernels::dropout_residual(k, a, mask, r),
        None => a + r,
    }
}
