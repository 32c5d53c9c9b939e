//! The embedded default job: synthetic corpus → tiny BERT → fine-tune → test report + budget.
//! Runs in about a minute on 2 CPU cores with nothing outside the repository.

use std::path::{Path, PathBuf};

use crate::arch::{BertConfig, Layout};
use crate::data::labels::UnknownLabels;
use crate::data::{read_dataset, ReadOptions};
use crate::error::{Error, Result};
use crate::generate::random_checkpoint;
use crate::train::finetune::{finetune, DataSpec, RunOptions, TrainOutcome, TrainSpec};

/// What the quickstart produced.
pub struct Quickstart {
    pub data_dir: PathBuf,
    pub init: PathBuf,
    pub outcome: TrainOutcome,
}

/// The training settings of the quickstart (a tiny model trained from scratch wants a high lr).
pub fn default_spec() -> TrainSpec {
    TrainSpec {
        epochs: 4,
        batch_size: 16,
        lr: 1e-3,
        weight_decay: 0.01,
        warmup_ratio: 0.1,
        decay: crate::train::schedule::Decay::Linear,
        max_grad_norm: 1.0,
        grad_accum: 1,
        seed: 7,
        eval_every: 0,
        max_steps: 0,
        max_len: 64,
        label_all_subtokens: false,
        log_every: 50,
        eval_batch_size: 64,
        max_train_sentences: None,
    }
}

pub fn run(out: &Path, force: bool, spec: &TrainSpec) -> Result<Quickstart> {
    if out.exists() {
        if !force {
            return Err(Error::OutputExists {
                path: out.to_path_buf(),
            });
        }
        std::fs::remove_dir_all(out).map_err(|e| Error::io(out, e))?;
    }
    let data_dir = out.join("data");
    std::fs::create_dir_all(&data_dir).map_err(|e| Error::io(&data_dir, e))?;
    let splits = [("train", 2000, 1), ("dev", 300, 2), ("test", 300, 3)];
    for (name, n, seed) in splits {
        let sentences = crate::synthetic::sentences(n, seed, name != "train");
        crate::synthetic::write_conll(&data_dir.join(format!("{name}.txt")), &sentences)?;
    }
    let options = ReadOptions::default();
    let datasets = splits
        .iter()
        .map(|(name, _, _)| read_dataset(&data_dir.join(format!("{name}.txt")), &options))
        .collect::<Result<Vec<_>>>()?;
    let (tokenizer, vocab) =
        crate::synthetic::wordpiece_tokenizer_json(&datasets.iter().collect::<Vec<_>>());
    let config = BertConfig::from_json(&format!(
        r#"{{"architectures": ["BertForTokenClassification"], "model_type": "bert",
            "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "intermediate_size": 256, "vocab_size": {vocab}, "max_position_embeddings": 64}}"#
    ))
    .map_err(Error::Spec)?;
    let mut ckpt = random_checkpoint(config, Layout::BertPrefixed, false, false, 0.02, spec.seed)?;
    ckpt.tokenizer_files
        .insert("tokenizer.json".into(), tokenizer.into_bytes());
    let init = out.join("init");
    ckpt.save(&init, false, vec![])?;
    let data = DataSpec {
        train: data_dir.join("train.txt"),
        dev: data_dir.join("dev.txt"),
        test: Some(data_dir.join("test.txt")),
        iob1: false,
        unknown_labels: UnknownLabels::Error,
        reinit_classifier: false,
    };
    let outcome = finetune(
        &init,
        &data,
        spec,
        &out.join("train"),
        RunOptions::default(),
    )?;
    Ok(Quickstart {
        data_dir,
        init,
        outcome,
    })
}
