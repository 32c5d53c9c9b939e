//! Label smoothing (Szegedy et al. 2016): cross-entropy against (1−ε)·one-hot + ε/C, so the
//! model is not pushed towards infinitely confident logits. `train finetune --label-smoothing ε`.

use candle_core::Tensor;

use crate::data::Example;
use crate::error::{Error, Result};
use crate::eval::BatchData;
use crate::model::loss::batch_smoothed_cross_entropy;
use crate::model::{Bert, Mode, Outputs};
use crate::train::objective::Objective;

/// Cross-entropy with smoothed targets; ε = 0 is plain cross-entropy.
pub struct LabelSmoothing {
    epsilon: f64,
}

impl LabelSmoothing {
    pub fn new(epsilon: f64) -> Result<Self> {
        if !(0.0..1.0).contains(&epsilon) {
            return Err(Error::Spec(format!(
                "--label-smoothing {epsilon}: must be in [0, 1)"
            )));
        }
        Ok(LabelSmoothing { epsilon })
    }
}

impl Objective for LabelSmoothing {
    fn op(&self) -> &'static str {
        "train finetune"
    }

    fn settings(&self) -> serde_json::Value {
        serde_json::json!({"label_smoothing": self.epsilon})
    }

    fn loss(
        &mut self,
        model: &Bert,
        batch: &BatchData,
        _: &[&Example],
        mode: &mut Mode,
    ) -> Result<Tensor> {
        let out = model.forward(&batch.batch, mode, Outputs::default())?;
        batch_smoothed_cross_entropy(&out, &batch.labels, self.epsilon)
    }
}
