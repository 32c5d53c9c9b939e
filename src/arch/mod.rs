//! The typed structure of a checkpoint ([`Arch`]): HF config + the `"surgery"` variants + what the
//! tensor file holds (name layout, pooler, classifier). It is the one source of every tensor's
//! expected shape, used by the loader, the model and the parameter budget.

pub mod config;
pub mod names;
pub mod tags;

use std::collections::BTreeMap;

pub use config::{
    BertConfig, EmbeddingKind, HistoryEntry, LayerInfo, LinearKind, SparsePattern, SurgeryInfo,
    SURGERY_FORMAT_VERSION,
};
pub use names::{Family, Key, LayerNormSlot, Layout, LinearPart, LinearSlot, NormPart};

/// The activation of the feed-forward block (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `gelu`: the exact, erf-based GELU.
    GeluErf,
    /// `gelu_new` / `gelu_pytorch_tanh`: the tanh approximation.
    GeluTanh,
    Relu,
}

impl Activation {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "gelu" => Some(Activation::GeluErf),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Some(Activation::GeluTanh),
            "relu" => Some(Activation::Relu),
            _ => None,
        }
    }
}

/// How the position ids of a sequence are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Positions {
    /// 0, 1, 2, … (BERT, DistilBERT, ELECTRA).
    FromZero,
    /// RoBERTa's: tokens other than `pad` count from `pad + 1`; `pad` tokens get `pad`.
    AfterPadding { pad: u32 },
}

impl Positions {
    /// Rows of the position table before the first real token's.
    pub fn offset(self) -> usize {
        match self {
            Positions::FromZero => 0,
            Positions::AfterPadding { pad } => pad as usize + 1,
        }
    }

    /// The position ids of one sequence of token ids (HF `create_position_ids_from_input_ids`).
    pub fn ids(self, tokens: &[u32]) -> Vec<u32> {
        match self {
            Positions::FromZero => (0..tokens.len() as u32).collect(),
            Positions::AfterPadding { pad } => {
                let mut next = pad;
                tokens
                    .iter()
                    .map(|&t| {
                        if t == pad {
                            pad
                        } else {
                            next += 1;
                            next
                        }
                    })
                    .collect()
            }
        }
    }
}

/// The structure of one stored encoder layer.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerArch {
    pub num_heads: usize,
    pub intermediate: usize,
    pub linears: BTreeMap<LinearSlot, LinearKind>,
}

impl LayerArch {
    pub fn linear(&self, slot: LinearSlot) -> LinearKind {
        self.linears.get(&slot).copied().unwrap_or_default()
    }
}

/// The resolved structure of a checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Arch {
    /// The family and its tensor names.
    pub layout: Layout,
    pub hidden: usize,
    /// Width of the embedding block: `hidden`, or ELECTRA's `embedding_size`, projected to
    /// `hidden` by `embeddings_project` when it differs.
    pub embedding_size: usize,
    pub vocab: usize,
    /// The most tokens a sequence may have (the position table has `positions.offset()` more rows).
    pub max_positions: usize,
    pub positions: Positions,
    /// Rows of the token-type table; 0 when the family has none (DistilBERT).
    pub type_vocab: usize,
    pub head_dim: usize,
    pub layer_norm_eps: f64,
    pub activation: Activation,
    pub embeddings: EmbeddingKind,
    /// Logical layer → stored layer.
    pub layer_map: Vec<usize>,
    /// The stored (unique) layers.
    pub layers: Vec<LayerArch>,
    pub has_pooler: bool,
    /// Number of labels when the checkpoint has a token-classification head.
    pub num_labels: Option<usize>,
}

impl Arch {
    /// Resolves the structure; `has_pooler` / `has_classifier` come from the tensor file.
    /// Errors are messages about the config (the caller adds the file name).
    pub fn resolve(
        config: &BertConfig,
        layout: Layout,
        has_pooler: bool,
        has_classifier: bool,
    ) -> Result<Arch, String> {
        let activation = Activation::parse(&config.hidden_act)
            .ok_or_else(|| format!("unsupported hidden_act `{}`", config.hidden_act))?;
        let family = config.family();
        if layout.family != family {
            return Err(format!(
                "tensor names of the {:?} family for a `{}` config",
                layout.family,
                config
                    .extra
                    .get("model_type")
                    .and_then(|v| v.as_str())
                    .unwrap_or("bert")
            ));
        }
        let embedding_size = match (family, config.extra.get("embedding_size")) {
            (Family::Electra, Some(value)) => match value.as_u64() {
                Some(e) if (1..=1 << 16).contains(&e) => e as usize,
                _ => return Err(format!("`embedding_size` is {value} (1 to 65536)")),
            },
            _ => config.hidden_size,
        };
        let positions = match family {
            Family::Roberta => Positions::AfterPadding {
                pad: config.pad_token_id as u32,
            },
            _ => Positions::FromZero,
        };
        // A window holds at least [CLS], one word piece and [SEP].
        let usable = config
            .max_position_embeddings
            .saturating_sub(positions.offset());
        if usable < 3 {
            let after_pad = match positions {
                Positions::AfterPadding { .. } => {
                    format!(" after the {} rows up to pad_token_id", positions.offset())
                }
                Positions::FromZero => String::new(),
            };
            return Err(format!(
                "`max_position_embeddings` is {}: it leaves {usable} position(s){after_pad}; a \
                 sequence needs at least 3 ([CLS], a word, [SEP])",
                config.max_position_embeddings
            ));
        }
        let default_info = SurgeryInfo::default();
        let info = config.surgery.as_ref().unwrap_or(&default_info);
        let logical = config.num_hidden_layers;
        let layer_map = match &info.layer_map {
            Some(map) => map.clone(),
            None => (0..logical).collect(),
        };
        if layer_map.len() != logical {
            return Err(format!(
                "surgery.layer_map has {} entries, num_hidden_layers is {logical}",
                layer_map.len()
            ));
        }
        if let Some(&i) = layer_map.iter().find(|&&i| i >= logical) {
            return Err(format!(
                "surgery.layer_map names stored layer {i}, but there are at most {logical}"
            ));
        }
        let stored = layer_map.iter().map(|&i| i + 1).max().unwrap_or(0);
        for i in 0..stored {
            if !layer_map.contains(&i) {
                return Err(format!("surgery.layer_map never uses stored layer {i}"));
            }
        }
        let layers = match &info.layers {
            Some(infos) => {
                if infos.len() != stored {
                    return Err(format!(
                        "surgery.layers describes {} layers, layer_map uses {stored}",
                        infos.len()
                    ));
                }
                infos
                    .iter()
                    .map(|l| layer_from_info(l, config))
                    .collect::<Result<Vec<_>, _>>()?
            }
            None => (0..stored)
                .map(|_| LayerArch {
                    num_heads: config.num_attention_heads,
                    intermediate: config.intermediate_size,
                    linears: BTreeMap::new(),
                })
                .collect(),
        };
        if let EmbeddingKind::Factorized { rank } = info.embeddings {
            if rank == 0 || rank > config.vocab_size.min(embedding_size) {
                return Err(format!(
                    "factorized embedding rank {rank} must be in 1..={}",
                    config.vocab_size.min(embedding_size)
                ));
            }
        }
        let num_labels = if has_classifier {
            Some(label_count(config)?)
        } else {
            None
        };
        let arch = Arch {
            layout,
            hidden: config.hidden_size,
            embedding_size,
            vocab: config.vocab_size,
            max_positions: config.max_position_embeddings - positions.offset(),
            positions,
            type_vocab: config.type_vocab_size,
            head_dim: config.head_dim(),
            layer_norm_eps: config.layer_norm_eps,
            activation,
            embeddings: info.embeddings,
            layer_map,
            layers,
            has_pooler,
            num_labels,
        };
        for (index, layer) in arch.layers.iter().enumerate() {
            for (slot, kind) in &layer.linears {
                if let LinearKind::LowRank { rank } = kind {
                    let (out, inp) = arch.linear_shape(index, *slot);
                    if *rank == 0 || *rank > out.min(inp) {
                        return Err(format!(
                            "layer {index} {}: low rank {rank} must be in 1..={}",
                            slot.as_str(),
                            out.min(inp)
                        ));
                    }
                }
            }
        }
        Ok(arch)
    }

    /// Number of logical layers (what the forward pass runs).
    pub fn num_layers(&self) -> usize {
        self.layer_map.len()
    }

    /// Attention heads of each logical layer.
    pub fn heads_per_layer(&self) -> Vec<usize> {
        self.layer_map
            .iter()
            .map(|&s| self.layers[s].num_heads)
            .collect()
    }

    /// (out, in) of a linear of a stored layer.
    pub fn linear_shape(&self, layer: usize, slot: LinearSlot) -> (usize, usize) {
        let l = &self.layers[layer];
        let attn = l.num_heads * self.head_dim;
        match slot {
            LinearSlot::Query | LinearSlot::Key | LinearSlot::Value => (attn, self.hidden),
            LinearSlot::AttentionOutput => (self.hidden, attn),
            LinearSlot::Intermediate => (l.intermediate, self.hidden),
            LinearSlot::Output => (self.hidden, l.intermediate),
        }
    }

    /// The family (and so the tensor names, position ids and embedding block).
    pub fn family(&self) -> Family {
        self.layout.family
    }

    /// Whether the embedding block is narrower than the encoder (ELECTRA's `embeddings_project`).
    pub fn has_embedding_projection(&self) -> bool {
        self.embedding_size != self.hidden
    }

    /// Every parameter tensor of this structure with its shape, in a stable order.
    pub fn expected_tensors(&self) -> Vec<(Key, Vec<usize>)> {
        let h = self.hidden;
        let e = self.embedding_size;
        let mut out = vec![];
        match self.embeddings {
            EmbeddingKind::Dense => out.push((Key::WordEmbeddings, vec![self.vocab, e])),
            EmbeddingKind::Factorized { rank } => {
                out.push((Key::WordEmbeddings, vec![self.vocab, rank]));
                out.push((Key::WordProjection, vec![e, rank]));
            }
        }
        let position_rows = self.max_positions + self.positions.offset();
        out.push((Key::PositionEmbeddings, vec![position_rows, e]));
        if self.type_vocab > 0 {
            out.push((Key::TokenTypeEmbeddings, vec![self.type_vocab, e]));
        }
        for part in [NormPart::Weight, NormPart::Bias] {
            out.push((Key::EmbeddingNorm(part), vec![e]));
        }
        if self.has_embedding_projection() {
            out.push((Key::EmbeddingProjection(NormPart::Weight), vec![h, e]));
            out.push((Key::EmbeddingProjection(NormPart::Bias), vec![h]));
        }
        for layer in 0..self.layers.len() {
            out.extend(self.layer_tensors(layer));
        }
        if self.has_pooler {
            out.push((Key::Pooler(NormPart::Weight), vec![h, h]));
            out.push((Key::Pooler(NormPart::Bias), vec![h]));
        }
        if let Some(n) = self.num_labels {
            out.push((Key::Classifier(NormPart::Weight), vec![n, h]));
            out.push((Key::Classifier(NormPart::Bias), vec![n]));
        }
        out
    }

    /// The parameter tensors of one stored layer.
    pub fn layer_tensors(&self, layer: usize) -> Vec<(Key, Vec<usize>)> {
        let mut out = vec![];
        for slot in LinearSlot::ALL {
            let (o, i) = self.linear_shape(layer, slot);
            let key = |part| Key::Linear { layer, slot, part };
            match self.layers[layer].linear(slot) {
                LinearKind::Dense | LinearKind::Sparse { .. } => {
                    out.push((key(LinearPart::Weight), vec![o, i]))
                }
                LinearKind::LowRank { rank } => {
                    out.push((key(LinearPart::Down), vec![rank, i]));
                    out.push((key(LinearPart::Up), vec![o, rank]));
                }
            }
            out.push((key(LinearPart::Bias), vec![o]));
        }
        for slot in [LayerNormSlot::Attention, LayerNormSlot::Output] {
            for part in [NormPart::Weight, NormPart::Bias] {
                out.push((Key::LayerNorm { layer, slot, part }, vec![self.hidden]));
            }
        }
        out
    }

    /// The `"surgery"` object describing this structure (history supplied by the caller).
    /// Returns `None` for a vanilla structure so stock configs stay stock.
    pub fn surgery_info(
        &self,
        history: Vec<HistoryEntry>,
        config: &BertConfig,
    ) -> Option<SurgeryInfo> {
        let identity = self.layer_map.iter().enumerate().all(|(i, &m)| i == m);
        let vanilla_layers = self.layers.iter().all(|l| {
            l.num_heads == config.num_attention_heads
                && l.intermediate == config.intermediate_size
                && l.linears.values().all(|k| *k == LinearKind::Dense)
        });
        if identity
            && vanilla_layers
            && self.embeddings == EmbeddingKind::Dense
            && history.is_empty()
        {
            return None;
        }
        Some(SurgeryInfo {
            format_version: SURGERY_FORMAT_VERSION,
            embeddings: self.embeddings,
            layer_map: (!identity).then(|| self.layer_map.clone()),
            layers: (!vanilla_layers).then(|| {
                self.layers
                    .iter()
                    .map(|l| LayerInfo {
                        num_heads: l.num_heads,
                        intermediate_size: Some(l.intermediate),
                        linears: l
                            .linears
                            .iter()
                            .filter(|(_, k)| **k != LinearKind::Dense)
                            .map(|(s, k)| (s.as_str().to_string(), *k))
                            .collect(),
                    })
                    .collect()
            }),
            history,
        })
    }
}

fn layer_from_info(info: &LayerInfo, config: &BertConfig) -> Result<LayerArch, String> {
    if info.num_heads > config.num_attention_heads {
        return Err(format!(
            "a layer has {} heads, more than num_attention_heads {}",
            info.num_heads, config.num_attention_heads
        ));
    }
    let mut linears = BTreeMap::new();
    for (name, kind) in &info.linears {
        let slot = LinearSlot::parse(name).ok_or_else(|| {
            format!("unknown linear `{name}` in surgery.layers (expected query, key, value, attention-output, intermediate or output)")
        })?;
        linears.insert(slot, *kind);
    }
    let intermediate = info.intermediate_size.unwrap_or(config.intermediate_size);
    // 0 is a layer whose FFN neurons were all pruned: the FFN adds only its output bias.
    if intermediate > 1 << 18 {
        return Err(format!(
            "a layer has intermediate_size {intermediate} (0 to 262144)"
        ));
    }
    for (name, kind) in &info.linears {
        if let LinearKind::LowRank { rank } = kind {
            if *rank == 0 || *rank > 1 << 16 {
                return Err(format!("linear `{name}` has rank {rank} (1 to 65536)"));
            }
        }
    }
    Ok(LayerArch {
        num_heads: info.num_heads,
        intermediate,
        linears,
    })
}

fn label_count(config: &BertConfig) -> Result<usize, String> {
    if let Some(labels) = config.labels() {
        if labels.len() != config.id2label.as_ref().map_or(0, |m| m.len()) {
            return Err("id2label keys must be integers 0..N".into());
        }
        return Ok(labels.len());
    }
    match config.extra.get("num_labels").and_then(|v| v.as_u64()) {
        Some(n) if n > 1 << 16 => Err(format!("num_labels is {n}; at most 65536 is supported")),
        Some(n) => Ok(n as usize),
        None => Err("the checkpoint has a classifier but config.json has no id2label".into()),
    }
}
