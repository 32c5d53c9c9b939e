//! The embedded default job: a synthetic corpus and a tiny BERT, then the recipe
//! `recipes/quickstart.toml` (fine-tune → cut → recover → test report → budget check).
//! Runs in seconds on 2 CPU cores with nothing outside the repository.

use std::path::{Path, PathBuf};

use crate::arch::{BertConfig, Layout};
use crate::data::{read_dataset, ReadOptions};
use crate::error::{Error, Result};
use crate::model::generate::random_checkpoint;

/// The recipe the quickstart runs on the data and model it writes (variable `dir`).
pub const RECIPE: &str = include_str!("../../recipes/quickstart.toml");

/// What the quickstart writes before running its recipe.
pub struct Workspace {
    pub data_dir: PathBuf,
    pub init: PathBuf,
}

/// Writes the synthetic corpus (`out/data`) and a randomly initialised tiny BERT (`out/init`).
pub fn prepare(out: &Path, force: bool) -> Result<Workspace> {
    crate::io::output::check_output(out, &[], force)?;
    if out.exists() {
        // Not while a quickstart runs in it (its recipe run holds this lock).
        let runs = out.join("quickstart");
        let _lock = if runs.is_dir() {
            Some(crate::io::lock::FolderLock::acquire(&runs)?)
        } else {
            None
        };
        std::fs::remove_dir_all(out).map_err(|e| Error::io(out, e))?;
    }
    let data_dir = out.join("data");
    std::fs::create_dir_all(&data_dir).map_err(|e| Error::io(&data_dir, e))?;
    crate::io::output::mark(out, "quickstart")?;
    let splits = [("train", 2000, 1), ("dev", 300, 2), ("test", 300, 3)];
    for (name, n, seed) in splits {
        let sentences = crate::data::synthetic::sentences(n, seed, name != "train");
        crate::data::synthetic::write_conll(&data_dir.join(format!("{name}.txt")), &sentences)?;
    }
    let options = ReadOptions::default();
    let datasets = splits
        .iter()
        .map(|(name, _, _)| read_dataset(&data_dir.join(format!("{name}.txt")), &options))
        .collect::<Result<Vec<_>>>()?;
    let (tokenizer, vocab) =
        crate::data::synthetic::wordpiece_tokenizer_json(&datasets.iter().collect::<Vec<_>>());
    let config = BertConfig::from_json(&format!(
        r#"{{"architectures": ["BertForTokenClassification"], "model_type": "bert",
            "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "intermediate_size": 256, "vocab_size": {vocab}, "max_position_embeddings": 64}}"#
    ))
    .map_err(Error::Spec)?;
    let mut ckpt = random_checkpoint(config, Layout::BertPrefixed, false, false, 0.02, 7)?;
    ckpt.tokenizer_files
        .insert("tokenizer.json".into(), tokenizer.into_bytes());
    let init = out.join("init");
    ckpt.save(&init, false, vec![])?;
    Ok(Workspace { data_dir, init })
}
