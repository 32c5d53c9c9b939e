//! AdamW with decoupled weight decay, gradient accumulation, global-norm clipping and masks that
//! keep pruned weights at zero. Where its state lives and how an update runs belong to the run's
//! kernels ([`crate::kernels::adamw`]); this module holds the hyper-parameters, the parameters'
//! bookkeeping and the step count.

use candle_core::{backprop::GradStore, Var};

use crate::arch::{Key, LinearPart};
use crate::error::Result;
pub use crate::kernels::adamw::GradNorm;
use crate::kernels::adamw::{self as kernel, AdamUpdate, Moments, Slot};
use crate::kernels::Kernels;

/// Hyper-parameters of AdamW (PyTorch defaults except weight decay).
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// A parameter handed to the optimizer.
#[derive(Clone)]
pub struct OptParam {
    /// Name used for the saved optimizer state.
    pub name: String,
    pub var: Var,
    /// Weight decay applies.
    pub decay: bool,
    /// Keep the current zeros at zero (pruned weights).
    pub keep_zeros: bool,
    /// Not part of the checkpoint (e.g. a distillation projection): its value is saved with the
    /// optimizer state so a resumed run continues with it.
    pub external: bool,
    /// Multiplies the scheduled learning rate (head gates learn much faster than weights).
    pub lr_scale: f64,
}

impl OptParam {
    /// A trainable tensor outside the model.
    pub fn external(name: &str, var: Var, decay: bool, lr_scale: f64) -> Self {
        OptParam {
            name: name.to_string(),
            var,
            decay,
            keep_zeros: false,
            external: true,
            lr_scale,
        }
    }

    /// A model parameter: decay and masking follow from its key and structure.
    pub fn model(key: Key, layout: crate::arch::Layout, var: Var, sparse: bool) -> Self {
        OptParam {
            name: key.name(layout),
            var,
            decay: decays(key),
            keep_zeros: sparse,
            external: false,
            lr_scale: 1.0,
        }
    }
}

/// True for parameters that get weight decay: everything but biases and LayerNorms (HF/BERT).
pub fn decays(key: Key) -> bool {
    !matches!(
        key,
        Key::Linear {
            part: LinearPart::Bias,
            ..
        } | Key::LayerNorm { .. }
            | Key::EmbeddingNorm(_)
            | Key::Pooler(crate::arch::NormPart::Bias)
            | Key::Classifier(crate::arch::NormPart::Bias)
    )
}

/// Per-parameter optimizer state.
pub struct ParamState {
    pub name: String,
    pub var: Var,
    pub external: bool,
    pub lr_scale: f64,
    /// Weight decay applies (not to biases and LayerNorm parameters).
    pub decay: bool,
    pub moments: Moments,
}

impl ParamState {
    /// The first and second moments as host vectors (for saving `last/state`).
    pub fn moments_to_host(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        self.moments.to_host()
    }

    /// Replaces the moments with saved ones (same length as the parameter).
    pub fn set_moments(&mut self, m: Vec<f32>, v: Vec<f32>) -> Result<()> {
        self.moments.set(m, v, self.var.as_tensor())
    }
}

pub struct AdamW {
    pub config: AdamWConfig,
    pub params: Vec<ParamState>,
    /// Number of optimizer steps taken.
    pub step: u64,
    /// Which implementation holds the state and runs the update.
    kernels: Kernels,
}

impl AdamW {
    pub fn new(vars: Vec<OptParam>, config: AdamWConfig, kernels: Kernels) -> Result<Self> {
        let mut params = vec![];
        for OptParam {
            name,
            var,
            decay,
            keep_zeros,
            external,
            lr_scale,
        } in vars
        {
            let moments = Moments::new(kernels, &name, var.as_tensor(), keep_zeros)?;
            params.push(ParamState {
                name,
                var,
                external,
                lr_scale,
                decay,
                moments,
            });
        }
        Ok(AdamW {
            config,
            params,
            step: 0,
            kernels,
        })
    }

    /// Adds this backward pass's gradients to the buffers (gradient accumulation).
    pub fn accumulate(&mut self, grads: &GradStore) -> Result<()> {
        for p in &mut self.params {
            if let Some(g) = grads.get(p.var.as_tensor()) {
                p.moments.accumulate(g)?;
            }
        }
        Ok(())
    }

    /// The global L2 norm of the accumulated gradients (tests and logs).
    pub fn grad_norm(&self) -> Result<f64> {
        let moments: Vec<&Moments> = self.params.iter().map(|p| &p.moments).collect();
        kernel::grad_norm(self.kernels, &moments, &self.device())?.value()
    }

    /// The parameters' device (the CPU for an optimizer without parameters).
    fn device(&self) -> candle_core::Device {
        self.params
            .first()
            .map_or(candle_core::Device::Cpu, |p| p.var.device().clone())
    }

    /// One update with learning rate `lr`; gradients are divided by `scale_down` (accumulation
    /// steps) and clipped to `max_norm` (global norm, 0 = no clipping). Returns the norm before
    /// clipping and clears the buffers.
    pub fn step(&mut self, lr: f64, scale_down: f64, max_norm: f64) -> Result<GradNorm> {
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let on = self.device();
        let slots = self
            .params
            .iter_mut()
            .map(|p| Slot {
                var: &p.var,
                update: AdamUpdate {
                    lr: lr as f32 * p.lr_scale as f32,
                    beta1: c.beta1 as f32,
                    beta2: c.beta2 as f32,
                    eps: c.eps as f32,
                    grad_scale: 1.0,
                    bias1: 1.0 - c.beta1.powi(t) as f32,
                    bias2: 1.0 - c.beta2.powi(t) as f32,
                    decay: if p.decay { c.weight_decay as f32 } else { 0.0 },
                },
                moments: &mut p.moments,
            })
            .collect();
        kernel::step(self.kernels, slots, &on, (scale_down, max_norm))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// Reference AdamW (PyTorch's formulation) on plain numbers.
    fn reference(w0: f32, grads: &[f32], lr: f32, wd: f32) -> f32 {
        let (b1, b2, eps) = (0.9f32, 0.999f32, 1e-8f32);
        let (mut w, mut m, mut v) = (w0, 0f32, 0f32);
        for (t, g) in grads.iter().enumerate() {
            let t = t as i32 + 1;
            w *= 1.0 - lr * wd;
            m = b1 * m + (1.0 - b1) * g;
            v = b2 * v + (1.0 - b2) * g * g;
            let mhat = m / (1.0 - b1.powi(t));
            let vhat = v / (1.0 - b2.powi(t));
            w -= lr * mhat / (vhat.sqrt() + eps);
        }
        w
    }

    fn set_grad(p: &mut ParamState, g: &[f32]) {
        p.moments.set_grad(g, p.var.as_tensor()).unwrap();
    }

    #[test]
    fn in_place_update_matches_reference_adamw_and_keeps_masked_zeros() {
        let var =
            Var::from_tensor(&Tensor::new(&[1.0f32, 0.0, -2.0], &Device::Cpu).unwrap()).unwrap();
        let param = OptParam::model(
            Key::WordEmbeddings,
            crate::arch::Layout::Bare,
            var.clone(),
            true,
        );
        let mut opt = AdamW::new(
            vec![param],
            AdamWConfig::default(),
            Kernels::for_device(&Device::Cpu),
        )
        .unwrap();
        let grads = [[0.5f32, 1.0, -0.3], [0.1, 0.2, 0.4], [-0.7, 0.3, 0.2]];
        for g in &grads {
            set_grad(&mut opt.params[0], g);
            opt.step(1e-2, 1.0, 0.0).unwrap();
        }
        let w = var.as_tensor().to_vec1::<f32>().unwrap();
        for i in [0, 2] {
            let gs: Vec<f32> = grads.iter().map(|g| g[i]).collect();
            let expected = reference([1.0, 0.0, -2.0][i], &gs, 1e-2, 0.01);
            assert!((w[i] - expected).abs() < 1e-6, "{} vs {expected}", w[i]);
        }
        assert_eq!(w[1], 0.0, "a pruned weight must stay zero");
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let var = Var::from_tensor(&Tensor::new(&[0.0f32, 0.0], &Device::Cpu).unwrap()).unwrap();
        let param = OptParam::model(Key::WordEmbeddings, crate::arch::Layout::Bare, var, false);
        let mut opt = AdamW::new(
            vec![param],
            AdamWConfig::default(),
            Kernels::for_device(&Device::Cpu),
        )
        .unwrap();
        set_grad(&mut opt.params[0], &[3.0, 4.0]);
        assert!((opt.grad_norm().unwrap() - 5.0).abs() < 1e-9);
        let norm = opt.step(1e-3, 2.0, 1.0).unwrap().value().unwrap();
        assert!((norm - 2.5).abs() < 1e-9);
        assert_eq!(opt.grad_norm().unwrap(), 0.0);
    }
}
