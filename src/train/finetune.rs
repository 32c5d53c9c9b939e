//! `train finetune`: supervised fine-tuning, the cross-entropy objective, and the run every
//! supervised objective shares.

use std::path::Path;

use candle_core::Tensor;

use crate::data::Example;
use crate::error::Result;
use crate::eval::BatchData;
use crate::model::loss::batch_cross_entropy;
use crate::model::{Bert, Mode, Outputs};
use crate::train::inputs::finetune_inputs;
use crate::train::objective::Objective;
use crate::train::spec::{DataSpec, RunOptions, TrainSpec};
use crate::train::trainer::{fit, LoopInputs, TrainOutcome};

/// Cross-entropy on the aligned labels.
pub struct CrossEntropy;

impl Objective for CrossEntropy {
    fn op(&self) -> &'static str {
        "train finetune"
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
