//! AdamW with decoupled weight decay, updated in place over each parameter's storage (candle's
//! own AdamW builds several new tensors per parameter for every update, measured at ~1 s per step
//! on 22M parameters), plus gradient accumulation buffers, global-norm clipping and masks that
//! keep pruned weights at zero.

use std::cell::RefCell;

use candle_core::{backprop::GradStore, CpuStorage, InplaceOp1, Layout, Storage, Tensor, Var};

use rayon::prelude::*;

use crate::arch::{Key, LinearPart};

/// Elements per parallel task of the optimizer's memory-bound loops.
const CHUNK: usize = 1 << 15;
use crate::error::{Error, Result};

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
}

impl OptParam {
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

/// Per-parameter optimizer state and gradient buffer.
pub struct ParamState {
    pub name: String,
    pub var: Var,
    pub external: bool,
    pub lr_scale: f64,
    /// Weight decay applies (not to biases and LayerNorm parameters).
    pub decay: bool,
    /// Positions that must stay zero (pruned weights), when the parameter is sparse.
    pub zero_mask: Option<Vec<bool>>,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    pub grad: Vec<f32>,
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

pub struct AdamW {
    pub config: AdamWConfig,
    pub params: Vec<ParamState>,
    /// Number of optimizer steps taken.
    pub step: u64,
}

fn cpu_slice(t: &Tensor, f: &mut dyn FnMut(&[f32])) -> Result<()> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => {
            let data = cpu.as_slice::<f32>()?;
            let (a, b) = layout
                .contiguous_offsets()
                .expect("contiguous after .contiguous()");
            f(&data[a..b]);
            Ok(())
        }
        _ => Err(Error::Spec("training runs on the CPU only".into())),
    }
}

impl AdamW {
    pub fn new(vars: Vec<OptParam>, config: AdamWConfig) -> Result<Self> {
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
            let n = var.elem_count();
            let zero_mask = if keep_zeros {
                let mut mask = vec![];
                cpu_slice(var.as_tensor(), &mut |w| {
                    mask = w.iter().map(|v| *v == 0.0).collect()
                })?;
                Some(mask)
            } else {
                None
            };
            params.push(ParamState {
                name,
                var,
                external,
                lr_scale,
                decay,
                zero_mask,
                m: vec![0.0; n],
                v: vec![0.0; n],
                grad: vec![0.0; n],
            });
        }
        Ok(AdamW {
            config,
            params,
            step: 0,
        })
    }

    /// Adds this backward pass's gradients to the buffers (gradient accumulation).
    pub fn accumulate(&mut self, grads: &GradStore) -> Result<()> {
        for p in &mut self.params {
            if let Some(g) = grads.get(p.var.as_tensor()) {
                let buf = &mut p.grad;
                cpu_slice(g, &mut |gs| {
                    buf.par_chunks_mut(CHUNK)
                        .zip(gs.par_chunks(CHUNK))
                        .for_each(|(b, g)| {
                            for (b, v) in b.iter_mut().zip(g) {
                                *b += v;
                            }
                        })
                })?;
            }
        }
        Ok(())
    }

    /// The global L2 norm of the accumulated gradients.
    pub fn grad_norm(&self) -> f64 {
        self.params
            .iter()
            .map(|p| {
                p.grad
                    .iter()
                    .map(|g| (*g as f64) * (*g as f64))
                    .sum::<f64>()
            })
            .sum::<f64>()
            .sqrt()
    }

    /// One update with learning rate `lr`; gradients are divided by `scale_down` (accumulation
    /// steps) and clipped to `max_norm` (global norm, 0 = no clipping). Returns the norm before
    /// clipping and clears the buffers.
    pub fn step(&mut self, lr: f64, scale_down: f64, max_norm: f64) -> Result<f64> {
        let norm = self.grad_norm() / scale_down;
        let clip = if max_norm > 0.0 && norm > max_norm {
            max_norm / (norm + 1e-6)
        } else {
            1.0
        };
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let update = AdamUpdate {
            lr: lr as f32,
            beta1: c.beta1 as f32,
            beta2: c.beta2 as f32,
            eps: c.eps as f32,
            grad_scale: (clip / scale_down) as f32,
            bias1: 1.0 - c.beta1.powi(t) as f32,
            bias2: 1.0 - c.beta2.powi(t) as f32,
        };
        for p in &mut self.params {
            if p.var.elem_count() == 0 {
                // e.g. the query weight of a layer whose heads were all removed
                continue;
            }
            let decay = if p.decay { c.weight_decay as f32 } else { 0.0 };
            let scaled = AdamUpdate {
                lr: update.lr * p.lr_scale as f32,
                ..update
            };
            let op = ParamUpdate {
                update: &scaled,
                decay,
                state: RefCell::new(p),
            };
            let var = op.state.borrow().var.clone();
            var.as_tensor().inplace_op1(&op)?;
        }
        Ok(norm)
    }
}

#[derive(Clone, Copy)]
struct AdamUpdate {
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    grad_scale: f32,
    bias1: f32,
    bias2: f32,
}

struct ParamUpdate<'a, 'b> {
    update: &'a AdamUpdate,
    decay: f32,
    state: RefCell<&'b mut ParamState>,
}

impl InplaceOp1 for ParamUpdate<'_, '_> {
    fn name(&self) -> &'static str {
        "adamw-update"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let u = self.update;
        let mut guard = self.state.borrow_mut();
        let state: &mut ParamState = &mut guard;
        let (a, b) = match layout.contiguous_offsets() {
            Some(o) => o,
            None => candle_core::bail!("parameters must be contiguous"),
        };
        let w = match storage {
            CpuStorage::F32(w) => &mut w[a..b],
            _ => candle_core::bail!("parameters must be f32"),
        };
        let step_size = u.lr / u.bias1;
        let inv_bias2_sqrt = 1.0 / u.bias2.sqrt();
        let shrink = 1.0 - u.lr * self.decay;
        let ParamState {
            m,
            v,
            grad,
            zero_mask,
            ..
        } = state;
        let mask: Option<&[bool]> = zero_mask.as_deref();
        w.par_chunks_mut(CHUNK)
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .zip(grad.par_chunks_mut(CHUNK))
            .enumerate()
            .for_each(|(chunk, (((w, m), v), grad))| {
                for i in 0..w.len() {
                    let g = grad[i] * u.grad_scale;
                    grad[i] = 0.0;
                    let mi = u.beta1 * m[i] + (1.0 - u.beta1) * g;
                    let vi = u.beta2 * v[i] + (1.0 - u.beta2) * g * g;
                    m[i] = mi;
                    v[i] = vi;
                    w[i] = w[i] * shrink - step_size * mi / (vi.sqrt() * inv_bias2_sqrt + u.eps);
                }
                if let Some(mask) = mask {
                    let zeros = &mask[chunk * CHUNK..chunk * CHUNK + w.len()];
                    for (w, zero) in w.iter_mut().zip(zeros) {
                        if *zero {
                            *w = 0.0;
                        }
                    }
                }
            });
        Ok(())
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
        let mut opt = AdamW::new(vec![param], AdamWConfig::default()).unwrap();
        let grads = [[0.5f32, 1.0, -0.3], [0.1, 0.2, 0.4], [-0.7, 0.3, 0.2]];
        for g in &grads {
            opt.params[0].grad.copy_from_slice(g);
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
        let mut opt = AdamW::new(vec![param], AdamWConfig::default()).unwrap();
        opt.params[0].grad.copy_from_slice(&[3.0, 4.0]);
        assert!((opt.grad_norm() - 5.0).abs() < 1e-9);
        let norm = opt.step(1e-3, 2.0, 1.0).unwrap();
        assert!((norm - 2.5).abs() < 1e-9);
        assert_eq!(opt.grad_norm(), 0.0);
    }
}
