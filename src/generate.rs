//! Randomly initialised checkpoints (HF `BertPreTrainedModel._init_weights`: normal(0, σ) weights,
//! zero biases, unit LayerNorms), for students, the quickstart and tests.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};

use crate::arch::{Arch, BertConfig, Key, Layout, LinearPart, NormPart};
use crate::error::{Error, Result};
use crate::io::Checkpoint;
use crate::rng::Rng;

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
    let arch = Arch::resolve(&config, layout, with_pooler, with_classifier).map_err(Error::Spec)?;
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
