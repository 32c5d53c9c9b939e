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
