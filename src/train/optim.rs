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
        let mut opt = AdamW::new(vec![param], AdamWConfig::default(), Kernels::Fused).unwrap();
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
        let mut opt = AdamW::new(vec![param], AdamWConfig::default(), Kernels::Fused).unwrap();
        set_grad(&mut opt.params[0], &[3.0, 4.0]);
        assert!((opt.grad_norm().unwrap() - 5.0).abs() < 1e-9);
        let norm = opt.step(1e-3, 2.0, 1.0).unwrap().value().unwrap();
        assert!((norm - 2.5).abs() < 1e-9);
        assert_eq!(opt.grad_norm().unwrap(), 0.0);
    }

    /// Parameters of every kind the optimizer treats differently: decayed, not decayed, with
    /// pruned zeros, with their own lr scale, and empty.
    fn params(seed: u64) -> Vec<OptParam> {
        let mut rng = crate::util::rng::Rng::new(seed);
        let mut t = |n: usize, zeros: bool| {
            let v: Vec<f32> = (0..n)
                .map(|i| {
                    if zeros && i % 3 == 0 {
                        0.0
                    } else {
                        rng.normal()
                    }
                })
                .collect();
            Var::from_tensor(&Tensor::from_vec(v, n, &Device::Cpu).unwrap()).unwrap()
        };
        vec![
            OptParam::external("decayed", t(50, false), true, 1.0),
            OptParam::external("plain", t(7, false), false, 1.0),
            OptParam {
                keep_zeros: true,
                ..OptParam::external("sparse", t(30, true), true, 1.0)
            },
            OptParam::external("fast", t(4, false), false, 50.0),
            OptParam::external("empty", t(0, false), true, 1.0),
        ]
    }

    /// Gradients for `params` from a loss that reaches each of them, differing per step.
    fn backward(params: &[OptParam], step: usize) -> GradStore {
        let mut loss: Option<Tensor> = None;
        for (i, p) in params.iter().enumerate() {
            let w = p.var.as_tensor();
            let n = w.elem_count();
            if n == 0 {
                continue;
            }
            let probe: Vec<f32> = (0..n)
                .map(|j| ((j * 7 + i * 3 + step * 5) % 11) as f32 - 5.0)
                .collect();
            let probe = Tensor::from_vec(probe, n, &Device::Cpu).unwrap();
            let term = (w.sqr().unwrap() * probe).unwrap().sum_all().unwrap();
            loss = Some(match loss {
                Some(l) => (l + term).unwrap(),
                None => term,
            });
        }
        loss.unwrap().backward().unwrap()
    }

    /// Between the norms the test's steps reach (26.9 to 30.1), so some steps are clipped.
    const MAX_NORM: f64 = 28.5;

    /// Runs `steps` updates (two backward passes accumulated per update, clipped), optionally
    /// saving the moments after `save_at` updates and continuing in a fresh optimizer from
    /// them (as a resumed run does); returns every parameter's final values and the norms.
    fn train(
        kernels: Kernels,
        steps: usize,
        resume_at: Option<usize>,
    ) -> (Vec<Vec<f32>>, Vec<f64>) {
        let ps = params(3);
        let mut opt = AdamW::new(ps.clone(), AdamWConfig::default(), kernels).unwrap();
        let mut norms = vec![];
        for step in 0..steps {
            if resume_at == Some(step) {
                let saved: Vec<_> = opt
                    .params
                    .iter()
                    .map(|p| p.moments_to_host().unwrap())
                    .collect();
                let at = opt.step;
                opt = AdamW::new(ps.clone(), AdamWConfig::default(), kernels).unwrap();
                opt.step = at;
                for (p, (m, v)) in opt.params.iter_mut().zip(saved) {
                    p.set_moments(m, v).unwrap();
                }
            }
            for pass in 0..2 {
                opt.accumulate(&backward(&ps, step * 2 + pass)).unwrap();
            }
            norms.push(opt.step(1e-2, 2.0, MAX_NORM).unwrap().value().unwrap());
        }
        let values = ps
            .iter()
            .map(|p| p.var.as_tensor().to_vec1::<f32>().unwrap())
            .collect();
        (values, norms)
    }

    /// The device optimizer (run here on the CPU device) takes the same steps as the in-place
    /// one: decay, no decay, kept zeros, an lr scale, an empty tensor, accumulation, clipping.
    #[test]
    fn device_state_updates_like_the_in_place_one() {
        let (host, host_norms) = train(Kernels::Fused, 6, None);
        let (device, device_norms) = train(Kernels::Generic, 6, None);
        assert!(
            host_norms.iter().any(|n| *n > MAX_NORM) && host_norms.iter().any(|n| *n < MAX_NORM),
            "steps with and without clipping: {host_norms:?}"
        );
        for (a, b) in host_norms.iter().zip(&device_norms) {
            assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0), "{a} vs {b}");
        }
        for (h, d) in host.iter().zip(&device) {
            for (a, b) in h.iter().zip(d) {
                assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0), "{a} vs {b}");
            }
        }
        let sparse = &device[2];
        assert!(
            sparse.iter().step_by(3).all(|v| *v == 0.0),
            "pruned zeros kept"
        );
    }

    /// Saving the moments and continuing from them gives the uninterrupted run's values
    /// exactly, for both placements.
    #[test]
    fn resuming_from_saved_moments_is_exact() {
        for kernels in [Kernels::Fused, Kernels::Generic] {
            let (straight, _) = train(kernels, 5, None);
            let (resumed, _) = train(kernels, 5, Some(3));
            assert_eq!(straight, resumed, "{kernels:?}");
        }
    }
}
