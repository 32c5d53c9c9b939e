//! Where AdamW keeps a parameter's state and how one update runs, per implementation: the fused
//! kernels keep it in RAM and update in place ([`super::cpu::adamw`]); the generic ones keep it
//! as tensors on the parameter's device ([`super::generic::adamw`]), so a GPU run never copies
//! it to the host inside a step. The optimizer sees only [`Moments`], [`grad_norm`] and
//! [`step`]; both implementations save and restore alike, so a run may resume on another device.

use candle_core::{Device, Tensor, Var};

pub use super::cpu::adamw::AdamUpdate;
use super::cpu::adamw::{self as host, HostMoments};
use super::generic::adamw::{self as device, DeviceMoments};
use super::Kernels;
use crate::error::{Error, Result};

/// A parameter's moments and gradient buffer, where its kernels keep them.
pub enum Moments {
    Host(HostMoments),
    Device(DeviceMoments),
}

impl Moments {
    /// Zero moments for `value` (parameter `name`); `keep_zeros` records where it is zero now
    /// (pruned weights stay zero).
    pub fn new(k: Kernels, name: &str, value: &Tensor, keep_zeros: bool) -> Result<Self> {
        match k {
            Kernels::Fused if !value.device().is_cpu() => Err(Error::Internal(format!(
                "{name}: the in-place optimizer needs parameters in RAM"
            ))),
            Kernels::Fused => Ok(Moments::Host(HostMoments::new(value, keep_zeros)?)),
            Kernels::Generic => Ok(Moments::Device(DeviceMoments::new(value, keep_zeros)?)),
        }
    }

    /// Adds one backward pass's gradient to the buffer (gradient accumulation).
    pub fn accumulate(&mut self, g: &Tensor) -> Result<()> {
        match self {
            Moments::Host(h) => Ok(h.accumulate(g)?),
            Moments::Device(d) => d.accumulate(g),
        }
    }

    /// The first and second moments as host vectors (for saving `last/state`).
    pub fn to_host(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        match self {
            Moments::Host(h) => Ok((h.m.clone(), h.v.clone())),
            Moments::Device(d) => d.to_host(),
        }
    }

    /// Replaces the moments with saved ones (as long as the parameter `like`).
    pub fn set(&mut self, m: Vec<f32>, v: Vec<f32>, like: &Tensor) -> Result<()> {
        match self {
            Moments::Host(h) => {
                h.m = m;
                h.v = v;
                Ok(())
            }
            Moments::Device(d) => d.set(m, v, like),
        }
    }

    /// Replaces the accumulated gradient (tests of the update's arithmetic).
    #[cfg(test)]
    pub fn set_grad(&mut self, g: &[f32], like: &Tensor) -> Result<()> {
        match self {
            Moments::Host(h) => h.grad.copy_from_slice(g),
            Moments::Device(d) => {
                d.replace_grad(Tensor::from_slice(g, like.shape(), like.device())?)
            }
        }
        Ok(())
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

/// One parameter's part in an update: its value, its state and its constants.
pub struct Slot<'a> {
    pub var: &'a Var,
    pub moments: &'a mut Moments,
    pub update: AdamUpdate,
}

/// The global L2 norm of the accumulated gradients, before any scaling.
pub fn grad_norm(k: Kernels, moments: &[&Moments], on: &Device) -> Result<GradNorm> {
    match k {
        Kernels::Fused => Ok(GradNorm::Host(host_sum_of_squares(moments).sqrt())),
        Kernels::Generic => Ok(GradNorm::Device(device::global_norm(
            &device_states(moments),
            on,
        )?)),
    }
}

/// One update of every slot: the accumulated gradients divided by `scale_down` (accumulation
/// steps) and clipped to `max_norm` (global norm, 0 = no clipping). Returns the norm before
/// clipping and clears the buffers. `on` is the parameters' device.
pub fn step(
    k: Kernels,
    slots: Vec<Slot<'_>>,
    on: &Device,
    (scale_down, max_norm): (f64, f64),
) -> Result<GradNorm> {
    let moments: Vec<&Moments> = slots.iter().map(|s| &*s.moments).collect();
    match grad_norm(k, &moments, on)? {
        GradNorm::Device(norm) => {
            let norm = (norm / scale_down)?;
            let scale = device::clip_scale(&norm, max_norm, scale_down)?;
            for s in slots {
                if let Moments::Device(d) = s.moments {
                    d.update(s.var, &scale, s.update)?;
                }
            }
            Ok(GradNorm::Device(norm))
        }
        GradNorm::Host(norm) => {
            let norm = norm / scale_down;
            let clip = if max_norm > 0.0 && norm > max_norm {
                max_norm / (norm + 1e-6)
            } else {
                1.0
            };
            let grad_scale = (clip / scale_down) as f32;
            for s in slots {
                if s.var.elem_count() == 0 {
                    // e.g. the query weight of a layer whose heads were all removed
                    continue;
                }
                if let Moments::Host(h) = s.moments {
                    let u = AdamUpdate {
                        grad_scale,
                        ..s.update
                    };
                    host::update(s.var.as_tensor(), h, u)?;
                }
            }
            Ok(GradNorm::Host(norm))
        }
    }
}

fn host_sum_of_squares(moments: &[&Moments]) -> f64 {
    moments
        .iter()
        .map(|m| match m {
            Moments::Host(h) => h.grad_sum_of_squares(),
            Moments::Device(_) => 0.0,
        })
        .sum()
}

fn device_states<'a>(moments: &[&'a Moments]) -> Vec<&'a DeviceMoments> {
    moments
        .iter()
        .filter_map(|m| match m {
            Moments::Device(d) => Some(d),
            Moments::Host(_) => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::backprop::GradStore;

    /// A parameter as the optimizer hands it over: its value and how it is updated.
    struct Param {
        var: Var,
        decay: bool,
        keep_zeros: bool,
        lr_scale: f32,
    }

    /// Parameters of every kind an update treats differently: decayed, not decayed, with
    /// pruned zeros, with their own lr scale, and empty.
    fn params(seed: u64) -> Vec<Param> {
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
        let p = |var: Var, decay: bool, keep_zeros: bool, lr_scale: f32| Param {
            var,
            decay,
            keep_zeros,
            lr_scale,
        };
        vec![
            p(t(50, false), true, false, 1.0),
            p(t(7, false), false, false, 1.0),
            p(t(30, true), true, true, 1.0),
            p(t(4, false), false, false, 50.0),
            p(t(0, false), true, false, 1.0),
        ]
    }

    /// Gradients for `params` from a loss that reaches each of them, differing per step.
    fn backward(params: &[Param], step: usize) -> GradStore {
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

    /// Runs `steps` updates (two backward passes accumulated per update, clipped) with `k`,
    /// optionally saving the moments after `resume_at` updates and continuing from fresh state
    /// loaded with them (as a resumed run does); returns every parameter's values and the norms.
    fn train(k: Kernels, steps: usize, resume_at: Option<usize>) -> (Vec<Vec<f32>>, Vec<f64>) {
        let ps = params(3);
        let fresh = || -> Vec<Moments> {
            ps.iter()
                .map(|p| Moments::new(k, "p", p.var.as_tensor(), p.keep_zeros).unwrap())
                .collect()
        };
        let mut moments = fresh();
        let mut norms = vec![];
        for step in 0..steps {
            if resume_at == Some(step) {
                let saved: Vec<_> = moments.iter().map(|m| m.to_host().unwrap()).collect();
                moments = fresh();
                for ((m, (first, second)), p) in moments.iter_mut().zip(saved).zip(&ps) {
                    m.set(first, second, p.var.as_tensor()).unwrap();
                }
            }
            for pass in 0..2 {
                let grads = backward(&ps, step * 2 + pass);
                for (m, p) in moments.iter_mut().zip(&ps) {
                    if let Some(g) = grads.get(p.var.as_tensor()) {
                        m.accumulate(g).unwrap();
                    }
                }
            }
            let t = step as i32 + 1;
            let slots = ps
                .iter()
                .zip(moments.iter_mut())
                .map(|(p, m)| Slot {
                    var: &p.var,
                    moments: m,
                    update: AdamUpdate {
                        lr: 1e-2 * p.lr_scale,
                        beta1: 0.9,
                        beta2: 0.999,
                        eps: 1e-8,
                        grad_scale: 1.0,
                        bias1: 1.0 - 0.9f64.powi(t) as f32,
                        bias2: 1.0 - 0.999f64.powi(t) as f32,
                        decay: if p.decay { 0.01 } else { 0.0 },
                    },
                })
                .collect();
            let norm = super::step(k, slots, &Device::Cpu, (2.0, MAX_NORM)).unwrap();
            norms.push(norm.value().unwrap());
        }
        let values = ps
            .iter()
            .map(|p| p.var.as_tensor().to_vec1::<f32>().unwrap())
            .collect();
        (values, norms)
    }

    /// The device state (run here on the CPU device) takes the same steps as the in-place one:
    /// decay, no decay, kept zeros, an lr scale, an empty tensor, accumulation, clipping.
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
    /// exactly, for both implementations.
    #[test]
    fn resuming_from_saved_moments_is_exact() {
        for k in [Kernels::Fused, Kernels::Generic] {
            let (straight, _) = train(k, 5, None);
            let (resumed, _) = train(k, 5, Some(3));
            assert_eq!(straight, resumed, "{k:?}");
        }
    }
}
