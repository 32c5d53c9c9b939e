//! `eval` as one call: a checkpoint scored on a labelled file, from paths and options to the
//! report, with the optional prediction and JSON files written. The binary only parses options
//! and prints; other callers (scripts, tests) get the same pipeline.

use std::path::PathBuf;

use crate::data::labels::UnknownLabels;
use crate::data::tokenize::WordTokenizer;
use crate::data::{read_dataset, Alignment, LabelSet, ReadOptions};
use crate::error::Result;
use crate::eval::{evaluate_model, Prepared};
use crate::io::artefacts::EvalRecord;
use crate::io::output::{check_file_output, FileKind};
use crate::io::Checkpoint;
use crate::kernels::Compute;
use crate::metrics::{Matching, Report};
use crate::model::{Bert, Precision};

/// What to evaluate and how.
#[derive(Debug, Clone)]
pub struct EvalRequest {
    /// Checkpoint folder with a classifier.
    pub checkpoint: PathBuf,
    /// Labelled data (CoNLL or JSONL).
    pub data: PathBuf,
    pub read: ReadOptions,
    /// Tags the checkpoint does not know: an error, or read as O.
    pub unknown_labels: UnknownLabels,
    pub matching: Matching,
    pub batch_size: usize,
    /// Tokens per window; `None`: 128, or the model's positions when fewer.
    pub max_len: Option<usize>,
    pub precision: Precision,
    pub compute: Compute,
    /// Where to write `word gold predicted` lines (CoNLL layout, for `surgery score`).
    pub write_predictions: Option<PathBuf>,
    /// Where to write the [`EvalRecord`] as JSON.
    pub save_json: Option<PathBuf>,
    /// Replace existing output files (only ones this tool wrote).
    pub force: bool,
}

/// The outcome of [`run_eval`].
#[derive(Debug, Clone)]
pub struct EvalReport {
    /// What `--save-json` writes.
    pub record: EvalRecord,
    /// The seqeval report (micro, macro and per-type scores).
    pub report: Report,
    pub sentences: usize,
    pub tokens_per_second: f64,
    pub seconds: f64,
}

/// Scores a checkpoint on labelled data. The output files are checked before the data is read
/// and the model loaded (a refused path costs nothing), and written once the scores exist.
pub fn run_eval(request: &EvalRequest) -> Result<EvalReport> {
    let ckpt = Checkpoint::open(&request.checkpoint)?;
    let labels = LabelSet::new(ckpt.require_labels()?)?;
    let outputs = [
        (&request.save_json, FileKind::EvalJson),
        (&request.write_predictions, FileKind::Predictions),
    ];
    for (out, kind) in outputs {
        if let Some(out) = out {
            check_file_output(
                out,
                &[&request.checkpoint, &request.data],
                request.force,
                kind,
            )?;
        }
    }
    let data = read_dataset(&request.data, &request.read)?;
    let tokenizer = WordTokenizer::from_checkpoint(&ckpt)?;
    let max_len = match request.max_len {
        Some(n) => {
            crate::util::options::check_max_len("--max-len", n, ckpt.arch.max_positions)?;
            n
        }
        None => ckpt.arch.max_positions.min(128),
    };
    let prepared = Prepared::new(
        &tokenizer,
        data,
        &labels,
        request.unknown_labels,
        Alignment::FirstSubtoken,
        max_len,
    )?;
    let (device, kernels) = request.compute.open()?;
    let model = Bert::load(&ckpt, &device)?
        .with_precision(request.precision)
        .with_kernels(kernels);
    let e = evaluate_model(
        &model,
        &prepared,
        &labels,
        tokenizer.pad_id(),
        request.batch_size,
        request.matching,
        &device,
    )?;
    if let Some(path) = &request.write_predictions {
        let mut text = String::new();
        for (s, pred) in prepared.data.sentences.iter().zip(&e.predicted) {
            for ((w, g), p) in s.words.iter().zip(&s.tags).zip(pred) {
                text.push_str(&format!("{w} {g} {p}\n"));
            }
            text.push('\n');
        }
        crate::io::atomic::write_text(path, &text)?;
    }
    let record = e.record(&request.checkpoint, &request.data);
    if let Some(path) = &request.save_json {
        crate::io::artefacts::write_json(path, &record)?;
    }
    Ok(EvalReport {
        record,
        report: e.report,
        sentences: prepared.data.sentences.len(),
        tokens_per_second: e.tokens_per_second,
        seconds: e.seconds,
    })
}
