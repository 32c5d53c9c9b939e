//! A run's inputs, prepared one way for every objective: the training file (truncated to
//! `--max-train-sentences`), the checkpoint with a classifier for the run's labels, and every
//! split tokenised with the run's alignment and window length.

use std::path::Path;

use crate::data::labels::UnknownLabels;
use crate::data::tokenize::WordTokenizer;
use crate::data::{read_dataset, Dataset, LabelSet};
use crate::error::{Error, Result};
use crate::eval::Prepared;
use crate::io::Checkpoint;
use crate::train::spec::CommonArgs;
use crate::train::spec::{DataSpec, TrainSpec};

/// Checks the checkpoint's classifier against the training labels; attaches a new one if it has
/// none (or if asked to replace a mismatching one). Returns the labels the run uses: a trained
/// classifier with exactly the data's labels in another order (transformers' order for many
/// checkpoints) is kept, and its order used, since labels are matched by name.
pub fn ensure_classifier(
    ckpt: &mut Checkpoint,
    labels: LabelSet,
    reinit: bool,
    seed: u64,
) -> Result<LabelSet> {
    match ckpt.classifier_labels() {
        Some(l) if l == labels.labels() => Ok(labels),
        Some(l) if !reinit && labels.same_labels(&l) => LabelSet::new(l),
        Some(l) if !reinit => Err(Error::Spec(format!(
            "{}: the classifier has labels [{}] but the training data has [{}]; pass --reinit-classifier to replace it",
            ckpt.source().display(),
            l.join(", "),
            labels.labels().join(", ")
        ))),
        _ => {
            crate::model::generate::attach_classifier(ckpt, labels.labels(), 0.02, seed)?;
            Ok(labels)
        }
    }
}

/// A checkpoint and data ready for training.
pub struct PreparedRun {
    pub ckpt: Checkpoint,
    pub labels: LabelSet,
    pub tokenizer: WordTokenizer,
    pub train: Prepared,
    pub dev: Prepared,
    pub test: Option<Prepared>,
    /// Data files with their hashes, for run.json.
    pub files: serde_json::Value,
    /// The window length every split was cut to.
    pub max_len: usize,
}

/// Reads the data (labels from the training file), opens the checkpoint (adding a classifier if
/// needed) and tokenises every split.
pub fn finetune_inputs(input: &Path, common: &CommonArgs) -> Result<PreparedRun> {
    let (data, spec) = (&common.data, &common.spec);
    spec.validate()?;
    let train = read_train(data, spec)?;
    let labels = LabelSet::discover(&train)?;
    let mut ckpt = Checkpoint::open(input)?;
    let labels = ensure_classifier(&mut ckpt, labels, data.reinit_classifier, spec.seed)?;
    prepare(train, (ckpt, labels), common, &[])
}

/// The training file as a run reads it: its first `--max-train-sentences` sentences.
pub fn read_train(data: &DataSpec, spec: &TrainSpec) -> Result<Dataset> {
    let mut train = read_dataset(&data.train, &data.read_options())?;
    if let Some(n) = spec.max_train_sentences {
        train.sentences.truncate(n);
    }
    Ok(train)
}

/// Tokenises `train` and the dev and test files for `model`, a checkpoint whose classifier has
/// the labels beside it. Windows hold at most `--max-len` tokens, and no more than the
/// positions of the model or of the `others` that read the same windows (e.g. a teacher).
pub fn prepare(
    train: Dataset,
    (ckpt, labels): (Checkpoint, LabelSet),
    common: &CommonArgs,
    others: &[(&'static str, usize)],
) -> Result<PreparedRun> {
    let (data, spec) = (&common.data, &common.spec);
    let tokenizer = WordTokenizer::from_checkpoint(&ckpt)?;
    let mut limits = vec![("the model", ckpt.arch.max_positions)];
    limits.extend_from_slice(others);
    let max_len = crate::util::options::train_window_len(spec.max_len, &limits)?;
    let splits = Splits {
        data,
        spec,
        labels: &labels,
        max_len,
    };
    let train = splits.train(&tokenizer, train)?;
    let dev = splits.evaluation(&tokenizer, &data.dev)?;
    let test = data
        .test
        .as_deref()
        .map(|p| splits.evaluation(&tokenizer, p))
        .transpose()?;
    Ok(PreparedRun {
        files: data.file_hashes()?,
        ckpt,
        labels,
        tokenizer,
        train,
        dev,
        test,
        max_len,
    })
}

/// How a run tokenises its splits: its labels, alignment and window length.
pub struct Splits<'a> {
    pub data: &'a DataSpec,
    pub spec: &'a TrainSpec,
    pub labels: &'a LabelSet,
    pub max_len: usize,
}

impl Splits<'_> {
    /// The training split: a tag outside the label set is an error whatever
    /// `--unknown-labels` says (it would be trained as something else).
    pub fn train(&self, tokenizer: &WordTokenizer, train: Dataset) -> Result<Prepared> {
        self.tokenise(tokenizer, train, UnknownLabels::Error)
    }

    /// A dev or test file, its unknown tags treated as `--unknown-labels` says.
    pub fn evaluation(&self, tokenizer: &WordTokenizer, path: &Path) -> Result<Prepared> {
        let d = read_dataset(path, &self.data.read_options())?;
        self.tokenise(tokenizer, d, self.data.unknown_labels)
    }

    fn tokenise(
        &self,
        tokenizer: &WordTokenizer,
        d: Dataset,
        unknown: UnknownLabels,
    ) -> Result<Prepared> {
        Prepared::new(
            tokenizer,
            d,
            self.labels,
            unknown,
            self.spec.alignment(),
            self.max_len,
        )
    }
}

impl PreparedRun {
    /// How these splits were tokenised, to tokenise the same data for another model.
    pub fn splits<'a>(&'a self, data: &'a DataSpec, spec: &'a TrainSpec) -> Splits<'a> {
        Splits {
            data,
            spec,
            labels: &self.labels,
            max_len: self.max_len,
        }
    }
}
