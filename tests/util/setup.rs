//! A tiny training setup: synthetic data, a random model with a matching tokenizer, and the
//! settings that train it in seconds.

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use surgery::arch::{BertConfig, Key, Layout, NormPart};
use surgery::data::labels::UnknownLabels;
use surgery::io::Checkpoint;
use surgery::model::generate::random_checkpoint;
use surgery::train::distill::DistillSpec;
use surgery::train::spec::{DataSpec, TrainSpec};

use super::tempdir;

/// Synthetic train/dev/test files and a tiny random BERT with a matching tokenizer.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub model: PathBuf,
    pub data: DataSpec,
}

pub fn setup(train_sentences: usize) -> Setup {
    let dir = tempdir();
    let root = dir.path();
    let mut datasets = vec![];
    for (name, n, seed) in [
        ("train", train_sentences, 1),
        ("dev", 60, 2),
        ("test", 60, 3),
    ] {
        let path = root.join(format!("{name}.txt"));
        surgery::data::synthetic::write_conll(
            &path,
            &surgery::data::synthetic::sentences(n, seed, name != "train"),
        )
        .unwrap();
        datasets.push(surgery::data::read_dataset(&path, &Default::default()).unwrap());
    }
    let (tokenizer, vocab) =
        surgery::data::synthetic::wordpiece_tokenizer_json(&datasets.iter().collect::<Vec<_>>());
    let config = BertConfig::from_json(&format!(
        r#"{{"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
            "intermediate_size": 64, "vocab_size": {vocab}, "max_position_embeddings": 64}}"#
    ))
    .unwrap();
    let mut ckpt = random_checkpoint(config, Layout::Bare, false, false, 0.02, 1).unwrap();
    ckpt.tokenizer_files
        .insert("tokenizer.json".into(), tokenizer.into_bytes());
    let model = root.join("init");
    ckpt.save(&model, false, vec![]).unwrap();
    let data = DataSpec {
        train: root.join("train.txt"),
        dev: root.join("dev.txt"),
        test: Some(root.join("test.txt")),
        iob1: false,
        unknown_labels: UnknownLabels::Error,
        reinit_classifier: false,
        tag_names: vec![],
    };
    Setup { dir, model, data }
}

/// Settings for tiny models trained from scratch (a high learning rate), evaluated often.
pub fn quick_spec() -> TrainSpec {
    TrainSpec {
        epochs: 2,
        batch_size: 16,
        lr: 1e-3,
        weight_decay: 0.01,
        warmup_ratio: 0.1,
        decay: surgery::train::schedule::Decay::Linear,
        max_grad_norm: 1.0,
        grad_accum: 1,
        seed: 7,
        eval_every: 5,
        max_steps: 0,
        max_len: 64,
        label_all_subtokens: false,
        log_every: 5,
        eval_batch_size: 64,
        max_train_sentences: None,
        precision: Default::default(),
    }
}

/// The setup's model with a classifier for its training labels whose first logit overflows to
/// +∞ with finite weights (NaN weights are refused at load): every final hidden value is
/// positive (LayerNorm bias 10) and its classifier row is f32::MAX.
pub fn overflowing_model(s: &Setup) -> Checkpoint {
    let mut ckpt = Checkpoint::open(&s.model).unwrap();
    let labels = surgery::data::LabelSet::discover(
        &surgery::data::read_dataset(&s.data.train, &Default::default()).unwrap(),
    )
    .unwrap();
    surgery::model::generate::attach_classifier(&mut ckpt, labels.labels(), 0.02, 1).unwrap();
    let last = ckpt.arch.num_layers() - 1;
    let bias = Key::LayerNorm {
        layer: last,
        slot: surgery::arch::LayerNormSlot::Output,
        part: NormPart::Bias,
    };
    let b = ckpt.tensor(bias, &Device::Cpu).unwrap();
    ckpt.set_tensor(bias, (b.ones_like().unwrap() * 10.0).unwrap());
    let w = ckpt
        .tensor(Key::Classifier(NormPart::Weight), &Device::Cpu)
        .unwrap();
    let mut rows = w.to_vec2::<f32>().unwrap();
    rows[0].iter_mut().for_each(|v| *v = f32::MAX);
    ckpt.set_tensor(
        Key::Classifier(NormPart::Weight),
        Tensor::new(rows, &Device::Cpu).unwrap(),
    );
    ckpt
}

pub fn kd() -> DistillSpec {
    DistillSpec {
        temperature: 2.0,
        alpha: 0.5,
        hidden_weight: 0.0,
        attention_weight: 0.0,
        layer_map: None,
        cache_teacher: None,
        augment: vec![],
        augment_ratio: 1.0,
        augment_seed: None,
    }
}
