//! The files a run leaves behind, typed: `run.json` ([`RunRecord`]), `step.json`
//! ([`StepRecord`]), a recipe run's `summary.json` ([`RunSummary`]) and `.step-pending.json`
//! ([`PendingStep`]), evaluation JSON (`eval --save-json`, a run's `test.json`: [`EvalRecord`]) and
//! the lines of `metrics.jsonl` ([`MetricLine`]). Every writer and reader uses these types, so a
//! renamed field is a compile error, not a silent "—" in a report.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// `run.json`: what a training run was asked to do and what it was built from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunRecord {
    /// The objective, e.g. `train finetune`.
    pub op: String,
    /// The hyper-parameters (`TrainSpec`).
    pub spec: serde_json::Value,
    pub spec_hash: String,
    pub labels: Vec<String>,
    pub surgery_version: String,
    /// Resolved versions of the dependencies that decide the numbers (absent in runs made
    /// before they were recorded).
    #[serde(default)]
    pub dependencies: serde_json::Map<String, serde_json::Value>,
    /// The commit the binary was built from.
    pub git_commit: String,
    pub command: Vec<String>,
    pub unique_parameters: u64,
    pub train_examples: usize,
    pub train_tokens: usize,
    pub padding_ratio: f64,
    pub steps: usize,
    /// Where the run trained (`cpu`, `cuda:0`) and with which kernels; not part of the spec:
    /// a run may resume on another device (empty in runs made before they were recorded).
    #[serde(default)]
    pub device: String,
    #[serde(default)]
    pub kernels: String,
    /// Inputs, data files with hashes, and objective-specific settings.
    pub provenance: serde_json::Value,
    /// The operations in the starting checkpoint's history (its `config.json`), oldest first:
    /// a copy of the run without its checkpoints still tells what was cut before it trained
    /// (`None` in runs made before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_history: Option<Vec<String>>,
}

/// `step.json`: a finished recipe step (its presence marks the step done).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepRecord {
    pub recipe: String,
    pub recipe_file: PathBuf,
    /// 1-based position in the recipe.
    pub step: usize,
    pub name: String,
    pub kind: String,
    /// The spec hash a rerun compares.
    pub hash: String,
    pub argv: Vec<String>,
    pub input: PathBuf,
    pub output: PathBuf,
    pub seconds: f64,
    pub finished_unix: u64,
    pub params_before: Option<u64>,
    pub params_after: Option<u64>,
    pub best_dev_f1: Option<f64>,
    pub test_f1: Option<f64>,
    pub eval_f1: Option<f64>,
    pub eval_data: Option<String>,
    pub tokens_per_s: Option<f64>,
    /// The files the step read and wrote as they were when it finished, so that a rerun skips
    /// it only while they are unchanged (`None` in records written before they were kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<StepFiles>,
}

/// The files of a finished recipe step: what it read (inputs, data) and what it wrote.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct StepFiles {
    pub read: Vec<FileStamp>,
    pub written: Vec<FileStamp>,
    /// The files each folder it read or wrote held (a file added to an input folder, such as
    /// a tokenizer, can change what the step does).
    #[serde(default)]
    pub folders: Vec<FolderListing>,
}

/// A file's size, modification time and content checksum when it was recorded.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileStamp {
    pub path: PathBuf,
    pub size: u64,
    /// Nanoseconds since the Unix epoch.
    pub modified_ns: u64,
    /// CRC-64 of the content, 16 hex digits.
    pub crc64: String,
}

/// The names of the files of a folder a step read or wrote, sorted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FolderListing {
    pub path: PathBuf,
    pub files: Vec<String>,
}

/// `summary.json` in a recipe's run folder: what each step did in the last `surgery run`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunSummary {
    pub recipe: String,
    pub wall_seconds: f64,
    pub steps: Vec<StepSummary>,
}

impl RunSummary {
    pub const FILE: &'static str = "summary.json";
}

/// One step of a [`RunSummary`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepSummary {
    /// The step's folder name, `NN-name`.
    pub step: String,
    pub kind: String,
    pub status: StepStatus,
    /// How long it ran (for a skipped step, when it ran; NaN, written `null`, when unknown).
    #[serde(deserialize_with = "f64_or_nan")]
    pub seconds: f64,
}

/// Whether a step ran in the last run or was left as it was.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StepStatus {
    Ran,
    Skipped,
}

impl std::fmt::Display for StepStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            StepStatus::Ran => "ran",
            StepStatus::Skipped => "skipped",
        })
    }
}

/// `.step-pending.json` in a training step's folder while it runs: the spec hash of the step
/// it belongs to, so that a rerun after a kill continues that training instead of starting over.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PendingStep {
    pub hash: String,
}

impl PendingStep {
    pub const FILE: &'static str = ".step-pending.json";
}

/// An evaluation: `eval --save-json`, and `test.json` of a training run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EvalRecord {
    /// `surgery VERSION eval`: marks the file as this tool's (see [`super::output`]).
    pub written_by: String,
    pub checkpoint: PathBuf,
    pub data: PathBuf,
    pub f1: f64,
    pub precision: f64,
    pub recall: f64,
    /// The full seqeval report (micro, macro and per-type scores).
    pub report: serde_json::Value,
    pub tokens_per_s: f64,
    pub seconds: f64,
    /// Precision of the linears' products (absent: f32).
    #[serde(
        default,
        skip_serializing_if = "crate::util::precision::Precision::is_f32"
    )]
    pub matmul_precision: crate::util::precision::Precision,
}

/// One line of `metrics.jsonl`: a logged training window or an evaluation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum MetricLine {
    Eval(EvalLine),
    Train(TrainLine),
}

/// The mean loss over a logging window. JSON has no NaN: a non-finite value is written as
/// `null` and read back as NaN.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainLine {
    pub step: usize,
    pub epoch: usize,
    #[serde(deserialize_with = "f64_or_nan")]
    pub loss: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub lr: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub grad_norm: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub tokens_per_s: f64,
    /// What the objective adds (e.g. `gates`, `expected_open_heads`).
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

fn f64_or_nan<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// An evaluation during (`dev`) or after (`test`) training.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EvalLine {
    pub step: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<usize>,
    /// `dev` or `test`.
    pub eval: String,
    pub f1: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recall: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_tokens_per_s: Option<f64>,
}

impl MetricLine {
    /// The line's numbers as TensorBoard scalars (`train/loss`, `dev/f1`, ...) and its step.
    pub fn scalars(&self) -> (usize, Vec<(String, f64)>) {
        match self {
            MetricLine::Train(t) => {
                let mut values = vec![
                    ("train/loss".to_string(), t.loss),
                    ("train/lr".to_string(), t.lr),
                    ("train/grad_norm".to_string(), t.grad_norm),
                    ("train/tokens_per_s".to_string(), t.tokens_per_s),
                ];
                for (key, value) in &t.extra {
                    if let Some(v) = value.as_f64() {
                        values.push((format!("train/{key}"), v));
                    }
                }
                (t.step, values)
            }
            MetricLine::Eval(e) => {
                let mut values = vec![(format!("{}/f1", e.eval), e.f1)];
                for (name, v) in [("precision", e.precision), ("recall", e.recall)] {
                    if let Some(v) = v {
                        values.push((format!("{}/{name}", e.eval), v));
                    }
                }
                (e.step, values)
            }
        }
    }
}

/// Reads a JSON artefact; an unreadable or malformed file is an error naming it.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Input {
        path: path.to_path_buf(),
        line: e.line(),
        msg: e.to_string(),
    })
}

/// Reads a JSON artefact that a folder may not have: `None` when absent, an error when malformed.
pub fn read_optional<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    if path.exists() {
        read_json(path).map(Some)
    } else {
        Ok(None)
    }
}

/// The best dev F1 of a run folder's `metrics.jsonl`, if it has one.
pub fn run_best_dev_f1(dir: &Path) -> Result<Option<f64>> {
    let path = dir.join("metrics.jsonl");
    if !path.exists() {
        return Ok(None);
    }
    Ok(best_dev_f1(&read_metrics(&path)?))
}

/// Writes a JSON artefact atomically (inside a folder this tool owns).
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("artefacts serialise");
    super::atomic::write_text(path, &text)
}

/// Appends one line to `metrics.jsonl` in a single write, so a kill never leaves half a line
/// followed by the next one.
pub fn append_metric(path: &Path, line: &MetricLine) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    let mut text = serde_json::to_string(line).expect("metric lines serialise");
    text.push('\n');
    f.write_all(text.as_bytes()).map_err(|e| Error::io(path, e))
}

/// Reads `metrics.jsonl`; a malformed line is an error naming file and line, except a last line
/// without its newline (a write cut short by a kill), which is left out.
pub fn read_metrics(path: &Path) -> Result<Vec<MetricLine>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let torn_tail = !text.is_empty() && !text.ends_with('\n');
    let count = text.lines().count();
    let mut lines = vec![];
    for (i, l) in text.lines().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(l) {
            Ok(line) => lines.push(line),
            Err(_) if torn_tail && i + 1 == count => {}
            Err(e) => {
                return Err(Error::Input {
                    path: path.to_path_buf(),
                    line: i + 1,
                    msg: e.to_string(),
                })
            }
        }
    }
    Ok(lines)
}

/// Reads an evaluation record; a `test.json` written before [`EvalRecord`] existed
/// (`{"report": …, "tokens_per_s": …}`) is read from its report.
pub fn read_eval(path: &Path) -> Result<Option<EvalRecord>> {
    let Some(value) = read_optional::<serde_json::Value>(path)? else {
        return Ok(None);
    };
    if let Ok(record) = serde_json::from_value::<EvalRecord>(value.clone()) {
        return Ok(Some(record));
    }
    let micro = &value["report"]["micro"];
    let number = |v: &serde_json::Value| v.as_f64();
    match (
        number(&micro["f1"]),
        number(&micro["precision"]),
        number(&micro["recall"]),
    ) {
        (Some(f1), Some(precision), Some(recall)) => Ok(Some(EvalRecord {
            written_by: "surgery (earlier version)".into(),
            checkpoint: PathBuf::new(),
            data: PathBuf::new(),
            f1,
            precision,
            recall,
            report: value["report"].clone(),
            tokens_per_s: number(&value["tokens_per_s"]).unwrap_or(f64::NAN),
            seconds: f64::NAN,
            matmul_precision: Default::default(),
        })),
        _ => Err(Error::Input {
            path: path.to_path_buf(),
            line: 0,
            msg: "not an evaluation record (no f1)".into(),
        }),
    }
}

/// The best dev F1 among a run's metric lines.
pub fn best_dev_f1(lines: &[MetricLine]) -> Option<f64> {
    lines
        .iter()
        .filter_map(|l| match l {
            MetricLine::Eval(e) if e.eval == "dev" => Some(e.f1),
            _ => None,
        })
        .reduce(f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_lines_round_trip_and_tell_train_from_eval() {
        let lines = [
            r#"{"step":2,"epoch":0,"loss":1.5,"lr":0.001,"grad_norm":2.0,"tokens_per_s":100.0,"gates":[[0.5]]}"#,
            r#"{"step":4,"epoch":1,"eval":"dev","f1":0.5,"precision":0.4,"recall":0.6,"eval_tokens_per_s":9.0}"#,
            r#"{"step":4,"eval":"test","f1":0.25}"#,
        ];
        for text in lines {
            let line: MetricLine = serde_json::from_str(text).unwrap();
            assert_eq!(serde_json::to_string(&line).unwrap(), text);
        }
        let parsed: Vec<MetricLine> = lines
            .iter()
            .map(|t| serde_json::from_str(t).unwrap())
            .collect();
        assert!(matches!(&parsed[0], MetricLine::Train(t) if t.extra.contains_key("gates")));
        assert_eq!(best_dev_f1(&parsed), Some(0.5));
    }

    #[test]
    fn a_run_summary_round_trips_with_an_unknown_duration() {
        let summary = RunSummary {
            recipe: "r".into(),
            wall_seconds: 1.5,
            steps: vec![
                StepSummary {
                    step: "01-a".into(),
                    kind: "eval".into(),
                    status: StepStatus::Skipped,
                    seconds: f64::NAN,
                },
                StepSummary {
                    step: "02-b".into(),
                    kind: "drop-layers".into(),
                    status: StepStatus::Ran,
                    seconds: 2.0,
                },
            ],
        };
        let text = serde_json::to_string(&summary).unwrap();
        assert_eq!(
            text,
            r#"{"recipe":"r","wall_seconds":1.5,"steps":[{"step":"01-a","kind":"eval","status":"skipped","seconds":null},{"step":"02-b","kind":"drop-layers","status":"ran","seconds":2.0}]}"#
        );
        let back: RunSummary = serde_json::from_str(&text).unwrap();
        assert!(back.steps[0].seconds.is_nan());
        assert_eq!(back.steps[1], summary.steps[1]);
        assert_eq!(format!("{:<8}|", StepStatus::Ran), "ran     |");
    }

    #[test]
    fn a_torn_last_line_is_left_out_and_a_null_reads_as_nan() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let good =
            r#"{"step":2,"epoch":0,"loss":1.5,"lr":0.001,"grad_norm":null,"tokens_per_s":1.0}"#;
        std::fs::write(&path, format!("{good}\n{{\"step\":4,\"ep")).unwrap();
        let lines = read_metrics(&path).unwrap();
        assert_eq!(lines.len(), 1);
        assert!(matches!(&lines[0], MetricLine::Train(t) if t.grad_norm.is_nan()));
        std::fs::write(&path, format!("{{\"step\":4,\"ep\n{good}\n")).unwrap();
        assert!(
            read_metrics(&path).is_err(),
            "a bad line inside the file is an error"
        );
    }
}
