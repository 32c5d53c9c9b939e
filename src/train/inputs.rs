//! Supervised inputs: the training file's labels, the checkpoint with a matching classifier, and
//! every split tokenised.

use std::path::Path;

use crate::data::labels::UnknownLabels;
use crate::data::tokenize::WordTokenizer;
use crate::data::{read_dataset, LabelSet};
use crate::error::{Error, Result};
use crate::eval::Prepared;
use crate::io::Checkpoint;
use crate::train::spec::{DataSpec, TrainSpec};

/// Checks the checkpoint's classifier against the training labels; attaches a new one if it has
/// none (or if asked to replace a mismatching one).
pub fn ensure_classifier(
    ckpt: &mut Checkpoint,
    labels: &LabelSet,
    reinit: bool,
    seed: u64,
) -> Result<()> {
    match ckpt.classifier_labels() {
        Some(l) if l == labels.labels() => Ok(()),
        Some(l) if !reinit => Err(Error::Spec(format!(
            "{}: the classifier has labels [{}] but the training data has [{}]; pass --reinit-classifier to replace it",
            ckpt.source().display(),
            l.join(", "),
            labels.labels().join(", ")
        ))),
        _ => crate::model::generate::attach_classifier(ckpt, labels.labels(), 0.02, seed),
    }
}

/// A checkpoint and data ready for supervised training.
pub struct PreparedRun {
    pub ckpt: Checkpoint,
    pub labels: LabelSet,
    pub tokenizer: WordTokenizer,
    pub train: Prepared,
    pub dev: Prepared,
    pub test: Option<Prepared>,
    /// Data files with their hashes, for run.json.
    pub files: serde_json::Value,
}

/// Reads the data (labels from the training file), opens the checkpoint (adding a classifier if
/// needed) and tokenises every split.
pub fn finetune_inputs(input: &Path, data: &DataSpec, spec: &TrainSpec) -> Result<PreparedRun> {
    spec.validate()?;
    let read_options = data.read_options();
    let mut train_data = read_dataset(&data.train, &read_options)?;
    if let Some(n) = spec.max_train_sentences {
        train_data.sentences.truncate(n);
    }
    let labels = LabelSet::discover(&train_data)?;
    let mut ckpt = Checkpoint::open(input)?;
    ensure_classifier(&mut ckpt, &labels, data.reinit_classifier, spec.seed)?;
    let tokenizer = WordTokenizer::from_checkpoint(&ckpt)?;
    let max_len = crate::util::options::train_window_len(
        spec.max_len,
        &[("the model", ckpt.arch.max_positions)],
    )?;
    let prepare = |path: &Path| -> Result<Prepared> {
        let d = read_dataset(path, &read_options)?;
        Prepared::new(
            &tokenizer,
            d,
            &labels,
            data.unknown_labels,
            spec.alignment(),
            max_len,
        )
    };
    let train = Prepared::new(
        &tokenizer,
        train_data,
        &labels,
        UnknownLabels::Error,
        spec.alignment(),
        max_len,
    )?;
    let dev = prepare(&data.dev)?;
    let test = data.test.as_deref().map(prepare).transpose()?;
    let files = data.file_hashes()?;
    Ok(PreparedRun {
        ckpt,
        labels,
        tokenizer,
        train,
        dev,
        test,
        files,
    })
}
