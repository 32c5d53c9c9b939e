//! Layer-wise least-squares reconstruction after structured pruning (after Kwon et al. 2022,
//! who tune the kept mask values; here the whole output linear of each sub-block is refitted,
//! which contains that as a special case).
//!
//! Logical layers are processed in order. For each sub-block (attention, then FFN) of the pruned
//! layer, with Z the activations of the units it kept ([heads' context] or [neuron activations],
//! computed by the pruned model from the pruned model's own input x′, earlier layers already
//! refitted) and the target the original layer's pre-LayerNorm sum s = W·a + b + x (on the
//! original model's own input x), the output linear (W′, b′) solves
//!
//!   min ‖Z·W′ᵀ + 1·b′ᵀ − (s − x′)‖² + λ‖W′ − W₀‖²,   λ = damp · mean diag(ZᵀZ),
//!
//! over the real tokens of the calibration sentences: matching s makes the LayerNorm's input,
//! hence the layer's output, that of the original model, and it also absorbs the error that
//! earlier pruned layers pass on through the residual. The ridge term pulls W′ towards the kept
//! columns W₀ of the original weight (the bias is not regularised), so directions the calibration
//! data barely excites keep their original weights. Solved in f64 by Cholesky of
//! [ZᵀZ + λI, Zᵀ1; 1ᵀZ, n] (λ grown tenfold if it is not positive definite).
//!
//! Not refitted (reported): output linears that are low-rank or sparse (a refit would change
//! their structure) and stored layers that several logical layers share (one weight cannot match
//! several targets layer by layer).

use std::time::Instant;

use candle_core::{DType, Tensor};
use faer::linalg::solvers::Solve;
use faer::Mat;

use super::calibrate::Calibrator;
use super::layer_inputs::LayerInputs;
use super::unit_scores::effective_weight;
use crate::arch::{Arch, Key, LinearKind, LinearPart, LinearSlot};
use crate::cuts::shared::linalg::{to_mat, to_tensor};
use crate::error::{Error, Result};
use crate::io::Checkpoint;
use crate::model::Params;

/// What the reconstruction did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub sentences: usize,
    pub tokens: usize,
    pub seconds: f64,
    /// Per refitted sub-block: layer, block, units kept, relative calibration error of the
    /// pre-LayerNorm sum before and after the refit.
    pub blocks: Vec<serde_json::Value>,
    /// Sub-blocks left as pruned, and why.
    pub skipped: Vec<String>,
    pub note: Option<String>,
}

/// The two sub-blocks of a layer: the linear whose output is refitted.
const BLOCKS: [(&str, LinearSlot); 2] = [
    ("attention", LinearSlot::AttentionOutput),
    ("ffn", LinearSlot::Output),
];

/// Why a sub-block of stored layer `stored` cannot be refitted, if it cannot.
fn refit_blocker(arch: &Arch, stored: usize, slot: LinearSlot) -> Option<String> {
    let uses = arch.layer_map.iter().filter(|&&s| s == stored).count();
    if uses > 1 {
        return Some(format!("shared by {uses} layers"));
    }
    match arch.layers[stored].linear(slot) {
        LinearKind::Dense => None,
        other => Some(format!(
            "{} is {}",
            slot.as_str(),
            crate::budget::describe_linear(other)
        )),
    }
}

/// Refits the output linears of `pruned` (made from the calibrator's original by removing units)
/// on the calibrator's calibration sentences; returns the refitted checkpoint.
pub fn reconstruct(
    calibrator: &Calibrator,
    pruned: &Checkpoint,
    damp: f64,
) -> Result<(Checkpoint, Report)> {
    let start = Instant::now();
    let original = calibrator.original();
    let sentences = calibrator.calib("the reconstruction")?;
    let orig_model = calibrator.frozen(original)?;
    let (params, model) = calibrator.variables(pruned)?;
    let mut xo = LayerInputs::new(sentences, &orig_model)?;
    let mut xp = LayerInputs::new(sentences, &model)?;
    let arch = &pruned.arch;
    let mut blocks = vec![];
    let mut skipped = vec![];
    let progress =
        crate::util::progress::Progress::new("reconstruction", arch.num_layers() as u64, "layers");
    for logical in 0..arch.num_layers() {
        progress.inc(1);
        let stored = arch.layer_map[logical];
        // Targets: the original layer's two pre-LayerNorm sums on its own inputs.
        let mut targets: [Vec<Tensor>; 2] = [vec![], vec![]];
        for ((x, batch), rows) in xo.xs.iter().zip(&xo.batches).zip(&xo.real_rows) {
            let (_, inputs) = orig_model.run_layer(logical, x, &batch.batch, true)?;
            let inputs = inputs.expect("captured");
            let o = original.arch.layer_map[logical];
            targets[0].push(pre_norm_sum(
                original,
                o,
                LinearSlot::AttentionOutput,
                inputs.context.as_ref(),
                &inputs.attention,
                rows,
            )?);
            targets[1].push(pre_norm_sum(
                original,
                o,
                LinearSlot::Output,
                Some(&inputs.ffn_activation),
                &inputs.ffn,
                rows,
            )?);
        }
        for (block, ((name, slot), targets)) in BLOCKS.iter().zip(&targets).enumerate() {
            if let Some(why) = refit_blocker(arch, stored, *slot) {
                skipped.push(format!("layer {logical} {name}: {why}"));
                continue;
            }
            let mut system = Normal::default();
            for (((x, batch), rows), target) in xp
                .xs
                .iter()
                .zip(&xp.batches)
                .zip(&xp.real_rows)
                .zip(targets)
            {
                let (_, inputs) = model.run_layer(logical, x, &batch.batch, true)?;
                let inputs = inputs.expect("captured");
                let (z, residual) = match block {
                    0 => (inputs.context, inputs.attention),
                    _ => (Some(inputs.ffn_activation), inputs.ffn),
                };
                let z = z.map(|z| z.index_select(rows, 0)).transpose()?;
                let r = (target - residual.index_select(rows, 0)?)?;
                system.add(z.as_ref(), &r)?;
            }
            let key = |part| Key::Linear {
                layer: stored,
                slot: *slot,
                part,
            };
            let w = params.get(key(LinearPart::Weight));
            let b = params.get(key(LinearPart::Bias));
            let (new_w, new_b, before, after) =
                system.solve(&w, &b, damp).map_err(|e| match e {
                    Error::Spec(msg) => Error::Spec(format!(
                        "refitting `{}`: {msg}",
                        key(LinearPart::Weight).name(arch.layout)
                    )),
                    other => other,
                })?;
            // Solved on the host; the model may live on another device.
            var_of(&params, key(LinearPart::Weight)).set(&new_w.to_device(w.device())?)?;
            var_of(&params, key(LinearPart::Bias)).set(&new_b.to_device(b.device())?)?;
            blocks.push(serde_json::json!({
                "layer": logical, "block": name, "units": w.dims2()?.1 / if block == 0 { arch.head_dim } else { 1 },
                "relative_error_before": before, "relative_error_after": after,
            }));
        }
        xo.advance(&orig_model, logical)?;
        xp.advance(&model, logical)?;
    }
    let mut out = pruned.clone();
    params.store_into(&mut out)?;
    Ok((
        out,
        Report {
            sentences: xp.sentences,
            tokens: xp.tokens,
            seconds: start.elapsed().as_secs_f64(),
            blocks,
            skipped,
            note: sentences.note.clone(),
        },
    ))
}

fn var_of(params: &Params, key: Key) -> &candle_core::Var {
    params
        .vars()
        .find(|(k, _)| **k == key)
        .map(|(_, v)| v)
        .expect("parameter loaded")
}

/// W·a + b + x on the real rows: the input of a sub-block's LayerNorm (`a` is None for a layer
/// without heads, whose attention adds only its bias).
fn pre_norm_sum(
    ckpt: &Checkpoint,
    stored: usize,
    slot: LinearSlot,
    a: Option<&Tensor>,
    x: &Tensor,
    rows: &Tensor,
) -> Result<Tensor> {
    let bias = crate::cuts::cpu(
        ckpt,
        Key::Linear {
            layer: stored,
            slot,
            part: LinearPart::Bias,
        },
    )?
    .to_device(x.device())?;
    let x = x.index_select(rows, 0)?;
    let mut sum = x.broadcast_add(&bias)?;
    if let Some(a) = a.filter(|a| a.dims2().map_or(false, |(_, k)| k > 0)) {
        let w = effective_weight(ckpt, stored, slot)?.to_device(x.device())?;
        sum = (sum + a.index_select(rows, 0)?.matmul(&w.t()?)?)?;
    }
    Ok(sum)
}

/// The normal equations of one sub-block's least-squares problem, accumulated in f64:
/// [Z 1]ᵀ[Z 1] and [Z 1]ᵀR, and ‖R‖² for the relative error.
#[derive(Default)]
struct Normal {
    gram: Option<Tensor>,
    cross: Option<Tensor>,
    target_sq: f64,
}

impl Normal {
    fn add(&mut self, z: Option<&Tensor>, r: &Tensor) -> Result<()> {
        let (n, _) = r.dims2()?;
        let ones = Tensor::ones((n, 1), DType::F32, r.device())?;
        let za = match z {
            Some(z) if z.dims2()?.1 > 0 => Tensor::cat(&[z, &ones], 1)?,
            _ => ones,
        };
        let g = za.t()?.matmul(&za)?.to_dtype(DType::F64)?;
        let c = za.t()?.matmul(r)?.to_dtype(DType::F64)?;
        self.target_sq += r
            .sqr()?
            .sum_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        self.gram = Some(match self.gram.take() {
            Some(acc) => (acc + g)?,
            None => g,
        });
        self.cross = Some(match self.cross.take() {
            Some(acc) => (acc + c)?,
            None => c,
        });
        Ok(())
    }

    /// The refitted weight [H, k] and bias [H], and the relative error ‖ZW′ᵀ+b′−R‖²/‖R‖² of
    /// the old and new weights on the accumulated data.
    fn solve(&self, w: &Tensor, b: &Tensor, damp: f64) -> Result<(Tensor, Tensor, f64, f64)> {
        let (Some(gram), Some(cross)) = (&self.gram, &self.cross) else {
            return Err(Error::Spec("no calibration tokens to refit on".into()));
        };
        let (g, c) = (mat64(gram)?, mat64(cross)?);
        let (h, k) = w.dims2()?;
        // Θ₀ = [W₀ᵀ; b₀ᵀ], (k+1) × H.
        let w0 = to_mat(&w.t()?.contiguous()?)?;
        let b0 = b.to_vec1::<f32>()?;
        let theta0 = Mat::from_fn(
            k + 1,
            h,
            |i, j| if i < k { w0[(i, j)] } else { b0[j] as f64 },
        );
        let mean_diag = if k > 0 {
            (0..k).map(|i| g[(i, i)]).sum::<f64>() / k as f64
        } else {
            0.0
        };
        let mut lambda = damp.max(0.0) * mean_diag;
        let theta =
            loop {
                let a = Mat::from_fn(k + 1, k + 1, |i, j| {
                    g[(i, j)] + if i == j && i < k { lambda } else { 0.0 }
                });
                let mut rhs = Mat::from_fn(k + 1, h, |i, j| {
                    c[(i, j)] + if i < k { lambda * theta0[(i, j)] } else { 0.0 }
                });
                match a.llt(faer::Side::Lower) {
                    Ok(llt) => {
                        llt.solve_in_place(rhs.as_mut());
                        break rhs;
                    }
                    Err(_) if lambda < 1e6 * mean_diag.max(1e-12) => {
                        lambda = (lambda * 10.0).max(1e-6 * mean_diag.max(1e-12));
                    }
                    Err(_) => return Err(Error::Spec(
                        "reconstruction: the calibration Gram matrix is singular even with damping"
                            .into(),
                    )),
                }
            };
        // ‖[Z 1]Θ − R‖² = ΘᵀGΘ − 2ΘᵀC + ‖R‖² (trace form).
        let error = |t: &Mat<f64>| -> f64 {
            let gt = &g * t;
            let mut e = self.target_sq;
            for i in 0..k + 1 {
                for j in 0..h {
                    e += t[(i, j)] * gt[(i, j)] - 2.0 * t[(i, j)] * c[(i, j)];
                }
            }
            e.max(0.0) / self.target_sq.max(1e-30)
        };
        let (before, after) = (error(&theta0), error(&theta));
        if theta.col_iter().any(|c| c.iter().any(|v| !v.is_finite())) {
            return Err(Error::Spec(
                "reconstruction produced non-finite weights".into(),
            ));
        }
        let new_w = to_tensor(theta.subrows(0, k).transpose())?;
        let new_b = to_tensor(theta.subrows(k, 1))?.flatten_all()?;
        Ok((new_w.contiguous()?, new_b, before, after))
    }
}

/// An f64 tensor as a matrix (no rounding through f32).
fn mat64(t: &Tensor) -> Result<Mat<f64>> {
    let v = t.to_vec2::<f64>()?;
    let cols = v.first().map_or(0, Vec::len);
    Ok(Mat::from_fn(v.len(), cols, |i, j| v[i][j]))
}
