//! A candle BERT encoder with a token-classification head that runs every structure [`Arch`]
//! describes: dense or factorized word embeddings, dense / low-rank / sparse linears, per-layer
//! head counts (0 allowed), and cross-layer sharing through the layer map. Mirrors HF
//! `BertForTokenClassification` (modeling_bert.py); dropout really drops in training mode.
//! Every op runs through `kernels`, so the model runs on any device the kernels support.

pub mod gates;
pub mod generate;
pub(crate) mod layer;
pub mod loss;
pub mod params;
pub mod student;

use candle_core::{DType, Device, Tensor, D};

use crate::arch::{Arch, EmbeddingKind, Key, LayerNormSlot, LinearSlot, NormPart, Positions};
use crate::error::Result;
use crate::io::Checkpoint;
pub use crate::kernels::Precision;
use crate::kernels::{self, Kernels, KeyMask, Multipliers};
use crate::util::rng::Rng;
use layer::{EncoderLayer, LayerContext, Linear, LinearWeights, Norm};
pub use params::Params;

/// Eval (deterministic) or training (dropout masks drawn from the given generator).
pub enum Mode<'a> {
    Eval,
    Train(&'a mut Rng),
}

/// What the forward pass should return besides logits and the last hidden state.
#[derive(Debug, Clone, Copy, Default)]
pub struct Outputs {
    pub hidden_states: bool,
    pub attentions: bool,
    /// The inputs of every linear (for data-aware surgeries).
    pub linear_inputs: bool,
}

/// The inputs of the linears of one layer, each [B·L, in] (padding rows included).
pub struct LinearInputs {
    /// Input of query, key and value.
    pub attention: Tensor,
    /// Input of the attention output (the heads' context); None without heads.
    pub context: Option<Tensor>,
    /// Input of the intermediate (FFN in) linear.
    pub ffn: Tensor,
    /// Input of the output (FFN out) linear: the activation.
    pub ffn_activation: Tensor,
}

/// The results of a forward pass.
pub struct ForwardOutput {
    /// [B, L, C] when the model has a classifier.
    pub logits: Option<Tensor>,
    /// [B, L, H]
    pub last_hidden_state: Tensor,
    /// Embedding output then each layer's output (num_layers + 1 tensors of [B, L, H]).
    pub hidden_states: Vec<Tensor>,
    /// Per layer [B, heads, L, L] attention probabilities (before attention dropout).
    pub attentions: Vec<Tensor>,
    /// Per logical layer, when asked for.
    pub linear_inputs: Vec<LinearInputs>,
}

/// A batch of token ids and the mask of real (non-pad) tokens.
pub struct Batch {
    /// [B, L] u32
    pub input_ids: Tensor,
    /// [B, L] f32, 1 for real tokens, 0 for padding.
    pub attention_mask: Tensor,
}

/// HF `BertEmbeddings` / `RobertaEmbeddings` / DistilBERT's `Embeddings` / `ElectraEmbeddings`
/// (+ an optional projection for factorized word embeddings), then ELECTRA's
/// `embeddings_project` when the block is narrower than the encoder.
struct Embeddings {
    word: Tensor,
    projection: Option<Tensor>,
    position: Tensor,
    /// None for a family without token types (DistilBERT).
    token_type: Option<Tensor>,
    norm: Norm,
    to_hidden: Option<Linear>,
}

/// HF `BertForTokenClassification` (or `BertModel` without a classifier; the pooler is unused).
pub struct Bert {
    arch: Arch,
    embeddings: Embeddings,
    layers: Vec<EncoderLayer>,
    classifier: Option<Linear>,
    hidden_dropout: f32,
    attention_dropout: f32,
    classifier_dropout: f32,
    /// Trainable hard-concrete head gates, when training them.
    gates: Option<gates::HeadGates>,
    /// Precision of the encoder linears' products (the classifier stays f32).
    precision: Precision,
    /// Which implementation runs the ops (fused on the CPU unless asked otherwise).
    kernels: Kernels,
}

/// Dropout probabilities (from config.json).
#[derive(Debug, Clone, Copy)]
pub struct Dropouts {
    pub hidden: f32,
    pub attention: f32,
    pub classifier: f32,
}

impl Bert {
    /// The model over `params`, on their device, with the device's default kernels.
    pub fn new(arch: &Arch, params: &Params, dropouts: Dropouts) -> Bert {
        let norm = |weight, bias| Norm {
            weight: params.get(weight),
            bias: params.get(bias),
            eps: arch.layer_norm_eps,
        };
        let word = params.get(Key::WordEmbeddings);
        let kernels = Kernels::for_device(word.device());
        let embeddings = Embeddings {
            word,
            projection: match arch.embeddings {
                EmbeddingKind::Dense => None,
                EmbeddingKind::Factorized { .. } => Some(params.get(Key::WordProjection)),
            },
            position: params.get(Key::PositionEmbeddings),
            token_type: (arch.type_vocab > 0).then(|| params.get(Key::TokenTypeEmbeddings)),
            norm: norm(
                Key::EmbeddingNorm(NormPart::Weight),
                Key::EmbeddingNorm(NormPart::Bias),
            ),
            to_hidden: arch.has_embedding_projection().then(|| Linear {
                weights: LinearWeights::Dense(
                    params.get(Key::EmbeddingProjection(NormPart::Weight)),
                ),
                bias: params.get(Key::EmbeddingProjection(NormPart::Bias)),
            }),
        };
        let layers = arch
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let linear = |slot| Linear::load(params, i, slot, l.linear(slot));
                let ln = |slot| {
                    norm(
                        Key::LayerNorm {
                            layer: i,
                            slot,
                            part: NormPart::Weight,
                        },
                        Key::LayerNorm {
                            layer: i,
                            slot,
                            part: NormPart::Bias,
                        },
                    )
                };
                EncoderLayer {
                    num_heads: l.num_heads,
                    query: linear(LinearSlot::Query),
                    key: linear(LinearSlot::Key),
                    value: linear(LinearSlot::Value),
                    attention_output: linear(LinearSlot::AttentionOutput),
                    attention_norm: ln(LayerNormSlot::Attention),
                    intermediate: linear(LinearSlot::Intermediate),
                    output: linear(LinearSlot::Output),
                    output_norm: ln(LayerNormSlot::Output),
                }
            })
            .collect();
        let classifier = arch.num_labels.map(|_| Linear {
            weights: LinearWeights::Dense(params.get(Key::Classifier(NormPart::Weight))),
            bias: params.get(Key::Classifier(NormPart::Bias)),
        });
        Bert {
            arch: arch.clone(),
            embeddings,
            layers,
            classifier,
            hidden_dropout: dropouts.hidden,
            attention_dropout: dropouts.attention,
            classifier_dropout: dropouts.classifier,
            gates: None,
            precision: Precision::F32,
            kernels,
        }
    }

    /// The inference model of a checkpoint on `device`: its weights are plain tensors, not
    /// autograd variables (a teacher, an evaluation copy), with the device's default kernels.
    pub fn load(ckpt: &Checkpoint, device: &Device) -> Result<Bert> {
        let params = Params::frozen(ckpt, device)?;
        Ok(Bert::new(&ckpt.arch, &params, dropouts_of(&ckpt.config)))
    }

    /// Runs the encoder linears' products in `precision` (bf16: autocast, f32 accumulation).
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    /// Runs the ops with `kernels` (resolved against the model's device by the caller).
    pub fn with_kernels(mut self, kernels: Kernels) -> Self {
        self.kernels = kernels;
        self
    }

    /// Multiplies every head's output by a trainable hard-concrete gate.
    pub fn with_gates(mut self, gates: gates::HeadGates) -> Self {
        self.gates = Some(gates);
        self
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    pub fn kernels(&self) -> Kernels {
        self.kernels
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        self.embeddings.word.device()
    }

    pub fn gates(&self) -> Option<&gates::HeadGates> {
        self.gates.as_ref()
    }

    pub fn arch(&self) -> &Arch {
        &self.arch
    }

    pub fn forward(
        &self,
        batch: &Batch,
        mode: &mut Mode,
        outputs: Outputs,
    ) -> candle_core::Result<ForwardOutput> {
        self.forward_gated(batch, mode, outputs, None)
    }

    /// The forward pass with one multiplier per attention head (`gates[layer]`: [heads]) applied
    /// to each head's output, for head importance and L0 gate training.
    pub fn forward_gated(
        &self,
        batch: &Batch,
        mode: &mut Mode,
        outputs: Outputs,
        gates: Option<&[Tensor]>,
    ) -> candle_core::Result<ForwardOutput> {
        let (b, l) = batch.input_ids.dims2()?;
        let h = self.arch.hidden;
        let mut x = self.embed(batch, mode)?;
        let mask = KeyMask::new(self.kernels, &batch.attention_mask)?;
        let mut hidden_states = vec![];
        let mut attentions = vec![];
        let mut linear_inputs = vec![];
        if outputs.hidden_states {
            hidden_states.push(x.clone());
        }
        for (logical, &stored) in self.arch.layer_map.iter().enumerate() {
            let gate = match (gates, &self.gates) {
                (Some(g), _) => Some(g[logical].clone()),
                (None, Some(hg)) => Some(hg.sample(logical, mode)?),
                (None, None) => None,
            };
            let ctx = LayerContext {
                model: self,
                mask: &mask,
                gate: gate.as_ref(),
                want_probs: outputs.attentions,
                capture: outputs.linear_inputs,
            };
            let out = self.layers[stored].forward(&x, &ctx, mode)?;
            x = out.hidden;
            if outputs.hidden_states {
                hidden_states.push(x.clone());
            }
            if outputs.attentions {
                attentions.push(match out.probs {
                    Some(p) => p,
                    None => Tensor::zeros((b, 0, l, l), DType::F32, x.device())?,
                });
            }
            linear_inputs.extend(out.linear_inputs);
        }
        let logits = match &self.classifier {
            Some(c) => {
                let z = self.dropout(&x, self.classifier_dropout, mode)?;
                let n = c.bias.dim(0)?;
                Some(
                    c.forward(self.kernels, &z.reshape((b * l, h))?, Precision::F32)?
                        .reshape((b, l, n))?,
                )
            }
            None => None,
        };
        Ok(ForwardOutput {
            logits,
            last_hidden_state: x,
            hidden_states,
            attentions,
            linear_inputs,
        })
    }

    /// The embedding block (word + position + token type, LayerNorm, dropout, and ELECTRA's
    /// projection): [B, L, H].
    pub fn embed(&self, batch: &Batch, mode: &mut Mode) -> candle_core::Result<Tensor> {
        let (b, l) = batch.input_ids.dims2()?;
        if l > self.arch.max_positions {
            candle_core::bail!(
                "sequence of {l} tokens exceeds max_position_embeddings {}",
                self.arch.max_positions
            );
        }
        let e = &self.embeddings;
        let ids = batch.input_ids.flatten_all()?;
        let mut x = e.word.index_select(&ids, 0)?;
        if let Some(p) = &e.projection {
            x = kernels::linear(self.kernels, &x, p, None, Precision::F32)?;
        }
        let width = self.arch.embedding_size;
        let mut x = x.reshape((b, l, width))?;
        x = match self.arch.positions {
            Positions::FromZero => x.broadcast_add(&e.position.narrow(0, 0, l)?)?,
            Positions::AfterPadding { pad } => {
                let ids = after_padding_positions(&batch.input_ids, pad)?.flatten_all()?;
                (x + e.position.index_select(&ids, 0)?.reshape((b, l, width))?)?
            }
        };
        if let Some(token_type) = &e.token_type {
            x = x.broadcast_add(&token_type.narrow(0, 0, 1)?)?;
        }
        let x = self.dropout(
            &e.norm.forward(self.kernels, &x)?,
            self.hidden_dropout,
            mode,
        )?;
        match &e.to_hidden {
            Some(projection) => projection
                .forward(self.kernels, &x.reshape((b * l, width))?, Precision::F32)?
                .reshape((b, l, self.arch.hidden)),
            None => Ok(x),
        }
    }

    /// Runs logical layer `layer` in eval mode on `x` [B, L, H]; with `capture`, also returns
    /// the inputs of its linears (layer-by-layer surgeries such as SparseGPT).
    pub fn run_layer(
        &self,
        layer: usize,
        x: &Tensor,
        batch: &Batch,
        capture: bool,
    ) -> candle_core::Result<(Tensor, Option<LinearInputs>)> {
        let stored = &self.layers[self.arch.layer_map[layer]];
        let mask = KeyMask::new(self.kernels, &batch.attention_mask)?;
        let ctx = LayerContext {
            model: self,
            mask: &mask,
            gate: None,
            want_probs: false,
            capture,
        };
        let out = stored.forward(x, &ctx, &mut Mode::Eval)?;
        Ok((out.hidden, out.linear_inputs))
    }

    /// Inverted dropout (identity in eval mode or at p = 0).
    fn dropout(&self, x: &Tensor, p: f32, mode: &mut Mode) -> candle_core::Result<Tensor> {
        match dropout_mask(x, p, mode)? {
            Some(mask) => x * mask.tensor(x)?,
            None => Ok(x.clone()),
        }
    }
}

/// RoBERTa's position ids (transformers' `create_position_ids_from_input_ids`) computed where
/// the ids are, so a batch on a GPU is not read back to the host: a running count of the
/// non-padding tokens (a prefix sum in f32, exact for any window length), offset by `pad`;
/// padding tokens get `pad` itself. [B, L] u32 → [B, L] u32.
pub fn after_padding_positions(input_ids: &Tensor, pad: u32) -> candle_core::Result<Tensor> {
    let mask = input_ids.ne(pad)?.to_dtype(DType::F32)?;
    let count = (mask.cumsum(1)? * &mask)?.to_dtype(DType::U32)?;
    count.broadcast_add(&Tensor::new(&[pad], input_ids.device())?)
}

/// Inverted-dropout multipliers (0 or 1/(1−p)) for a tensor shaped like `x`, in training mode
/// with p > 0: drawn in order from the run's generator when `x` is in RAM (so both kernels see
/// the same masks), by the device's generator (seeded per step) elsewhere.
fn dropout_mask(x: &Tensor, p: f32, mode: &mut Mode) -> candle_core::Result<Option<Multipliers>> {
    let rng = match mode {
        Mode::Train(rng) if p > 0.0 => rng,
        _ => return Ok(None),
    };
    dropout_multipliers(x.shape(), p, rng, x.device()).map(Some)
}

/// `shape`'s worth of inverted-dropout multipliers for `device` (see [`dropout_mask`]).
fn dropout_multipliers(
    shape: &candle_core::Shape,
    p: f32,
    rng: &mut Rng,
    device: &Device,
) -> candle_core::Result<Multipliers> {
    let scale = 1.0 / (1.0 - p);
    if device.is_cpu() {
        let n = shape.elem_count();
        return Ok(Multipliers::Host(
            (0..n)
                .map(|_| if rng.uniform() < p { 0.0 } else { scale })
                .collect(),
        ));
    }
    let u = Tensor::rand(0f32, 1f32, shape, device)?;
    Ok(Multipliers::Device(
        (u.ge(p as f64)?.to_dtype(DType::F32)? * scale as f64)?,
    ))
}

/// Log-softmax over the last dimension built from ops that all have gradients.
pub fn log_softmax(x: &Tensor) -> candle_core::Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&lse)
}

/// Builds a model for a checkpoint with its dropout settings.
pub fn dropouts_of(config: &crate::arch::BertConfig) -> Dropouts {
    Dropouts {
        hidden: config.hidden_dropout_prob as f32,
        attention: config.attention_probs_dropout_prob as f32,
        classifier: config
            .classifier_dropout
            .unwrap_or(config.hidden_dropout_prob) as f32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tensor computation agrees with the host reference (`Positions::ids`) on rows with
    /// padding anywhere, rows of only padding, and every length up to past a power of two.
    #[test]
    fn position_ids_after_padding_match_the_host_reference() {
        let mut rng = Rng::new(5);
        for pad in [0u32, 1, 7] {
            for l in 1..=19 {
                let rows: Vec<Vec<u32>> = (0..4)
                    .map(|r| {
                        (0..l)
                            .map(|_| match r {
                                0 => pad,
                                _ if rng.uniform() < 0.3 => pad,
                                _ => 2 + (rng.uniform() * 20.0) as u32,
                            })
                            .collect()
                    })
                    .collect();
                let flat: Vec<u32> = rows.concat();
                let ids = Tensor::from_vec(flat, (4, l), &Device::Cpu).unwrap();
                let ours = after_padding_positions(&ids, pad)
                    .unwrap()
                    .to_vec2::<u32>()
                    .unwrap();
                let positions = Positions::AfterPadding { pad };
                let expected: Vec<Vec<u32>> = rows.iter().map(|r| positions.ids(r)).collect();
                assert_eq!(ours, expected, "pad {pad}, length {l}");
            }
        }
    }
}
