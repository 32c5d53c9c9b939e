//! Hard-concrete head gates (Louizos et al. 2018), as used by Voita et al. (2019) to find which
//! attention heads matter: one gate per head multiplies the head's output. Training samples
//! s = σ((log u − log(1−u) + log α)/β), z = clamp(s(r−l)+l, 0, 1); evaluation uses the
//! deterministic z = clamp(σ(log α)(r−l)+l, 0, 1); the expected L0 norm Σ σ(log α − β log(−l/r))
//! is the number of heads expected open.

use candle_core::{Tensor, Var};

use crate::model::Mode;

/// Stretch interval and temperature. β = 2/3 as in Louizos et al. (and Voita et al.'s code):
/// low enough that samples are nearly binary, high enough for useful gradients.
pub const BETA: f64 = 2.0 / 3.0;
pub const LEFT: f64 = -0.1;
pub const RIGHT: f64 = 1.1;

#[derive(Clone)]
pub struct HeadGates {
    /// log α per logical layer, [heads].
    pub log_alpha: Vec<Var>,
}

fn sigmoid(x: &Tensor) -> candle_core::Result<Tensor> {
    (x.neg()?.exp()? + 1.0)?.recip()
}

impl HeadGates {
    /// Gates that start open: log α = `init` (3 gives P(open) ≈ 0.99), on `device`.
    pub fn new(
        heads_per_layer: &[usize],
        init: f64,
        device: &candle_core::Device,
    ) -> candle_core::Result<Self> {
        let log_alpha = heads_per_layer
            .iter()
            .map(|&h| {
                Var::from_tensor(&(Tensor::ones(h, candle_core::DType::F32, device)? * init)?)
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(HeadGates { log_alpha })
    }

    /// The gate values of a layer for this pass: sampled in training, deterministic in eval.
    pub fn sample(&self, layer: usize, mode: &mut Mode) -> candle_core::Result<Tensor> {
        let log_alpha = self.log_alpha[layer].as_tensor();
        let s = match mode {
            Mode::Train(rng) => {
                let n = log_alpha.elem_count();
                let noise: Vec<f32> = (0..n)
                    .map(|_| {
                        let u = rng.uniform().clamp(1e-6, 1.0 - 1e-6) as f64;
                        (u.ln() - (1.0 - u).ln()) as f32
                    })
                    .collect();
                let noise = Tensor::from_vec(noise, n, log_alpha.device())?;
                sigmoid(&((log_alpha + noise)? / BETA)?)?
            }
            Mode::Eval => sigmoid(log_alpha)?,
        };
        ((s * (RIGHT - LEFT))? + LEFT)?.clamp(0f32, 1f32)
    }

    /// The expected number of open heads (the L0 penalty), differentiable in log α.
    pub fn expected_open(&self) -> candle_core::Result<Tensor> {
        let shift = BETA * (-LEFT / RIGHT).ln();
        let mut total: Option<Tensor> = None;
        for la in &self.log_alpha {
            let p = sigmoid(&(la.as_tensor() - shift)?)?.sum_all()?;
            total = Some(match total {
                Some(t) => (t + p)?,
                None => p,
            });
        }
        total.ok_or_else(|| candle_core::Error::Msg("no gates".into()))
    }

    /// Deterministic gate values per layer.
    pub fn values(&self) -> candle_core::Result<Vec<Vec<f64>>> {
        (0..self.log_alpha.len())
            .map(|l| {
                Ok(self
                    .sample(l, &mut Mode::Eval)?
                    .to_vec1::<f32>()?
                    .iter()
                    .map(|v| *v as f64)
                    .collect())
            })
            .collect()
    }
}

/// A gates file (`train gates` writes it, `remove-heads --gates` reads it): one gate value per
/// head per logical layer, and the structure it was made for.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct GatesFile {
    pub heads_per_layer: Vec<usize>,
    pub hidden_size: usize,
    pub gates: Vec<Vec<f64>>,
}
