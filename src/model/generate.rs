//! Randomly initialised checkpoints (HF `BertPreTrainedModel._init_weights`: normal(0, σ) weights,
//! zero biases, unit LayerNorms), for students, the quickstart and tests.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};

use crate::arch::{Arch, BertConfig, Key, Layout, LinearPart, NormPart};
use crate::error::{Error, Result};
use crate::io::Checkpoint;
use crate::util::rng::Rng;

/// Builds a checkpoint of the structure `config` describes with HF-style random weights.
/// `std` is the weight standard deviation (HF: `initializer_range`, 0.02).
pub fn random_checkpoint(
    config: BertConfig,
    layout: Layout,
    with_pooler: bool,
    with_classifier: bool,
    std: f32,
    seed: u64,
) -> Result<Checkpoint> {
    config.validate().map_err(Error::Spec)?;
    let arch = Arch::resolve(&config, layout, with_pooler, with_classifier).map_err(Error::Spec)?;
    let total = crate::budget::Budget::of_arch(&arch).total;
    // The values, then their copy in the tensor file being written.
    crate::io::capacity::require_memory(
        &format!(
            "a random model of {} parameters",
            crate::budget::group(total)
        ),
        total.saturating_mul(8),
    )?;
    let mut rng = Rng::new(seed);
    let mut tensors = BTreeMap::new();
    for (key, shape) in arch.expected_tensors() {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = match key {
            Key::EmbeddingNorm(NormPart::Weight)
            | Key::LayerNorm {
                part: NormPart::Weight,
                ..
            } => vec![1.0; n],
            Key::EmbeddingNorm(NormPart::Bias)
            | Key::LayerNorm {
                part: NormPart::Bias,
                ..
            }
            | Key::Pooler(NormPart::Bias)
            | Key::Classifier(NormPart::Bias)
            | Key::Linear {
                part: LinearPart::Bias,
                ..
            } => vec![0.0; n],
            _ => (0..n).map(|_| rng.normal() * std).collect(),
        };
        tensors.insert(key, Tensor::from_vec(values, shape, &Device::Cpu)?);
    }
    Checkpoint::from_tensors(config, layout, tensors)
}

/// Gives a checkpoint a fresh token-classification head for `labels` (normal(0, std) weights,
/// zero bias), replacing any existing one.
pub fn attach_classifier(
    ckpt: &mut Checkpoint,
    labels: &[String],
    std: f32,
    seed: u64,
) -> Result<()> {
    let mut config = ckpt.config.clone();
    config.set_labels(labels);
    let arch = Arch::resolve(&config, ckpt.arch.layout, ckpt.arch.has_pooler, true)
        .map_err(Error::Spec)?;
    let mut rng = Rng::new(seed);
    let (n, h) = (labels.len(), ckpt.arch.hidden);
    let weight: Vec<f32> = (0..n * h).map(|_| rng.normal() * std).collect();
    ckpt.set_tensor(
        Key::Classifier(NormPart::Weight),
        Tensor::from_vec(weight, (n, h), &Device::Cpu)?,
    );
    ckpt.set_tensor(
        Key::Classifier(NormPart::Bias),
        Tensor::zeros(n, candle_core::DType::F32, &Device::Cpu)?,
    );
    ckpt.config = config;
    ckpt.set_arch(arch)
}

/// Puts the classifier's rows in the order of `labels`, which must hold the same labels as the
/// classifier: the model computes the same function, with `id2label` in the new order.
pub fn reorder_classifier(ckpt: &mut Checkpoint, labels: &[String]) -> Result<()> {
    let current = ckpt.require_labels()?;
    let rows: Vec<u32> = labels
        .iter()
        .map(|l| {
            current
                .iter()
                .position(|c| c == l)
                .map(|i| i as u32)
                .ok_or_else(|| {
                    Error::Internal(format!("label `{l}` is not in the classifier's labels"))
                })
        })
        .collect::<Result<_>>()?;
    let rows = Tensor::new(rows, &Device::Cpu)?;
    for part in [NormPart::Weight, NormPart::Bias] {
        let key = Key::Classifier(part);
        let t = ckpt.tensor(key, &Device::Cpu)?;
        ckpt.set_tensor(key, t.index_select(&rows, 0)?);
    }
    ckpt.config.set_labels(labels);
    Ok(())
}

/// Writes a checkpoint folder whose tensors are all zeros without writing their bytes: the
/// safetensors data section is a hole in a sparse file. For parameter-count tests and
/// header-reading benchmarks at full size (bert-base: 430 MB that take no disk).
pub fn write_zero_checkpoint(
    dir: &std::path::Path,
    config: &BertConfig,
    layout: Layout,
    with_classifier: bool,
) -> Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let config_path = dir.join("config.json");
    std::fs::write(&config_path, config.to_json()).map_err(|e| Error::io(&config_path, e))?;
    let arch = Arch::resolve(config, layout, false, with_classifier).map_err(Error::Spec)?;
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (key, shape) in arch.expected_tensors() {
        let bytes = shape.iter().product::<usize>() * 4;
        header.insert(
            key.name(layout),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let header = serde_json::to_vec(&header).expect("json");
    let path = dir.join("model.safetensors");
    let mut f = std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
    f.write_all(&(header.len() as u64).to_le_bytes())
        .and_then(|()| f.write_all(&header))
        .and_then(|()| f.set_len((8 + header.len() + offset) as u64))
        .map_err(|e| Error::io(&path, e))
}

/// The configuration of `bert-base-cased` with a 9-label CoNLL-2003 head.
pub fn bert_base_cased_ner_config() -> BertConfig {
    let mut config = BertConfig::from_json(
        r#"{"architectures": ["BertForTokenClassification"], "model_type": "bert",
            "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
            "intermediate_size": 3072, "vocab_size": 28996, "max_position_embeddings": 512,
            "type_vocab_size": 2}"#,
    )
    .expect("valid config");
    let labels = [
        "O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC",
    ];
    config.set_labels(&labels.map(String::from));
    config
}
