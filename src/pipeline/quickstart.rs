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
///
/// A folder an earlier quickstart made is kept, so that its recipe run resumes where it stopped:
/// the data are written again (they are the same every time) and the model only when missing.
/// `force` starts afresh instead. Any other existing folder is refused, as for every output.
pub fn prepare(out: &Path, force: bool) -> Result<Workspace> {
    let resume = !force && is_quickstart_folder(out);
    if !resume {
        crate::io::output::check_output(out, &[], force)?;
    }
    // Not while a quickstart runs in it (its recipe run holds this lock).
    let runs = out.join("quickstart");
    let lock = if runs.is_dir() {
        Some(crate::io::lock::FolderLock::acquire(&runs)?)
    } else {
        None
    };
    if !resume && out.exists() {
        std::fs::remove_dir_all(out).map_err(|e| Error::io(out, e))?;
    }
    drop(lock);
    let data_dir = out.join("data");
    std::fs::create_dir_all(&data_dir).map_err(|e| Error::io(&data_dir, e))?;
    crate::io::output::mark(out, QUICKSTART)?;
    let splits = [("train", 2000, 1), ("dev", 300, 2), ("test", 300, 3)];
    for (name, n, seed) in splits {
        let sentences = crate::data::synthetic::sentences(n, seed, name != "train");
        crate::data::synthetic::write_conll(&data_dir.join(format!("{name}.txt")), &sentences)?;
    }
    // Written atomically: a folder with both files is a whole model.
    let init = out.join("init");
    if resume && init.join("config.json").is_file() && init.join("model.safetensors").is_file() {
        return Ok(Workspace { data_dir, init });
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
    .map_err(|e| Error::Internal(format!("the quickstart model's config: {e}")))?;
    let mut ckpt = random_checkpoint(config, Layout::BertPrefixed, false, false, 0.02, 7)?;
    ckpt.tokenizer_files
        .insert("tokenizer.json".into(), tokenizer.into_bytes());
    ckpt.save(&init, false, vec![])?;
    Ok(Workspace { data_dir, init })
}

/// The marker kind of a quickstart folder.
const QUICKSTART: &str = "quickstart";

/// True for a folder an earlier quickstart wrote (its marker says so).
fn is_quickstart_folder(out: &Path) -> bool {
    std::fs::read(out.join(crate::io::output::MARKER))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|v| v.get("kind").and_then(|k| k.as_str()) == Some(QUICKSTART))
}
