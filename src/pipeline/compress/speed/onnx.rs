//! Tokens/s in ONNX Runtime, for `--runtime onnx|onnx-int8`: the checkpoints exported as
//! `surgery export` writes them, the data tokenised and batched as `eval` batches it, and the
//! models timed side by side by ONNX Runtime's Python package (surgery links no ONNX Runtime of
//! its own; a user who deploys with it has the package).

use std::path::Path;
use std::process::Command;

use crate::data::tokenize::WordTokenizer;
use crate::data::{bucket_batches, read_dataset, LabelSet, ReadOptions};
use crate::error::{Error, Result};
use crate::eval::Prepared;
use crate::export::{export_onnx, ExportOptions, LinearStorage, DEFAULT_OPSET, MODEL_FILE};
use crate::io::Checkpoint;

/// The timing loop, run as `python3 -c`.
const SCRIPT: &str = include_str!("onnx_time.py");

/// Sentences per batch, as the surgery runtimes are timed.
const BATCH_SIZE: usize = 32;

/// The least number of alternating rounds, and the least time they take: one pass of a small
/// model over the dev subset takes a fraction of a second, and the machine's speed moves by a
/// third from one minute to the next.
const ROUNDS: usize = 5;
const MIN_SECONDS: f64 = 8.0;

/// Fails, saying what to install, when python3 cannot import ONNX Runtime and NumPy.
pub fn check_available() -> Result<()> {
    let why = match Command::new("python3")
        .args(["-c", "import onnxruntime, numpy"])
        .output()
    {
        Ok(out) if out.status.success() => return Ok(()),
        Ok(out) => last_line(&out.stderr),
        Err(e) => format!("python3 could not be started: {e}"),
    };
    Err(Error::Spec(format!(
        "--runtime onnx and onnx-int8 time models with ONNX Runtime's Python package, which \
         python3 cannot import here ({why}); install it with `pip install onnxruntime numpy`, \
         or choose --runtime surgery"
    )))
}

/// Tokens/s of each checkpoint over the labelled file `data` in ONNX Runtime, with its linears
/// stored as `linears`, timed side by side (one pass of each model in turn, the median pass of
/// each counts). The exports are written under `export` (compress's own scratch folder, replaced
/// if a killed run left it) and removed after. The batches are the first checkpoint's: every
/// checkpoint timed together must share its tokenizer (compress's candidates keep the
/// teacher's vocabulary).
pub fn tokens_per_second(
    checkpoints: &[&Path],
    data: &Path,
    linears: LinearStorage,
    export: &Path,
) -> Result<Vec<f64>> {
    if export.exists() {
        std::fs::remove_dir_all(export).map_err(|e| Error::io(export, e))?;
    }
    std::fs::create_dir_all(export).map_err(|e| Error::io(export, e))?;
    let options = ExportOptions {
        opset: DEFAULT_OPSET,
        linears,
    };
    let batches = export.join("batches.json");
    let mut command = Command::new("python3");
    command
        .arg("-c")
        .arg(SCRIPT)
        .arg(&batches)
        .arg(rayon::current_num_threads().to_string())
        .arg(ROUNDS.to_string())
        .arg(MIN_SECONDS.to_string());
    for (i, checkpoint) in checkpoints.iter().enumerate() {
        let ckpt = Checkpoint::open(checkpoint)?;
        let dir = export.join(format!("model-{i}"));
        export_onnx(&ckpt, &dir, options, false)?;
        if i == 0 {
            write_batches(&ckpt, data, &batches)?;
        }
        command.arg(dir.join(MODEL_FILE));
    }
    let out = command
        .output()
        .map_err(|e| Error::Spec(format!("python3 could not be started: {e}")))?;
    if !out.status.success() {
        return Err(Error::Internal(format!(
            "ONNX Runtime could not time the exports of {}: {}",
            checkpoints[0].display(),
            last_line(&out.stderr)
        )));
    }
    let timing: Timing = serde_json::from_slice(&out.stdout).map_err(|e| {
        Error::Internal(format!(
            "the ONNX Runtime timing printed no result ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        ))
    })?;
    if timing.tokens_per_second.len() != checkpoints.len() {
        return Err(Error::Internal(format!(
            "the ONNX Runtime timing printed {} speeds for {} models",
            timing.tokens_per_second.len(),
            checkpoints.len()
        )));
    }
    std::fs::remove_dir_all(export).map_err(|e| Error::io(export, e))?;
    Ok(timing.tokens_per_second)
}

/// What the timing script prints.
#[derive(serde::Deserialize)]
struct Timing {
    tokens_per_second: Vec<f64>,
}

/// The token ids of `data`, tokenised and bucketed by length as `eval` does, as the JSON the
/// timing script reads.
fn write_batches(ckpt: &Checkpoint, data: &Path, out: &Path) -> Result<()> {
    let labels = LabelSet::new(ckpt.require_labels()?)?;
    let tokenizer = WordTokenizer::from_checkpoint(ckpt)?;
    let dataset = read_dataset(data, &ReadOptions::default())?;
    let max_len = ckpt.arch.max_positions.min(128);
    let prepared = Prepared::for_inference(&tokenizer, dataset, &labels, max_len)?;
    let plan = bucket_batches(&prepared.lengths(), BATCH_SIZE, None);
    let batches: Vec<Vec<&[u32]>> = plan
        .batches
        .iter()
        .map(|batch| {
            batch
                .iter()
                .map(|&i| prepared.examples[i].ids.as_slice())
                .collect()
        })
        .collect();
    let json = serde_json::json!({ "pad": tokenizer.pad_id(), "batches": batches });
    crate::io::atomic::write_text(out, &json.to_string())
}

/// The last non-empty line of a process's error output (Python's exception line).
fn last_line(stderr: &[u8]) -> String {
    String::from_utf8_lossy(stderr)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no error output")
        .trim()
        .to_string()
}
