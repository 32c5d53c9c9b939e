//! The options of `eval`, as the command line and recipe steps give them.

use std::path::PathBuf;

use crate::data::labels::UnknownLabels;
use crate::data::ReadOptions;
use crate::error::{Error, Result};
use crate::eval::EvalRequest;
use crate::kernels::Compute;
use crate::metrics::Matching;
use crate::model::Precision;
use crate::util::options;

#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// Checkpoint folder with a classifier.
    pub checkpoint: PathBuf,
    /// Labelled data (CoNLL or JSONL).
    #[arg(long)]
    pub data: PathBuf,
    /// Print JSON instead of the report table.
    #[arg(long)]
    pub json: bool,
    /// seqeval's strict mode with the IOB2 scheme.
    #[arg(long)]
    pub strict: bool,
    /// Write `word gold predicted` lines (CoNLL layout, for `surgery score`).
    #[arg(long)]
    pub write_predictions: Option<PathBuf>,
    /// Also write the JSON report to this file.
    #[arg(long)]
    pub save_json: Option<PathBuf>,
    #[arg(long, default_value_t = 64, value_parser = options::positive)]
    pub batch_size: usize,
    /// Tokens per window (default: 128, or the model's positions when fewer).
    #[arg(long, value_parser = options::max_len)]
    pub max_len: Option<usize>,
    /// Convert IOB1 tags to IOB2 while reading.
    #[arg(long)]
    pub iob1: bool,
    /// Tags the checkpoint does not know: `error` or `o` (treated as O for alignment).
    #[arg(long, default_value = "error")]
    pub unknown_labels: String,
    /// Label names for JSONL files whose `ner_tags` are integers, in id order.
    #[arg(long, value_delimiter = ',')]
    pub tag_names: Vec<String>,
    /// Replace existing --save-json / --write-predictions files (only ones surgery wrote).
    #[arg(long)]
    pub force: bool,
    /// Precision of the encoder linears' products (bf16: autocast with f32 accumulation).
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    pub precision: Precision,
    #[command(flatten)]
    pub compute: Compute,
}

/// seqeval's default mode, or strict IOB2.
pub fn matching(strict: bool) -> Matching {
    if strict {
        Matching::StrictIob2
    } else {
        Matching::Default
    }
}

/// `--unknown-labels`: `error` or `o`.
fn unknown_labels(text: &str) -> Result<UnknownLabels> {
    match text {
        "error" => Ok(UnknownLabels::Error),
        "o" | "O" => Ok(UnknownLabels::Outside),
        other => Err(Error::Spec(format!(
            "--unknown-labels `{other}`: expected error or o"
        ))),
    }
}

impl EvalArgs {
    /// The evaluation these options ask for.
    pub fn request(&self) -> Result<EvalRequest> {
        Ok(EvalRequest {
            unknown_labels: unknown_labels(&self.unknown_labels)?,
            read: ReadOptions {
                iob1_to_iob2: self.iob1,
                tag_names: (!self.tag_names.is_empty()).then(|| self.tag_names.clone()),
            },
            matching: matching(self.strict),
            checkpoint: self.checkpoint.clone(),
            data: self.data.clone(),
            batch_size: self.batch_size,
            max_len: self.max_len,
            precision: self.precision,
            compute: self.compute,
            write_predictions: self.write_predictions.clone(),
            save_json: self.save_json.clone(),
            force: self.force,
        })
    }
}
