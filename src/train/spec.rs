//! What a training run is told: its hyper-parameters ([`TrainSpec`], part of the spec hash), its
//! data ([`DataSpec`]) and how it treats its folder ([`RunOptions`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::labels::UnknownLabels;
use crate::data::{Alignment, ReadOptions};
use crate::error::{Error, Result};
use crate::train::run_dir::{Resume, RunDir};
use crate::train::schedule::Decay;
use crate::util::hash::fnv1a;
use crate::util::precision::Precision;

/// Hyper-parameters of a training run (also the option names of the CLI).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct TrainSpec {
    /// Passes over the training data.
    #[arg(long, default_value_t = 3, value_parser = crate::util::options::positive)]
    pub epochs: usize,
    /// Sentences (windows) per batch.
    #[arg(long, default_value_t = 32, value_parser = crate::util::options::positive)]
    pub batch_size: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 5e-5, value_parser = crate::util::options::positive_number)]
    pub lr: f64,
    /// Decoupled weight decay (not applied to biases and LayerNorms).
    #[arg(long, default_value_t = 0.01, value_parser = crate::util::options::non_negative)]
    pub weight_decay: f64,
    /// Fraction of the steps spent warming up linearly.
    #[arg(long, default_value_t = 0.1, value_parser = crate::util::options::fraction_below_one)]
    pub warmup_ratio: f64,
    /// Decay after warm-up.
    #[arg(long, value_enum, default_value_t = Decay::Linear)]
    pub decay: Decay,
    /// Global gradient-norm clipping (0 = off).
    #[arg(long, default_value_t = 1.0, value_parser = crate::util::options::non_negative)]
    pub max_grad_norm: f64,
    /// Batches per optimizer step.
    #[arg(long, default_value_t = 1, value_parser = crate::util::options::positive)]
    pub grad_accum: usize,
    /// Seed for initialisation, shuffling and dropout.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Evaluate on dev every N optimizer steps (0 = after every epoch).
    #[arg(long, default_value_t = 0)]
    pub eval_every: usize,
    /// Stop after N optimizer steps (0 = run all epochs).
    #[arg(long, default_value_t = 0)]
    pub max_steps: usize,
    /// Maximum tokens per window (longer sentences are split); at most the model's positions
    /// (the default is lowered to them).
    #[arg(long, default_value_t = crate::util::options::TRAIN_MAX_LEN_DEFAULT, value_parser = crate::util::options::max_len)]
    pub max_len: usize,
    /// Label every sub-token (continuations of B-X as I-X) instead of the first only.
    #[arg(long)]
    pub label_all_subtokens: bool,
    /// Log a metrics line every N optimizer steps.
    #[arg(long, default_value_t = 20)]
    pub log_every: usize,
    /// Batch size for evaluation.
    #[arg(long, default_value_t = 64, value_parser = crate::util::options::positive)]
    pub eval_batch_size: usize,
    /// Use only the first N training sentences (quick experiments).
    #[arg(long, value_parser = crate::util::options::positive)]
    pub max_train_sentences: Option<usize>,
    /// Precision of the encoder linears' products: `bf16` multiplies bf16-rounded operands with
    /// f32 accumulation (autocast; weights, optimizer and everything else stay f32).
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    #[serde(default, skip_serializing_if = "Precision::is_f32")]
    pub precision: Precision,
}

impl TrainSpec {
    pub fn alignment(&self) -> Alignment {
        if self.label_all_subtokens {
            Alignment::AllSubtokens
        } else {
            Alignment::FirstSubtoken
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let positive = [
            ("--epochs", self.epochs),
            ("--batch-size", self.batch_size),
            ("--grad-accum", self.grad_accum),
            ("--eval-batch-size", self.eval_batch_size),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(Error::Spec(format!("{name} must be positive")));
            }
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(Error::Spec("--lr must be a positive number".into()));
        }
        if !(0.0..1.0).contains(&self.warmup_ratio) {
            return Err(Error::Spec("--warmup-ratio must be in [0, 1)".into()));
        }
        Ok(())
    }
}

/// The data of a training run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, clap::Args)]
pub struct DataSpec {
    /// Training file (CoNLL columns, or JSONL with tokens/ner_tags).
    #[arg(long)]
    pub train: PathBuf,
    /// Development file, for evaluation and model selection.
    #[arg(long)]
    pub dev: PathBuf,
    /// Test file, evaluated once with the best checkpoint at the end.
    #[arg(long)]
    pub test: Option<PathBuf>,
    /// Convert IOB1 tags to IOB2 while reading.
    #[arg(long)]
    pub iob1: bool,
    /// What to do with dev/test tags not seen in training: `error` or `o` (map to O).
    #[arg(long, value_parser = parse_unknown, default_value = "error")]
    #[serde(with = "unknown_serde")]
    pub unknown_labels: UnknownLabels,
    /// Replace a classifier whose labels disagree with the training data.
    #[arg(long)]
    pub reinit_classifier: bool,
    /// Label names for JSONL files whose `ner_tags` are integers, in id order (e.g. the
    /// dataset's `ClassLabel` names: O,B-PER,I-PER,…).
    #[arg(long, value_delimiter = ',')]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tag_names: Vec<String>,
}

impl DataSpec {
    /// The data files a run reads.
    pub fn paths(&self) -> Vec<&Path> {
        let mut paths = vec![self.train.as_path(), self.dev.as_path()];
        paths.extend(self.test.as_deref());
        paths
    }

    /// Each data file with its content hash, for run.json.
    pub fn file_hashes(&self) -> Result<serde_json::Value> {
        let mut files = serde_json::Map::new();
        for (role, path) in [
            ("train", Some(&self.train)),
            ("dev", Some(&self.dev)),
            ("test", self.test.as_ref()),
        ] {
            if let Some(p) = path {
                let bytes = std::fs::read(p).map_err(|e| Error::io(p, e))?;
                files.insert(
                    role.into(),
                    serde_json::json!({"path": p, "fnv1a64": fnv1a(&bytes)}),
                );
            }
        }
        Ok(files.into())
    }

    /// How the data files are read.
    pub fn read_options(&self) -> ReadOptions {
        ReadOptions {
            iob1_to_iob2: self.iob1,
            tag_names: (!self.tag_names.is_empty()).then(|| self.tag_names.clone()),
        }
    }
}

fn parse_unknown(s: &str) -> std::result::Result<UnknownLabels, String> {
    match s {
        "error" => Ok(UnknownLabels::Error),
        "o" | "O" => Ok(UnknownLabels::Outside),
        _ => Err(format!("`{s}`: expected `error` or `o`")),
    }
}

mod unknown_serde {
    use super::UnknownLabels;
    pub fn serialize<S: serde::Serializer>(v: &UnknownLabels, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match v {
            UnknownLabels::Error => "error",
            UnknownLabels::Outside => "o",
        })
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<UnknownLabels, D::Error> {
        let s: String = serde::Deserialize::deserialize(d)?;
        super::parse_unknown(&s).map_err(serde::de::Error::custom)
    }
}

/// How a run treats its folder, independent of the hyper-parameters (not part of the spec hash).
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Whether to continue from `out/last`.
    pub resume: Resume,
    /// Replace an existing run folder.
    pub force: bool,
    /// Stop (as if interrupted) after this many optimizer steps; `--resume` continues.
    pub stop_after: Option<usize>,
    /// Also write the metrics as TensorBoard event files (`OUT/tensorboard/`).
    pub tensorboard: bool,
    /// The device and kernels the run trains with.
    pub compute: crate::kernels::Compute,
}

impl RunOptions {
    /// Opens and locks the run folder before any data is read or computed, so a refused output
    /// or a concurrent run fails at once. `inputs` are the files and folders the run reads.
    pub fn open(&self, out: &Path, inputs: &[&Path]) -> Result<RunDir> {
        let run = RunDir::open(out, inputs, self.resume, self.force)?;
        if self.tensorboard {
            run.enable_tensorboard()?;
        }
        Ok(run)
    }
}

/// The command-line form of [`RunOptions`] and the run folder, the same on every training
/// command.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Run folder: run.json, metrics.jsonl, best/ and last/ checkpoints.
    #[arg(long)]
    pub out: PathBuf,
    /// Continue an interrupted run from out/last.
    #[arg(long)]
    pub resume: bool,
    /// Replace an existing run folder (only a run folder this tool wrote).
    #[arg(long)]
    pub force: bool,
    /// Stop after N optimizer steps as if interrupted (continue later with --resume).
    #[arg(long, value_parser = crate::util::options::positive)]
    pub stop_after: Option<usize>,
    /// Also write the metrics as TensorBoard event files into OUT/tensorboard (watch them live with
    /// `tensorboard --logdir OUT`).
    #[arg(long)]
    pub tensorboard: bool,
    /// Set by the recipe runner: continue the run the folder holds, if any.
    #[arg(skip)]
    pub resume_if_present: bool,
    #[command(flatten)]
    pub compute: crate::kernels::Compute,
}

impl RunArgs {
    /// A fresh run in `out` on the CPU: no resume, no force, no TensorBoard.
    pub fn new(out: PathBuf) -> Self {
        RunArgs {
            out,
            resume: false,
            force: false,
            stop_after: None,
            tensorboard: false,
            resume_if_present: false,
            compute: Default::default(),
        }
    }

    pub fn options(&self) -> RunOptions {
        RunOptions {
            resume: match (self.resume, self.resume_if_present) {
                (true, _) => Resume::Required,
                (false, true) => Resume::IfPresent,
                (false, false) => Resume::No,
            },
            force: self.force,
            stop_after: self.stop_after,
            tensorboard: self.tensorboard,
            compute: self.compute,
        }
    }
}

/// What every training command takes besides its objective's options: the run folder, the
/// data and the hyper-parameters.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub data: DataSpec,
    #[command(flatten)]
    pub spec: TrainSpec,
}

impl CommonArgs {
    /// A fresh run in `out` on the CPU (no resume, no TensorBoard): what a Rust caller starts
    /// from; the fields say the rest.
    pub fn new(out: impl Into<PathBuf>, data: DataSpec, spec: TrainSpec) -> Self {
        CommonArgs {
            run: RunArgs::new(out.into()),
            data,
            spec,
        }
    }
}
