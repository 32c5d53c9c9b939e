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
use crate::train::spec::{DataSpec, RunOptions, TrainSpec};
use crate::train::trainer::{fit, LoopInputs, TrainOutcome};

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

impl TrainingCommand for FinetuneArgs {
    const NAME: &'static str = "train finetune";
    const ABOUT: &'static str =
        "Fine-tune a checkpoint on NER data (cross-entropy on the aligned labels)";
    const EXAMPLE: &'static [&'static str] = &["--label-smoothing", "0.1"];

    fn train(&self, common: &CommonArgs) -> Result<TrainOutcome> {
        // ε = 0 keeps plain cross-entropy, whose spec hash records no objective settings.
        if self.label_smoothing != 0.0 {
            let mut objective = LabelSmoothing::new(self.label_smoothing)?;
            return train_supervised(&self.checkpoint, common, &mut objective);
        }
        train_supervised(&self.checkpoint, common, &mut CrossEntropy)
    }
}

/// `train finetune`: reads data, prepares the checkpoint and runs the loop with cross-entropy.
pub fn finetune(
    input: &Path,
    data: &DataSpec,
    spec: &TrainSpec,
    out: &Path,
    options: RunOptions,
) -> Result<TrainOutcome> {
    supervised(input, data, spec, out, options, &mut CrossEntropy)
}

/// [`supervised`] with a command's common options.
pub fn train_supervised(
    input: &Path,
    common: &CommonArgs,
    objective: &mut dyn Objective,
) -> Result<TrainOutcome> {
    let options = common.run.options();
    let (data, spec) = (&common.data, &common.spec);
    supervised(input, data, spec, &common.run.out, options, objective)
}

/// Supervised training on the aligned labels with any objective that needs only them.
pub fn supervised(
    input: &Path,
    data: &DataSpec,
    spec: &TrainSpec,
    out: &Path,
    options: RunOptions,
    objective: &mut dyn Objective,
) -> Result<TrainOutcome> {
    let mut read = data.paths();
    read.push(input);
    let (device, kernels) = options.compute.open()?;
    let run = options.open(out, &read)?;
    let prepared = finetune_inputs(input, data, spec)?;
    let provenance = serde_json::json!({
        "input": input,
        "data": data,
        "files": prepared.files,
    });
    let inputs = LoopInputs {
        prepared,
        spec: spec.clone(),
        device,
        kernels,
        provenance,
    };
    fit(inputs, objective, run, options.stop_after)
}
