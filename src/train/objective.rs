//! What a training objective supplies to the generic loop in [`crate::train::trainer`]: its loss
//! and, where it has them, its own trainable tensors, log fields and output files. A new
//! objective is one file implementing this trait and [`crate::train::command::TrainingCommand`]
//! (its CLI options), plus its line in [`crate::train::registry`].

use candle_core::Tensor;

use crate::data::Example;
use crate::error::Result;
use crate::eval::BatchData;
use crate::model::{Bert, Mode};
use crate::train::optim::OptParam;
use crate::train::run_dir::RunDir;

pub trait Objective {
    /// The name recorded as the run's `op` and in the model's history, e.g. `train finetune`.
    fn op(&self) -> &'static str;

    /// The objective's own settings (e.g. a smoothing factor), recorded with the hyper-parameters
    /// under `objective`: part of the spec hash, so a resume with other settings is refused.
    /// `null` (the default) records nothing.
    fn settings(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// Trainable tensors outside the model (a distillation projection, gate logits): optimized
    /// and resumed with the run, never saved into the checkpoint.
    fn extra_params(&self) -> Vec<OptParam> {
        vec![]
    }

    /// The model the loop trains, given the one it built from the checkpoint (e.g. with gates).
    fn prepare(&self, model: Bert) -> Bert {
        model
    }

    /// The scalar loss of one batch (the examples are the batch's rows, in order).
    fn loss(
        &mut self,
        model: &Bert,
        batch: &BatchData,
        examples: &[&Example],
        mode: &mut Mode,
    ) -> Result<Tensor>;

    /// Extra fields for each logged training line.
    fn log_fields(&self, _model: &Bert) -> Result<serde_json::Map<String, serde_json::Value>> {
        Ok(serde_json::Map::new())
    }

    /// Writes the objective's own outputs into the run folder once training has ended.
    fn finish(&self, _run: &RunDir, _model: &Bert) -> Result<()> {
        Ok(())
    }
}
