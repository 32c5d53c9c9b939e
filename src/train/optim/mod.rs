//! AdamW with decoupled weight decay, gradient accumulation, global-norm clipping and masks that
//! keep pruned weights at zero. Two places for its state, one semantics:
//! - on the host (RAM vectors updated in place by `kernels::cpu::adamw`): the fused CPU path;
//! - on the parameters' device ([`device`]: tensors updated with standard candle ops), so a GPU
//!   run never copies its state to the host inside a step.
//!
//! The moments of both are saved and restored alike (`last/state`), so a run may resume on
//! another device.

pub mod device;

use candle_core::{backprop::GradStore, Tensor, Var};

use crate::arch::{Key, LinearPart};
use crate::error::{Error, Result};
use crate::kernels::cpu::adamw::{self as host, AdamUpdate, HostMoments};
use device::DeviceMoments;

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

/// Where the optimizer keeps its moments and gradient buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatePlacement {
    /// RAM vectors updated in place (parameters in RAM only).
    Host,
    /// Tensors on each parameter's device.
    Device,
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

/// A parameter's moments and gradient buffer, where the optimizer keeps them.
pub enum Moments {
    Host(HostMoments),
    Device(DeviceMoments),
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
        match &self.moments {
            Moments::Host(h) => Ok((h.m.clone(), h.v.clone())),
            Moments::Device(d) => d.to_host(),
        }
    }

    /// Replaces the moments with saved ones (same length as the parameter).
    pub fn set_moments(&mut self, m: Vec<f32>, v: Vec<f32>) -> Result<()> {
        match &mut self.moments {
            Moments::Host(h) => {
                h.m = m;
                h.v = v;
                Ok(())
            }
            Moments::Device(d) => d.set(m, v, self.var.as_tensor()),
        }
    }
}

/// The global gradient norm of an update: a host number, or a device scalar read only when
/// the run logs it.
pub enum GradNorm {
    Host(f64),
    Device(Tensor),
}

impl GradNorm {
    pub fn value(&self) -> Result<f64> {
        match self {
            GradNorm::Host(n) => Ok(*n),
            GradNorm::Device(t) => Ok(t.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?),
        }
    }
}

pub struct AdamW {
    pub config: AdamWConfig,
    pub params: Vec<ParamState>,
    /// Number of optimizer steps taken.
    pub step: u64,
    placement: StatePlacement,
}

impl AdamW {
    pub fn new(
        vars: Vec<OptParam>,
        config: AdamWConfig,
        placement: StatePlacement,
    ) -> Result<Self> {
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
            let moments = match placement {
                StatePlacement::Host => {
                    if !var.device().is_cpu() {
                        return Err(Error::Internal(format!(
                            "{name}: the in-place optimizer needs parameters in RAM"
                        )));
                    }
                    Moments::Host(HostMoments::new(var.as_tensor(), keep_zeros)?)
                }
                StatePlacement::Device => {
                    Moments::Device(DeviceMoments::new(var.as_tensor(), keep_zeros)?)
                }
            };
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
            placement,
        })
    }

    pub fn placement(&self) -> StatePlacement {
        self.placement
    }

    /// Adds this backward pass's gradients to the buffers (gradient accumulation).
    pub fn accumulate(&mut self, grads: &GradStore) -> Result<()> {
        for p in &mut self.params {
            if let Some(g) = grads.get(p.var.as_tensor()) {
                match &mut p.moments {
                    Moments::Host(h) => h.accumulate(g)?,
                    Moments::Device(d) => d.accumulate(g)?,
                }
            }
        }
        Ok(())
    }

    /// The global L2 norm of the accumulated gradients (host state only; tests and logs).
    pub fn grad_norm(&self) -> Result<f64> {
        match self.device_norm()? {
            Some(norm) => GradNorm::Device(norm).value(),
            None => Ok(self.host_sum_of_squares().sqrt()),
        }
    }

    fn host_sum_of_squares(&self) -> f64 {
        self.params
            .iter()
            .map(|p| match &p.moments {
                Moments::Host(h) => h.grad_sum_of_squares(),
                Moments::Device(_) => 0.0,
            })
            .sum()
    }

    /// √Σ g² over the device buffers as a device scalar (None with host state).
    fn device_norm(&self) -> Result<Option<Tensor>> {
        if self.placement == StatePlacement::Host {
            return Ok(None);
        }
        let states: Vec<&DeviceMoments> = self
            .params
            .iter()
            .filter_map(|p| match &p.moments {
                Moments::Device(d) => Some(d),
                Moments::Host(_) => None,
            })
            .collect();
        let on = self
            .params
            .first()
            .map_or(candle_core::Device::Cpu, |p| p.var.device().clone());
        Ok(Some(device::global_norm(&states, &on)?))
    }

    /// One update with learning rate `lr`; gradients are divided by `scale_down` (accumulation
    /// steps) and clipped to `max_norm` (global norm, 0 = no clipping). Returns the norm before
    /// clipping and clears the buffers.
    pub fn step(&mut self, lr: f64, scale_down: f64, max_norm: f64) -> Result<GradNorm> {
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let constants = |grad_scale: f32, lr_scale: f64, decay: bool| AdamUpdate {
            lr: lr as f32 * lr_scale as f32,
            beta1: c.beta1 as f32,
            beta2: c.beta2 as f32,
            eps: c.eps as f32,
            grad_scale,
            bias1: 1.0 - c.beta1.powi(t) as f32,
            bias2: 1.0 - c.beta2.powi(t) as f32,
            decay: if decay { c.weight_decay as f32 } else { 0.0 },
        };
        if let Some(norm) = self.device_norm()? {
            let norm = (norm / scale_down)?;
            let scale = device::clip_scale(&norm, max_norm, scale_down)?;
            for p in &mut self.params {
                if let Moments::Device(d) = &mut p.moments {
                    d.update(&p.var, &scale, constants(1.0, p.lr_scale, p.decay))?;
                }
            }
            return Ok(GradNorm::Device(norm));
        }
        let norm = self.host_sum_of_squares().sqrt() / scale_down;
        let clip = if max_norm > 0.0 && norm > max_norm {
            max_norm / (norm + 1e-6)
        } else {
            1.0
        };
        let grad_scale = (clip / scale_down) as f32;
        for p in &mut self.params {
            if p.var.elem_count() == 0 {
                // e.g. the query weight of a layer whose heads were all removed
                continue;
            }
            if let Moments::Host(h) = &mut p.moments {
                host::update(
                    p.var.as_tensor(),
                    h,
                    constants(grad_scale, p.lr_scale, p.decay),
                )?;
            }
        }
        Ok(GradNorm::Host(norm))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

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

    fn host(p: &mut ParamState) -> &mut HostMoments {
        match &mut p.moments {
            Moments::Host(h) => h,
            Moments::Device(_) => panic!("host state expected"),
        }
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
        let mut opt =
            AdamW::new(vec![param], AdamWConfig::default(), StatePlacement::Host).unwrap();
        let grads = [[0.5f32, 1.0, -0.3], [0.1, 0.2, 0.4], [-0.7, 0.3, 0.2]];
        for g in &grads {
            host(&mut opt.params[0]).grad.copy_from_slice(g);
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
        let mut opt =
            AdamW::new(vec![param], AdamWConfig::default(), StatePlacement::Host).unwrap();
        host(&mut opt.params[0]).grad.copy_from_slice(&[3.0, 4.0]);
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
        placement: StatePlacement,
        steps: usize,
        resume_at: Option<usize>,
    ) -> (Vec<Vec<f32>>, Vec<f64>) {
        let ps = params(3);
        let mut opt = AdamW::new(ps.clone(), AdamWConfig::default(), placement).unwrap();
        let mut norms = vec![];
        for step in 0..steps {
            if resume_at == Some(step) {
                let saved: Vec<_> = opt
                    .params
                    .iter()
                    .map(|p| p.moments_to_host().unwrap())
                    .collect();
                let at = opt.step;
                opt = AdamW::new(ps.clone(), AdamWConfig::default(), placement).unwrap();
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
        let (host, host_norms) = train(StatePlacement::Host, 6, None);
        let (device, device_norms) = train(StatePlacement::Device, 6, None);
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
        for placement in [StatePlacement::Host, StatePlacement::Device] {
            let (straight, _) = train(placement, 5, None);
            let (resumed, _) = train(placement, 5, Some(3));
            assert_eq!(straight, resumed, "{placement:?}");
        }
    }
}
