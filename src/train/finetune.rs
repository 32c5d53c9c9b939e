//! `train finetune`: supervised fine-tuning, the cross-entropy objective (label smoothing with
//! `--label-smoothing`), and the run every supervised objective shares.

use std::path::{Path, PathBuf};

use candle_core::Tensor;

use crate::data::Example;
use crate::error::Result;
use crate::eval::BatchData;
use crate::model::loss::batch_cross_entropy;
use crate::model::{Bert, Mode, Outputs};
use crate::train::command::{CommonArgs, TrainingCommand};
use crate::train::inputs::finetune_inputs;
use crate::train::label_smoothing::LabelSmoothing;
use crate::train::objective::Objective;
use crate::train::setup;
use crate::train::trainer::TrainOutcome;

/// Cross-entropy on the aligned labels.
pub struct CrossEntropy;

impl Objective for CrossEntropy {
    fn op(&self) -> &'static str {
        FinetuneArgs::NAME
    }

    fn loss(
        &mut self,
        model: &Bert,
        batch: &BatchData,
        _: &[&Example],
        mode: &mut Mode,
    ) -> Result<Tensor> {
        let out = model.forward(&batch.batch, mode, Outputs::default())?;
        batch_cross_entropy(&out, &batch.labels)
    }
}

/// `train finetune`'s own options.
#[derive(Debug, Clone, clap::Args)]
pub struct FinetuneArgs {
    /// Checkpoint folder to start from (a classifier is added if it has none).
    pub checkpoint: PathBuf,
    /// Smooth the targets: (1−ε)·one-hot + ε/C (0 = plain cross-entropy).
    #[arg(long, default_value_t = 0.0, value_parser = crate::util::options::fraction_below_one)]
    pub label_smoothing: f64,
}

impl FinetuneArgs {
    /// Plain cross-entropy from `checkpoint`.
    pub fn new(checkpoint: impl Into<PathBuf>) -> Self {
        FinetuneArgs {
            checkpoint: checkpoint.into(),
            label_smoothing: 0.0,
        }
    }
}

impl TrainingCommand for FinetuneArgs {
    const NAME: &'static str = "train finetune";
    const ABOUT: &'static str =
        "Fine-tune a checkpoint on NER data (cross-entropy on the aligned labels)";
    const EXAMPLE: &'static [&'static str] = &["--label-smoothing", "0.1"];

    fn train(&self, common: &CommonArgs) -> Result<TrainOutcome> {
        // ε = 0 keeps plain cross-entropy, whose spec hash records no objective settings.
        if self.label_smoothing != 0.0 {
            let mut objective = LabelSmoothing::new(self.label_smoothing)?;
            return supervised(&self.checkpoint, common, &mut objective);
        }
        supervised(&self.checkpoint, common, &mut CrossEntropy)
    }
}

/// Supervised training of the checkpoint `input` on the aligned labels, with any objective that
/// needs only them (the run every supervised command shares).
pub fn supervised(
    input: &Path,
    common: &CommonArgs,
    objective: &mut dyn Objective,
) -> Result<TrainOutcome> {
    let open = setup::open(common, &[input])?;
    let prepared = finetune_inputs(input, common)?;
    let provenance = serde_json::json!({
        "input": input,
        "data": common.data,
        "files": prepared.files,
    });
    open.ready(prepared, common)?
        .fit(common, provenance, objective)
}
