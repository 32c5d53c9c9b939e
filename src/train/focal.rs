//! `train focal`: the focal loss (Lin et al. 2017), cross-entropy weighted by (1 − p)^γ so that
//! the tokens the model already gets right (most of them `O`) weigh less than the hard ones.

use std::path::PathBuf;

use candle_core::{DType, Tensor, D};

use crate::data::Example;
use crate::error::{Error, Result};
use crate::eval::BatchData;
use crate::model::loss::scored_positions;
use crate::model::{log_softmax, Bert, Mode, Outputs};
use crate::train::command::{CommonArgs, TrainingCommand};
use crate::train::finetune::supervised;
use crate::train::objective::Objective;
use crate::train::trainer::TrainOutcome;

/// `train focal`'s own options.
#[derive(Debug, Clone, clap::Args)]
pub struct FocalArgs {
    /// Checkpoint folder to start from (a classifier is added if it has none).
    pub checkpoint: PathBuf,
    /// Focusing parameter γ: how much confident tokens are down-weighted (0 = cross-entropy).
    #[arg(long, default_value_t = 2.0, value_parser = crate::util::options::focal_gamma)]
    pub gamma: f64,
}

impl TrainingCommand for FocalArgs {
    const NAME: &'static str = "train focal";
    const ABOUT: &'static str =
        "Fine-tune with the focal loss: cross-entropy weighted by (1 − p)^γ, for rare entities";
    const EXAMPLE: &'static [&'static str] = &["--gamma", "2"];

    fn train(&self, common: &CommonArgs) -> Result<TrainOutcome> {
        let mut objective = Focal::new(self.gamma)?;
        supervised(&self.checkpoint, common, &mut objective)
    }
}

/// The focal loss on the aligned labels.
pub struct Focal {
    gamma: f64,
}

impl Focal {
    pub fn new(gamma: f64) -> Result<Self> {
        if !(0.0..=crate::util::options::MAX_FOCAL_GAMMA).contains(&gamma) {
            return Err(Error::Spec(format!(
                "--gamma {gamma}: must be in [0, {}]",
                crate::util::options::MAX_FOCAL_GAMMA
            )));
        }
        Ok(Focal { gamma })
    }
}

impl Objective for Focal {
    fn op(&self) -> &'static str {
        FocalArgs::NAME
    }

    fn settings(&self) -> serde_json::Value {
        serde_json::json!({"gamma": self.gamma})
    }

    fn loss(
        &mut self,
        model: &Bert,
        batch: &BatchData,
        _: &[&Example],
        mode: &mut Mode,
    ) -> Result<Tensor> {
        let out = model.forward(&batch.batch, mode, Outputs::default())?;
        let logits = out
            .logits
            .as_ref()
            .ok_or_else(|| Error::Internal("the model was given no classifier".into()))?;
        let (positions, targets) = scored_positions(&batch.labels);
        let device = logits.device();
        let positions = Tensor::from_vec(positions.clone(), positions.len(), device)?;
        let targets = Tensor::from_vec(targets.clone(), targets.len(), device)?;
        Ok(focal_loss(logits, &positions, &targets, self.gamma)?)
    }
}

/// The mean over `positions` of −(1 − p)^γ·log p, p the probability of the target class under
/// `logits` [B, L, C]. γ = 0 is cross-entropy; 1 − p is kept above f32's epsilon so that the
/// gradient of (1 − p)^γ stays finite for γ < 1 on a confident token.
pub fn focal_loss(
    logits: &Tensor,
    positions: &Tensor,
    targets: &Tensor,
    gamma: f64,
) -> candle_core::Result<Tensor> {
    let classes = logits.dim(D::Minus1)?;
    let scored = logits.reshape(((), classes))?.index_select(positions, 0)?;
    let log_p = log_softmax(&scored)?
        .gather(&targets.unsqueeze(1)?, 1)?
        .squeeze(1)?;
    let weighted = if gamma == 0.0 {
        log_p
    } else {
        let rest = (1.0 - log_p.exp()?)?.maximum(f32::EPSILON as f64)?;
        (rest.powf(gamma)? * log_p)?
    };
    weighted.neg()?.mean_all()?.to_dtype(DType::F32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::loss::cross_entropy;
    use candle_core::Device;

    fn inputs() -> (Tensor, Tensor, Tensor) {
        let cpu = Device::Cpu;
        let logits = Tensor::new(
            &[[[2.0f32, 0.0, 0.0], [0.0, 1.0, 0.0], [9.0, 9.0, 9.0]]],
            &cpu,
        )
        .unwrap();
        // The third position is padding: not scored.
        let positions = Tensor::new(&[0u32, 1], &cpu).unwrap();
        let targets = Tensor::new(&[0u32, 2], &cpu).unwrap();
        (logits, positions, targets)
    }

    #[test]
    fn the_focal_loss_matches_a_hand_computation() {
        let (logits, positions, targets) = inputs();
        // Position 0: p = e²/(e² + 2); position 1: p = 1/(e + 2).
        let e = std::f64::consts::E;
        let (p0, p1) = (e * e / (e * e + 2.0), 1.0 / (e + 2.0));
        let term = |p: f64| -(1.0 - p).powi(2) * p.ln();
        let want = (term(p0) + term(p1)) / 2.0;
        let got = focal_loss(&logits, &positions, &targets, 2.0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }

    #[test]
    fn gamma_zero_is_cross_entropy() {
        let (logits, positions, targets) = inputs();
        let focal = focal_loss(&logits, &positions, &targets, 0.0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let ce = cross_entropy(&logits, &positions, &targets)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(focal, ce);
        // A larger γ weighs the confident first token less.
        let strong = focal_loss(&logits, &positions, &targets, 5.0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(strong < focal, "{strong} vs {focal}");
    }

    #[test]
    fn gradients_stay_finite_on_a_certain_token() {
        let var = candle_core::Var::from_tensor(
            &Tensor::new(&[[[80.0f32, 0.0, 0.0]]], &Device::Cpu).unwrap(),
        )
        .unwrap();
        let positions = Tensor::new(&[0u32], &Device::Cpu).unwrap();
        let targets = Tensor::new(&[0u32], &Device::Cpu).unwrap();
        for gamma in [0.5, 2.0] {
            let loss = focal_loss(var.as_tensor(), &positions, &targets, gamma).unwrap();
            let grads = loss.backward().unwrap();
            let g = grads.get(&var).unwrap().flatten_all().unwrap();
            let g = g.to_vec1::<f32>().unwrap();
            assert!(g.iter().all(|v| v.is_finite()), "γ {gamma}: {g:?}");
        }
    }

    #[test]
    fn a_negative_or_infinite_gamma_is_refused() {
        assert!(Focal::new(-1.0).is_err());
        assert!(Focal::new(f64::INFINITY).is_err());
        assert!(Focal::new(0.0).is_ok());
    }
}
