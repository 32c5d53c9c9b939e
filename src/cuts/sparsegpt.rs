//! sparsegpt: one-shot pruning of every encoder linear with OBS weight updates, layer by layer:
//! the inputs of layer l are computed by the already-pruned layers before it; the Hessian of a
//! linear is H = 2·XᵀX/n over the real (non-pad) calibration tokens (n = their count; the scale
//! cancels in the updates and the damping is relative); query, key and value share one. The
//! classifier and the embeddings stay dense. `--method magnitude` is the no-update baseline.

use std::time::Instant;

use candle_core::{DType, Tensor};
use faer::Mat;
use serde::{Deserialize, Serialize};

use super::shared::calibrate::{self, Calib, CalibOptions, Calibrator, Input, Tags};
use super::shared::layer_inputs::LayerInputs;
use super::shared::obs::{magnitude, sparsegpt, Pattern, Solver};
use super::shared::sparse_pattern::{parse_pattern, sparse_arch};
use super::Surgery;
use super::{Outcome, Planned};
use crate::arch::{Arch, Key, LinearPart, LinearSlot};
use crate::error::{Error, Result};
use crate::io::Checkpoint;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// OBS updates of the remaining weights (SparseGPT).
    #[default]
    Sparsegpt,
    /// Zero the smallest weights, no updates (baseline).
    Magnitude,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, clap::Args)]
#[serde(deny_unknown_fields)]
#[command(mut_args(calibrate::defaults(Calib::Required, "256", "256")))]
pub struct Spec {
    /// Fraction of each linear's weights to remove, in (0, 1).
    #[arg(long, conflicts_with = "pattern", required_unless_present = "pattern", value_parser = crate::util::options::open_fraction)]
    pub sparsity: Option<f64>,
    /// N:M semi-structured sparsity, e.g. 2:4 (N zeros in every M inputs).
    #[arg(long)]
    pub pattern: Option<String>,
    /// Columns per block.
    #[arg(long, default_value_t = 128, value_parser = crate::util::options::positive)]
    pub block: usize,
    #[arg(long, value_enum, default_value_t = Method::Sparsegpt)]
    pub method: Method,
    // The calibration sentences; the held-out ones measure each linear's relative output
    // error as well.
    #[command(flatten)]
    pub calibration: CalibOptions,
}

impl Spec {
    fn pattern(&self) -> Result<Pattern> {
        parse_pattern(self.sparsity, self.pattern.as_deref())
    }
}

fn gram_to_hessian(g: &Tensor, tokens: usize) -> Result<Mat<f64>> {
    let (d, _) = g.dims2()?;
    let v = g.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let scale = 2.0 / tokens.max(1) as f64;
    Ok(Mat::from_fn(d, d, |i, j| v[i * d + j] * scale))
}

/// Relative output error ‖(W − Ŵ)X‖ / ‖WX‖ through the Hessian: √(tr(ΔHΔᵀ) / tr(WHWᵀ)).
fn relative_output_error(w: &[f64], pruned: &[f64], rows: usize, cols: usize, h: &Mat<f64>) -> f64 {
    let quad = |m: &[f64]| -> f64 {
        let a = Mat::from_fn(rows, cols, |r, c| m[r * cols + c]);
        let p: Mat<f64> = &a * h;
        (0..rows)
            .map(|r| (0..cols).map(|c| p[(r, c)] * a[(r, c)]).sum::<f64>())
            .sum()
    };
    let delta: Vec<f64> = w.iter().zip(pruned).map(|(a, b)| a - b).collect();
    (quad(&delta) / quad(w).max(1e-30)).sqrt()
}

/// The architecture after pruning: every encoder linear marked sparse (the unique parameter
/// count does not change; the pruned weights are stored as zeros).
pub fn plan(arch: &Arch, spec: &Spec) -> Result<Arch> {
    sparse_arch(arch, spec.pattern()?)
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

pub fn apply(ckpt: &Checkpoint, spec: &Spec) -> Result<Outcome> {
    let started = Instant::now();
    let new_arch = plan(&ckpt.arch, spec)?;
    let pattern = spec.pattern()?;
    let calibrator = Calibrator::open(ckpt, &spec.calibration, Some(Tags::Ignored))?;
    let device = calibrator.device().clone();
    let (params, model) = calibrator.variables(ckpt)?;
    let mut calib = LayerInputs::new(calibrator.calib("sparsegpt")?, &model)?;
    let mut heldout = calibrator
        .heldout()
        .map(|h| LayerInputs::new(h, &model))
        .transpose()?;
    let (mut forward_s, mut solve_s) = (0.0, 0.0);
    let mut done = vec![false; ckpt.arch.layers.len()];
    let mut details = vec![];
    let progress = crate::util::progress::Progress::new(
        match spec.method {
            Method::Sparsegpt => "sparsegpt: Hessians and OBS updates",
            Method::Magnitude => "magnitude: layer inputs",
        },
        ckpt.arch.layers.len() as u64,
        "layers",
    );
    for logical in 0..ckpt.arch.num_layers() {
        let stored = ckpt.arch.layer_map[logical];
        if !done[stored] {
            done[stored] = true;
            let t0 = Instant::now();
            let grams = calib.grams(&model, logical)?;
            let heldout_grams = heldout
                .as_ref()
                .map(|h| h.grams(&model, logical))
                .transpose()?;
            forward_s += t0.elapsed().as_secs_f64();
            let t1 = Instant::now();
            for slot in LinearSlot::ALL {
                let (rows_n, cols) = ckpt.arch.linear_shape(stored, slot);
                let Some(Some(gram)) = grams.get(&Input::of(slot)) else {
                    continue;
                };
                if rows_n == 0 || cols == 0 {
                    continue;
                }
                let hessian = gram_to_hessian(gram, calib.tokens)?;
                let key = Key::Linear {
                    layer: stored,
                    slot,
                    part: LinearPart::Weight,
                };
                let (_, var) = params
                    .vars()
                    .find(|(k, _)| **k == key)
                    .expect("weight loaded");
                let original: Vec<f64> = var
                    .as_tensor()
                    .to_dtype(DType::F64)?
                    .flatten_all()?
                    .to_vec1::<f64>()?;
                let mut w = original.clone();
                let stats = match spec.method {
                    Method::Sparsegpt => sparsegpt(
                        &mut w,
                        rows_n,
                        cols,
                        &hessian,
                        pattern,
                        Solver {
                            block: spec.block,
                            damp: spec.calibration.damping(),
                        },
                    )
                    .map_err(|e| Error::Spec(format!("`{}`: {e}", key.name(ckpt.arch.layout))))?,
                    Method::Magnitude => {
                        magnitude(&mut w, rows_n, cols, pattern);
                        Default::default()
                    }
                };
                if w.iter().any(|v| !v.is_finite()) {
                    return Err(Error::Spec(format!(
                        "layer {stored} {}: pruning produced non-finite weights",
                        slot.as_str()
                    )));
                }
                let error = relative_output_error(&original, &w, rows_n, cols, &hessian);
                let mut detail = serde_json::json!({
                    "layer": stored, "linear": slot.as_str(), "relative_output_error": error,
                    "damp": stats.damp, "dead_inputs": stats.dead_inputs,
                });
                let heldout_gram = heldout_grams.as_ref().and_then(|g| g.get(&Input::of(slot)));
                if let (Some(Some(g)), Some(h)) = (heldout_gram, &heldout) {
                    let h_hessian = gram_to_hessian(g, h.tokens)?;
                    detail["heldout_relative_output_error"] =
                        relative_output_error(&original, &w, rows_n, cols, &h_hessian).into();
                }
                var.set(&Tensor::from_vec(w, (rows_n, cols), &device)?.to_dtype(DType::F32)?)?;
                details.push(detail);
            }
            solve_s += t1.elapsed().as_secs_f64();
            progress.inc(1);
        }
        let t2 = Instant::now();
        calib.advance(&model, logical)?;
        if let Some(h) = &mut heldout {
            h.advance(&model, logical)?;
        }
        forward_s += t2.elapsed().as_secs_f64();
    }
    progress.finish();
    let mut out = ckpt.clone();
    params.store_into(&mut out)?;
    out.set_arch(new_arch)?;
    let errors =
        |field: &str| -> Vec<f64> { details.iter().filter_map(|d| d[field].as_f64()).collect() };
    let mut report = serde_json::json!({
        "method": spec.method,
        "pattern": pattern,
        "calibration_sentences": calib.sentences,
        "calibration_tokens": calib.tokens,
        "mean_relative_output_error": mean(&errors("relative_output_error")),
        "seconds": started.elapsed().as_secs_f64(),
        "seconds_forward": forward_s,
        "seconds_solve": solve_s,
        "details": details,
    });
    if let Some(h) = &heldout {
        report["heldout_sentences"] = h.sentences.into();
        report["heldout_tokens"] = h.tokens.into();
        report["mean_heldout_relative_output_error"] =
            mean(&errors("heldout_relative_output_error")).into();
    }
    if let Some(note) = &calibrator.calib("sparsegpt")?.note {
        report["note"] = note.clone().into();
    }
    Ok(Outcome::new(ckpt, out, Spec::NAME, spec, report))
}

impl Surgery for Spec {
    const NAME: &'static str = "sparsegpt";
    const ABOUT: &'static str =
        "One-shot pruning with Hessian-based OBS updates (unstructured or N:M)";
    const EXAMPLE: &'static [&'static str] = &[
        "--sparsity",
        "0.5",
        "--calib",
        "{calib}",
        "--calib-sentences",
        "8",
    ];

    fn reads(&self) -> Vec<&std::path::Path> {
        self.calibration.reads()
    }

    fn plan(&self, arch: &Arch) -> Result<Planned> {
        plan(arch, self).map(Planned::Exact)
    }

    fn apply(&self, ckpt: &Checkpoint) -> Result<Outcome> {
        apply(ckpt, self)
    }
}
