//! Lowers a checkpoint's [`Arch`] to an ONNX graph that computes what `model::Bert` computes in
//! eval mode: word (+ E→H projection) + position + token-type embeddings and LayerNorm, then each
//! logical layer (self-attention with its own head count, 0 heads meaning only the output bias,
//! then the feed-forward block), then the token classifier. Shared layers reference the same
//! initializers, so the file stores each unique parameter once.

use std::collections::HashMap;

use candle_core::{Device, Tensor};

use super::graph::{Attr, Dim, GraphBuilder};
use super::onnx_proto::tensor_proto::DataType;
use crate::arch::{
    Activation, Arch, EmbeddingKind, Key, LayerNormSlot, LinearKind, LinearPart, LinearSlot,
    NormPart, Positions,
};
use crate::error::Result;
use crate::io::Checkpoint;

/// How the encoder's linear layers are stored in the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinearStorage {
    F32,
    /// Int8 weights per output channel, activations quantized at run time (dynamic quantization).
    DynamicInt8,
}

/// The names of the graph's inputs, in order.
pub struct GraphInputs {
    pub names: Vec<&'static str>,
}

/// Builds the graph; returns the builder (for encoding) and the inputs it declares.
pub fn lower(ckpt: &Checkpoint, storage: LinearStorage) -> Result<(GraphBuilder, GraphInputs)> {
    let mut lowering = Lowering {
        g: GraphBuilder::default(),
        ckpt,
        arch: &ckpt.arch,
        storage,
        quantized_inputs: HashMap::new(),
    };
    let inputs = lowering.declare_inputs();
    let mut x = lowering.embeddings(&inputs)?;
    let mask_bias = lowering.mask_bias();
    for (logical, &stored) in ckpt.arch.layer_map.iter().enumerate() {
        x = lowering.layer(logical, stored, &x, &mask_bias)?;
    }
    lowering.head(&x)?;
    Ok((lowering.g, inputs))
}

struct Lowering<'a> {
    g: GraphBuilder,
    ckpt: &'a Checkpoint,
    arch: &'a Arch,
    storage: LinearStorage,
    /// DynamicQuantizeLinear outputs per quantized activation, shared by the linears that read it.
    quantized_inputs: HashMap<String, [String; 3]>,
}

impl Lowering<'_> {
    fn declare_inputs(&mut self) -> GraphInputs {
        let dims = [Dim::Named("batch"), Dim::Named("sequence")];
        let mut names = vec!["input_ids", "attention_mask"];
        if self.arch.type_vocab > 1 {
            names.push("token_type_ids");
        }
        for name in &names {
            self.g.input(name, DataType::Int64, &dims);
        }
        GraphInputs { names }
    }

    fn tensor(&self, key: Key) -> Result<Tensor> {
        self.ckpt.tensor(key, &Device::Cpu)
    }

    /// A parameter as an initializer under its checkpoint name.
    fn param(&mut self, key: Key) -> Result<String> {
        let name = key.name(self.arch.layout);
        if self.g.has_initializer(&name) {
            return Ok(name);
        }
        let t = self.tensor(key)?;
        let values = t.flatten_all()?.to_vec1::<f32>()?;
        Ok(self.g.f32_initializer(&name, t.dims(), &values))
    }

    /// A [out, in] weight transposed to [in, out], the right operand of MatMul.
    fn transposed(&self, key: Key) -> Result<(Vec<usize>, Vec<f32>)> {
        let t = self.tensor(key)?.t()?.contiguous()?;
        Ok((t.dims().to_vec(), t.flatten_all()?.to_vec1::<f32>()?))
    }

    /// x · Wᵀ for a weight stored [out, in], as f32 or dynamically quantized int8. A weight that
    /// a shared layer already added is referenced, not stored again.
    fn matmul(&mut self, scope: &str, x: &str, key: Key, storage: LinearStorage) -> Result<String> {
        let name = format!("{}.T", key.name(self.arch.layout));
        Ok(match storage {
            LinearStorage::F32 => {
                if !self.g.has_initializer(&name) {
                    let (dims, values) = self.transposed(key)?;
                    self.g.f32_initializer(&name, &dims, &values);
                }
                self.g.node(scope, "MatMul", &[x, &name], vec![])
            }
            LinearStorage::DynamicInt8 => {
                let (wq, ws, wz) = (
                    format!("{name}.int8"),
                    format!("{name}.scale"),
                    format!("{name}.zero_point"),
                );
                if !self.g.has_initializer(&wq) {
                    let (dims, values) = self.transposed(key)?;
                    let (rows, cols) = (dims[0], dims[1]);
                    let w = super::quantize::per_column_int8(&values, rows, cols);
                    self.g.i8_initializer(&wq, &dims, &w.values);
                    self.g.f32_initializer(&ws, &[cols], &w.scales);
                    self.g.i8_initializer(&wz, &[cols], &vec![0; cols]);
                }
                let [xq, xs, xz] = self.quantized(scope, x);
                let product = self
                    .g
                    .node(scope, "MatMulInteger", &[&xq, &wq, &xz, &wz], vec![]);
                let float = ("to", Attr::Int(DataType::Float as i64));
                let product = self.g.node(scope, "Cast", &[&product], vec![float]);
                let scale = self.g.node(scope, "Mul", &[&xs, &ws], vec![]);
                self.g.node(scope, "Mul", &[&product, &scale], vec![])
            }
        })
    }

    /// The uint8 form of an activation (value, scale, zero point), computed once per activation.
    fn quantized(&mut self, scope: &str, x: &str) -> [String; 3] {
        if let Some(q) = self.quantized_inputs.get(x) {
            return q.clone();
        }
        let outs = self
            .g
            .node_outputs(scope, "DynamicQuantizeLinear", &[x], vec![], 3);
        let q: [String; 3] = outs.try_into().expect("three outputs");
        self.quantized_inputs.insert(x.to_string(), q.clone());
        q
    }

    /// One linear of a stored layer (dense, sparse stored dense, or low-rank) plus its bias.
    fn linear(&mut self, scope: &str, x: &str, stored: usize, slot: LinearSlot) -> Result<String> {
        let key = |part| Key::Linear {
            layer: stored,
            slot,
            part,
        };
        let storage = self.storage;
        let y = match self.arch.layers[stored].linear(slot) {
            LinearKind::Dense | LinearKind::Sparse { .. } => {
                self.matmul(scope, x, key(LinearPart::Weight), storage)?
            }
            LinearKind::LowRank { .. } => {
                let z = self.matmul(scope, x, key(LinearPart::Down), storage)?;
                self.matmul(scope, &z, key(LinearPart::Up), storage)?
            }
        };
        let bias = self.param(key(LinearPart::Bias))?;
        Ok(self.g.node(scope, "Add", &[&y, &bias], vec![]))
    }

    fn layer_norm(&mut self, scope: &str, x: &str, weight: Key, bias: Key) -> Result<String> {
        let w = self.param(weight)?;
        let b = self.param(bias)?;
        let attrs = vec![
            ("axis", Attr::Int(-1)),
            ("epsilon", Attr::Float(self.arch.layer_norm_eps as f32)),
        ];
        Ok(self
            .g
            .node(scope, "LayerNormalization", &[x, &w, &b], attrs))
    }

    /// Word (+ projection) + position + token type, then LayerNorm: [B, L, H].
    fn embeddings(&mut self, inputs: &GraphInputs) -> Result<String> {
        let scope = "embeddings";
        let word_table = self.param(Key::WordEmbeddings)?;
        let mut word = self
            .g
            .node(scope, "Gather", &[&word_table, "input_ids"], vec![]);
        if let EmbeddingKind::Factorized { .. } = self.arch.embeddings {
            word = self.matmul(scope, &word, Key::WordProjection, LinearStorage::F32)?;
        }
        let positions = self.position_ids(scope);
        let position_table = self.param(Key::PositionEmbeddings)?;
        let position = self
            .g
            .node(scope, "Gather", &[&position_table, &positions], vec![]);
        let sum = self.g.node(scope, "Add", &[&word, &position], vec![]);
        let sum = if inputs.names.contains(&"token_type_ids") {
            let table = self.param(Key::TokenTypeEmbeddings)?;
            let token_type = self
                .g
                .node(scope, "Gather", &[&table, "token_type_ids"], vec![]);
            self.g.node(scope, "Add", &[&sum, &token_type], vec![])
        } else if self.arch.type_vocab > 0 {
            let table = self.param(Key::TokenTypeEmbeddings)?;
            self.g.node(scope, "Add", &[&sum, &table], vec![])
        } else {
            sum
        };
        let x = self.layer_norm(
            scope,
            &sum,
            Key::EmbeddingNorm(NormPart::Weight),
            Key::EmbeddingNorm(NormPart::Bias),
        )?;
        if !self.arch.has_embedding_projection() {
            return Ok(x);
        }
        let weight = Key::EmbeddingProjection(NormPart::Weight);
        let projected = self.matmul(scope, &x, weight, LinearStorage::F32)?;
        let bias = self.param(Key::EmbeddingProjection(NormPart::Bias))?;
        Ok(self.g.node(scope, "Add", &[&projected, &bias], vec![]))
    }

    /// The position ids: 0..L, or RoBERTa's count of non-pad tokens from `pad + 1` ([B, L]).
    fn position_ids(&mut self, scope: &str) -> String {
        let one = self.g.i64_constant(&[1], true);
        match self.arch.positions {
            Positions::FromZero => {
                let shape = self.g.node(scope, "Shape", &["input_ids"], vec![]);
                let zero = self.g.i64_constant(&[0], true);
                let length = self.g.node(scope, "Gather", &[&shape, &one], vec![]);
                self.g.node(scope, "Range", &[&zero, &length, &one], vec![])
            }
            Positions::AfterPadding { pad } => {
                let pad = self.g.i64_constant(&[pad as i64], true);
                let is_pad = self.g.node(scope, "Equal", &["input_ids", &pad], vec![]);
                let real = self.g.node(scope, "Not", &[&is_pad], vec![]);
                let int64 = ("to", Attr::Int(DataType::Int64 as i64));
                let real = self.g.node(scope, "Cast", &[&real], vec![int64]);
                let counted = self.g.node(scope, "CumSum", &[&real, &one], vec![]);
                let counted = self.g.node(scope, "Mul", &[&counted, &real], vec![]);
                self.g.node(scope, "Add", &[&counted, &pad], vec![])
            }
        }
    }

    /// [B, 1, 1, L]: 0 for real keys, −1e9 for padding (as the candle model does).
    fn mask_bias(&mut self) -> String {
        let scope = "mask";
        let mask = self.g.node(
            scope,
            "Cast",
            &["attention_mask"],
            vec![("to", Attr::Int(DataType::Float as i64))],
        );
        let one = self.g.f32_scalar(1.0);
        let big = self.g.f32_scalar(1e9);
        let shifted = self.g.node(scope, "Sub", &[&mask, &one], vec![]);
        let bias = self.g.node(scope, "Mul", &[&shifted, &big], vec![]);
        let axes = self.g.i64_constant(&[1, 2], false);
        self.g.node(scope, "Unsqueeze", &[&bias, &axes], vec![])
    }

    fn layer(&mut self, logical: usize, stored: usize, x: &str, mask_bias: &str) -> Result<String> {
        let scope = format!("layer.{logical}");
        let scope = scope.as_str();
        let heads = self.arch.layers[stored].num_heads;
        let attention = if heads == 0 {
            // No heads: the attention block adds only its output bias.
            let bias = self.param(Key::Linear {
                layer: stored,
                slot: LinearSlot::AttentionOutput,
                part: LinearPart::Bias,
            })?;
            self.g.node(scope, "Add", &[x, &bias], vec![])
        } else {
            let context = self.self_attention(scope, stored, x, mask_bias)?;
            let out = self.linear(scope, &context, stored, LinearSlot::AttentionOutput)?;
            self.g.node(scope, "Add", &[&out, x], vec![])
        };
        let norm = |part| Key::LayerNorm {
            layer: stored,
            slot: LayerNormSlot::Attention,
            part,
        };
        let x1 = self.layer_norm(
            scope,
            &attention,
            norm(NormPart::Weight),
            norm(NormPart::Bias),
        )?;
        let inter = self.linear(scope, &x1, stored, LinearSlot::Intermediate)?;
        let inter = self.activation(scope, &inter);
        let out = self.linear(scope, &inter, stored, LinearSlot::Output)?;
        let sum = self.g.node(scope, "Add", &[&out, &x1], vec![]);
        let norm = |part| Key::LayerNorm {
            layer: stored,
            slot: LayerNormSlot::Output,
            part,
        };
        self.layer_norm(scope, &sum, norm(NormPart::Weight), norm(NormPart::Bias))
    }

    /// softmax(Q·Kᵀ/√d + mask)·V over the layer's heads, back in [B, L, heads·d].
    fn self_attention(
        &mut self,
        scope: &str,
        stored: usize,
        x: &str,
        mask_bias: &str,
    ) -> Result<String> {
        let heads = self.arch.layers[stored].num_heads as i64;
        let d = self.arch.head_dim as i64;
        let split_shape = self.g.i64_constant(&[0, 0, heads, d], false);
        let split = |this: &mut Self, slot, perm: Vec<i64>| -> Result<String> {
            let y = this.linear(scope, x, stored, slot)?;
            let y = this.g.node(scope, "Reshape", &[&y, &split_shape], vec![]);
            Ok(this
                .g
                .node(scope, "Transpose", &[&y], vec![("perm", Attr::Ints(perm))]))
        };
        let q = split(self, LinearSlot::Query, vec![0, 2, 1, 3])?;
        let k = split(self, LinearSlot::Key, vec![0, 2, 3, 1])?;
        let v = split(self, LinearSlot::Value, vec![0, 2, 1, 3])?;
        let scores = self.g.node(scope, "MatMul", &[&q, &k], vec![]);
        let scale = self.g.f32_scalar(1.0 / (d as f32).sqrt());
        let scores = self.g.node(scope, "Mul", &[&scores, &scale], vec![]);
        let scores = self.g.node(scope, "Add", &[&scores, mask_bias], vec![]);
        let probs = self
            .g
            .node(scope, "Softmax", &[&scores], vec![("axis", Attr::Int(-1))]);
        let context = self.g.node(scope, "MatMul", &[&probs, &v], vec![]);
        let context = self.g.node(
            scope,
            "Transpose",
            &[&context],
            vec![("perm", Attr::Ints(vec![0, 2, 1, 3]))],
        );
        let merge_shape = self.g.i64_constant(&[0, 0, heads * d], false);
        Ok(self
            .g
            .node(scope, "Reshape", &[&context, &merge_shape], vec![]))
    }

    /// GELU (erf or tanh form, written out so ONNX Runtime's fusions recognise it) or ReLU.
    fn activation(&mut self, scope: &str, x: &str) -> String {
        let half = self.g.f32_scalar(0.5);
        let one = self.g.f32_scalar(1.0);
        match self.arch.activation {
            Activation::Relu => self.g.node(scope, "Relu", &[x], vec![]),
            Activation::GeluErf => {
                let sqrt2 = self.g.f32_scalar(std::f32::consts::SQRT_2);
                let t = self.g.node(scope, "Div", &[x, &sqrt2], vec![]);
                let t = self.g.node(scope, "Erf", &[&t], vec![]);
                let t = self.g.node(scope, "Add", &[&t, &one], vec![]);
                let t = self.g.node(scope, "Mul", &[x, &t], vec![]);
                self.g.node(scope, "Mul", &[&t, &half], vec![])
            }
            Activation::GeluTanh => {
                let c = self.g.f32_scalar(0.044715);
                let k = self.g.f32_scalar((2.0 / std::f32::consts::PI).sqrt());
                let cube = self.g.node(scope, "Mul", &[x, x], vec![]);
                let cube = self.g.node(scope, "Mul", &[&cube, x], vec![]);
                let t = self.g.node(scope, "Mul", &[&cube, &c], vec![]);
                let t = self.g.node(scope, "Add", &[x, &t], vec![]);
                let t = self.g.node(scope, "Mul", &[&t, &k], vec![]);
                let t = self.g.node(scope, "Tanh", &[&t], vec![]);
                let t = self.g.node(scope, "Add", &[&t, &one], vec![]);
                let t = self.g.node(scope, "Mul", &[x, &t], vec![]);
                self.g.node(scope, "Mul", &[&t, &half], vec![])
            }
        }
    }

    /// The token classifier's logits [B, L, C], or the last hidden state without a classifier.
    fn head(&mut self, x: &str) -> Result<()> {
        let dims = |last| {
            [
                Dim::Named("batch"),
                Dim::Named("sequence"),
                Dim::Fixed(last as i64),
            ]
        };
        match self.arch.num_labels {
            Some(labels) => {
                let y = self.matmul(
                    "classifier",
                    x,
                    Key::Classifier(NormPart::Weight),
                    LinearStorage::F32,
                )?;
                let bias = self.param(Key::Classifier(NormPart::Bias))?;
                self.g.node("classifier", "Add", &[&y, &bias], vec![]);
                self.g.rename_last_output("logits");
                self.g.output("logits", DataType::Float, &dims(labels));
            }
            None => {
                self.g.node("encoder", "Identity", &[x], vec![]);
                self.g.rename_last_output("last_hidden_state");
                self.g.output(
                    "last_hidden_state",
                    DataType::Float,
                    &dims(self.arch.hidden),
                );
            }
        }
        Ok(())
    }
}
