//! A candle BERT encoder with a token-classification head that runs every structure [`Arch`]
//! describes: dense or factorized word embeddings, dense / low-rank / sparse linears, per-layer
//! head counts (0 allowed), and cross-layer sharing through the layer map. Mirrors HF
//! `BertForTokenClassification` (modeling_bert.py); dropout really drops in training mode.

pub mod attention;
pub mod bf16_gemm;
pub mod gates;
pub mod generate;
pub mod linear;
pub mod loss;
pub mod matrix;
pub mod ops;
pub mod params;
pub mod simd;
pub mod student;

use candle_core::{DType, Tensor, D};

use crate::arch::{
    Activation, Arch, EmbeddingKind, Key, LayerNormSlot, LinearKind, LinearPart, LinearSlot,
    NormPart, Positions,
};
use crate::util::rng::Rng;
pub use linear::Precision;
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

struct Linear {
    /// Dense: [out, in]; low-rank: `down` [r, in] then `up` [out, r].
    weights: LinearWeights,
    bias: Tensor,
}

enum LinearWeights {
    Dense(Tensor),
    LowRank { down: Tensor, up: Tensor },
}

impl Linear {
    fn load(params: &Params, layer: usize, slot: LinearSlot, kind: LinearKind) -> Self {
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
    fn forward(&self, x: &Tensor, precision: Precision) -> candle_core::Result<Tensor> {
        let (input, w) = self.last_product(x, precision)?;
        linear::linear(&input, w, Some(&self.bias), precision)
    }

    /// gelu(forward(x)), the activation applied in the last product's own pass (inference:
    /// its backward recomputes the pre-activation, which training would pay on every step).
    fn forward_gelu(&self, x: &Tensor, precision: Precision) -> candle_core::Result<Tensor> {
        let (input, w) = self.last_product(x, precision)?;
        linear::linear_gelu(&input, w, &self.bias, precision)
    }

    /// The input and weight of the product that gets the bias: x and the weight, or for a
    /// low-rank linear x through its first factor and the second.
    fn last_product(
        &self,
        x: &Tensor,
        precision: Precision,
    ) -> candle_core::Result<(Tensor, &Tensor)> {
        Ok(match &self.weights {
            LinearWeights::Dense(w) => (x.clone(), w),
            LinearWeights::LowRank { down, up } => (linear::linear(x, down, None, precision)?, up),
        })
    }
}

struct Norm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl Norm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        ops::layer_norm(x, &self.weight, &self.bias, self.eps)
    }
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

/// HF `BertLayer`.
struct EncoderLayer {
    num_heads: usize,
    query: Linear,
    key: Linear,
    value: Linear,
    attention_output: Linear,
    attention_norm: Norm,
    intermediate: Linear,
    output: Linear,
    output_norm: Norm,
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
}

/// Dropout probabilities (from config.json).
#[derive(Debug, Clone, Copy)]
pub struct Dropouts {
    pub hidden: f32,
    pub attention: f32,
    pub classifier: f32,
}

impl Bert {
    pub fn new(arch: &Arch, params: &Params, dropouts: Dropouts) -> Bert {
        let norm = |weight, bias| Norm {
            weight: params.get(weight),
            bias: params.get(bias),
            eps: arch.layer_norm_eps,
        };
        let embeddings = Embeddings {
            word: params.get(Key::WordEmbeddings),
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
        }
    }

    /// Runs the encoder linears' products in `precision` (bf16: autocast, f32 accumulation).
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
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
        let mask = AttentionMask::of(batch)?;
        let mut hidden_states = vec![];
        let mut attentions = vec![];
        let mut linear_inputs = vec![];
        if outputs.hidden_states {
            hidden_states.push(x.clone());
        }
        for (logical, &stored) in self.arch.layer_map.iter().enumerate() {
            let capture = outputs.linear_inputs.then_some(&mut linear_inputs);
            let gate = match (gates, &self.gates) {
                (Some(g), _) => Some(g[logical].clone()),
                (None, Some(hg)) => Some(hg.sample(logical, mode)?),
                (None, None) => None,
            };
            let (next, probs) = self.layer_forward(
                &self.layers[stored],
                &x,
                &mask,
                mode,
                capture,
                gate.as_ref(),
                outputs.attentions,
            )?;
            x = next;
            if outputs.hidden_states {
                hidden_states.push(x.clone());
            }
            if outputs.attentions {
                if let Some(p) = probs {
                    attentions.push(p);
                } else {
                    attentions.push(Tensor::zeros((b, 0, l, l), DType::F32, x.device())?);
                }
            }
        }
        let logits = match &self.classifier {
            Some(c) => {
                let z = dropout(&x, self.classifier_dropout, mode)?;
                let n = c.bias.dim(0)?;
                Some(
                    c.forward(&z.reshape((b * l, h))?, Precision::F32)?
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
            x = linear::linear(&x, p, None, Precision::F32)?;
        }
        let width = self.arch.embedding_size;
        let mut x = x.reshape((b, l, width))?;
        x = match self.arch.positions {
            Positions::FromZero => x.broadcast_add(&e.position.narrow(0, 0, l)?)?,
            positions => {
                let ids: Vec<u32> = batch
                    .input_ids
                    .to_vec2::<u32>()?
                    .iter()
                    .flat_map(|row| positions.ids(row))
                    .collect();
                let ids = Tensor::from_vec(ids, b * l, x.device())?;
                (x + e.position.index_select(&ids, 0)?.reshape((b, l, width))?)?
            }
        };
        if let Some(token_type) = &e.token_type {
            x = x.broadcast_add(&token_type.narrow(0, 0, 1)?)?;
        }
        let x = dropout(&e.norm.forward(&x)?, self.hidden_dropout, mode)?;
        match &e.to_hidden {
            Some(projection) => projection
                .forward(&x.reshape((b * l, width))?, Precision::F32)?
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
        let mut inputs = vec![];
        let stored = &self.layers[self.arch.layer_map[layer]];
        let mask = AttentionMask::of(batch)?;
        let (y, _) = self.layer_forward(
            stored,
            x,
            &mask,
            &mut Mode::Eval,
            capture.then_some(&mut inputs),
            None,
            false,
        )?;
        Ok((y, inputs.pop()))
    }

    /// One encoder layer; returns the output and, when `want_probs`, the attention probabilities
    /// (None without heads). Without gates or probabilities the fused attention op runs.
    #[allow(clippy::too_many_arguments)]
    fn layer_forward(
        &self,
        layer: &EncoderLayer,
        x: &Tensor,
        mask: &AttentionMask,
        mode: &mut Mode,
        capture: Option<&mut Vec<LinearInputs>>,
        gate: Option<&Tensor>,
        want_probs: bool,
    ) -> candle_core::Result<(Tensor, Option<Tensor>)> {
        let (b, l, h) = x.dims3()?;
        let p = self.precision;
        let flat = x.reshape((b * l, h))?;
        let mut context_in = None;
        let (attn, probs) = if layer.num_heads == 0 {
            // No heads left: the sub-block contributes only the output bias; the residual stays.
            (
                layer
                    .attention_output
                    .bias
                    .broadcast_as((b * l, h))?
                    .contiguous()?,
                None,
            )
        } else if gate.is_none() && !want_probs {
            let heads = layer.num_heads;
            let width = heads * self.arch.head_dim;
            let shaped = |t: Tensor| t.reshape((b, l, width));
            let q = shaped(layer.query.forward(&flat, p)?)?;
            let k = shaped(layer.key.forward(&flat, p)?)?;
            let v = shaped(layer.value.forward(&flat, p)?)?;
            let dropout = match mode {
                Mode::Train(rng) if self.attention_dropout > 0.0 => Some(dropout_multipliers(
                    b * heads * l * l,
                    self.attention_dropout,
                    rng,
                )),
                _ => None,
            };
            let context = attention::self_attention(&q, &k, &v, heads, &mask.keys, dropout)?
                .reshape((b * l, width))?;
            context_in = Some(context.clone());
            (layer.attention_output.forward(&context, p)?, None)
        } else {
            let mask_bias = &mask.bias;
            let (heads, d) = (layer.num_heads, self.arch.head_dim);
            let split = |t: Tensor| -> candle_core::Result<Tensor> {
                t.reshape((b, l, heads, d))?.transpose(1, 2)?.contiguous()
            };
            let q = split(layer.query.forward(&flat, p)?)?;
            let k = split(layer.key.forward(&flat, p)?)?;
            let v = split(layer.value.forward(&flat, p)?)?;
            let scores = (q.matmul(&k.t()?.contiguous()?)? * (1.0 / (d as f64).sqrt()))?
                .broadcast_add(mask_bias)?;
            let probs = ops::softmax_last_dim(&scores)?;
            let mut context = dropout(&probs, self.attention_dropout, mode)?.matmul(&v)?;
            if let Some(g) = gate {
                context = context.broadcast_mul(&g.reshape((1, heads, 1, 1))?)?;
            }
            let context = context
                .transpose(1, 2)?
                .contiguous()?
                .reshape((b * l, heads * d))?;
            context_in = Some(context.clone());
            (layer.attention_output.forward(&context, p)?, Some(probs))
        };
        let x1 =
            layer
                .attention_norm
                .forward(&dropout_add(&attn, &flat, self.hidden_dropout, mode)?)?;
        let inter = match (&mode, self.arch.activation) {
            (Mode::Eval, Activation::GeluErf) => layer.intermediate.forward_gelu(&x1, p)?,
            _ => activation(&layer.intermediate.forward(&x1, p)?, self.arch.activation)?,
        };
        let out = layer.output.forward(&inter, p)?;
        let y = layer
            .output_norm
            .forward(&dropout_add(&out, &x1, self.hidden_dropout, mode)?)?;
        if let Some(store) = capture {
            store.push(LinearInputs {
                attention: flat,
                context: context_in,
                ffn: x1,
                ffn_activation: inter,
            });
        }
        Ok((y.reshape((b, l, h))?, probs))
    }
}

/// The attention mask of a batch in the two forms the attention paths read.
struct AttentionMask {
    /// [B, 1, 1, L]: 0 for real keys, a large negative number for padding.
    bias: Tensor,
    /// [B·L]: 1 for real keys, 0 for padding.
    keys: Vec<f32>,
}

impl AttentionMask {
    fn of(batch: &Batch) -> candle_core::Result<Self> {
        let (b, l) = batch.attention_mask.dims2()?;
        let mask = batch.attention_mask.to_dtype(DType::F32)?;
        Ok(AttentionMask {
            bias: ((&mask - 1.0)? * 1e9)?.reshape((b, 1, 1, l))?,
            keys: mask.flatten_all()?.to_vec1::<f32>()?,
        })
    }
}

fn activation(x: &Tensor, act: Activation) -> candle_core::Result<Tensor> {
    match act {
        Activation::GeluErf => ops::gelu_erf(x),
        Activation::GeluTanh => x.gelu(),
        Activation::Relu => x.relu(),
    }
}

/// Inverted dropout with a mask drawn from the run's generator (identity in eval mode).
fn dropout(x: &Tensor, p: f32, mode: &mut Mode) -> candle_core::Result<Tensor> {
    let rng = match mode {
        Mode::Train(rng) if p > 0.0 => rng,
        _ => return Ok(x.clone()),
    };
    let mask = dropout_multipliers(x.elem_count(), p, rng);
    let mask = Tensor::from_vec(mask, x.shape(), x.device())?;
    x * mask
}

/// dropout(a) + r, the residual connection after a sub-block, in one pass when training.
fn dropout_add(a: &Tensor, r: &Tensor, p: f32, mode: &mut Mode) -> candle_core::Result<Tensor> {
    match mode {
        Mode::Train(rng) if p > 0.0 => {
            ops::scaled_add(a, dropout_multipliers(a.elem_count(), p, rng), r)
        }
        _ => a + r,
    }
}

/// `n` inverted-dropout multipliers (0 or 1/(1−p)), drawn in order from the run's generator.
fn dropout_multipliers(n: usize, p: f32, rng: &mut Rng) -> Vec<f32> {
    let scale = 1.0 / (1.0 - p);
    (0..n)
        .map(|_| if rng.uniform() < p { 0.0 } else { scale })
        .collect()
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
