//! Label smoothing (Szegedy et al. 2016): cross-entropy against (1−ε)·one-hot + ε/C, so the
//! model is not pushed towards infinitely confident logits. `train finetune --label-smoothing ε`.

use candle_core::{DType, Tensor, D};

use crate::data::Example;
use crate::error::{Error, Result};
use crate::eval::BatchData;
use crate::model::loss::{batch_cross_entropy, scored_positions};
use crate::model::{log_softmax, Bert, Mode, Outputs};
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
        let nll = batch_cross_entropy(&out, &batch.labels)?;
        let logits = out
            .logits
            .as_ref()
            .expect("cross-entropy checked the classifier");
        // The uniform part: the mean over classes of −log p, at the scored positions.
        let (positions, _) = scored_positions(&batch.labels);
        let classes = logits.dim(D::Minus1)?;
        let positions = Tensor::from_vec(positions.clone(), positions.len(), logits.device())?;
        let picked = logits.reshape(((), classes))?.index_select(&positions, 0)?;
        let uniform = log_softmax(&picked)?.mean(D::Minus1)?.neg()?.mean_all()?;
        let uniform = uniform.to_dtype(DType::F32)?;
        Ok(((nll * (1.0 - self.epsilon))? + (uniform * self.epsilon)?)?)
    }
}
