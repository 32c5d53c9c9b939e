//! lowrank-layers: each selected encoder linear W (out×in) becomes up (out×r) · down (r×in) + bias.
//! The factors are balanced (U√Σ and √Σ Vᵀ) so recovery training moves both at a sensible scale.
//! `svd` keeps the best rank-r approximation of W itself; `whiten` (SVD-LLM, Wang et al. 2024)
//! keeps the best rank-r approximation of W·X on calibration inputs: with C = XᵀX = L·Lᵀ
//! (Cholesky), it truncates the SVD of W·L and maps back through L⁻¹, so directions the data
//! never excites cost nothing.

use std::collections::BTreeSet;

use faer::{Mat, Par};
use serde::{Deserialize, Serialize};

use super::Surgery;
use super::{cpu, Outcome, Planned};
use crate::arch::{Arch, Key, LinearKind, LinearPart, LinearSlot};
use crate::budget::{parse_count, Budget};
use crate::cuts::shared::calibrate::{
    self, Calib, CalibOptions, Calibration, Calibrator, Input, Tags,
};
use crate::cuts::shared::layer_inputs::heldout_errors;
use crate::cuts::shared::linalg::{energy, to_mat, to_tensor, truncated_svd};
use crate::error::{Error, Result};
use crate::io::Checkpoint;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Plain truncated SVD of the weights.
    #[default]
    Svd,
    /// Activation-aware: SVD of W·L with L the Cholesky factor of the calibration inputs' XᵀX.
    Whiten,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, clap::Args)]
#[serde(deny_unknown_fields)]
#[command(mut_args(calibrate::defaults(Calib::Optional, "256", "512")))]
pub struct Spec {
    /// The same rank for every selected linear.
    #[arg(long, conflicts_with_all = ["energy", "params_target"], required_unless_present_any = ["energy", "params_target"], value_parser = crate::util::options::positive)]
    pub rank: Option<usize>,
    /// Per linear, the smallest rank keeping this share of the (weighted) spectrum's energy.
    #[arg(long, conflicts_with = "params_target", value_parser = crate::util::options::fraction_above_zero)]
    pub energy: Option<f64>,
    /// A unique-parameter target for the whole model (e.g. 15M); one rank ratio for all linears.
    #[arg(long)]
    pub params_target: Option<String>,
    /// Linears to factorize.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "query,key,value,attention-output,intermediate,output"
    )]
    pub modules: Vec<String>,
    /// Logical layers to touch (default: all).
    #[arg(long, value_delimiter = ',')]
    pub layers: Option<Vec<usize>>,
    #[arg(long, value_enum, default_value_t = Method::Svd)]
    pub method: Method,
    // The calibration sentences: needed by `whiten` (whose Cholesky factor `--damp` damps);
    // the held-out ones measure each layer's output error against the uncut model.
    #[command(flatten)]
    pub calibration: CalibOptions,
}

/// One selected linear: where it is and its out × in shape.
#[derive(Clone, Copy)]
struct Shape {
    layer: usize,
    slot: LinearSlot,
    out: usize,
    inp: usize,
}

impl Shape {
    /// Ranks below this save parameters.
    fn break_even(&self) -> usize {
        self.out * self.inp / (self.out + self.inp)
    }
}

/// One linear to factorize, with its spectrum.
struct Target {
    shape: Shape,
    /// Left factor (UΣ), right factor (V), singular values of W (svd) or W·L (whiten).
    left: Mat<f64>,
    right: Mat<f64>,
    singular: Vec<f64>,
    /// The Cholesky factor of the calibration Gram (whiten only).
    chol: Option<Mat<f64>>,
}

fn selected(arch: &Arch, spec: &Spec) -> Result<Vec<Shape>> {
    let slots = spec
        .modules
        .iter()
        .map(|m| {
            LinearSlot::parse(m).ok_or_else(|| {
                Error::Spec(format!("--modules: unknown linear `{m}` (query, key, value, attention-output, intermediate, output)"))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let n = arch.num_layers();
    let logical: Vec<usize> = spec.layers.clone().unwrap_or_else(|| (0..n).collect());
    let mut stored = BTreeSet::new();
    for l in logical {
        if l >= n {
            return Err(Error::Spec(format!(
                "--layers: layer {l} does not exist (the model has {n})"
            )));
        }
        stored.insert(arch.layer_map[l]);
    }
    let mut out = vec![];
    for layer in stored {
        for &slot in &slots {
            match arch.layers[layer].linear(slot) {
                LinearKind::Dense => {}
                other => {
                    return Err(Error::Spec(format!(
                        "layer {layer} {} is already {}; low-rank applies to dense linears",
                        slot.as_str(),
                        crate::budget::describe_linear(other)
                    )))
                }
            }
            let (rows, cols) = arch.linear_shape(layer, slot);
            if rows > 0 && cols > 0 {
                out.push(Shape {
                    layer,
                    slot,
                    out: rows,
                    inp: cols,
                });
            }
        }
    }
    Ok(out)
}

fn damped_cholesky(gram: &Mat<f64>, damp: f64) -> Result<Mat<f64>> {
    let d = gram.nrows();
    let mean_diag = (0..d).map(|i| gram[(i, i)]).sum::<f64>() / d as f64;
    let mut damp = damp.max(1e-6);
    for _ in 0..8 {
        let c = Mat::from_fn(d, d, |i, j| {
            gram[(i, j)]
                + if i == j {
                    damp * mean_diag.max(1e-12)
                } else {
                    0.0
                }
        });
        if let Ok(llt) = c.llt(faer::Side::Lower) {
            return Ok(llt.L().to_owned());
        }
        damp *= 10.0;
    }
    Err(Error::Spec(
        "the calibration Gram matrix is not positive definite even with damping".into(),
    ))
}

fn decompose(
    ckpt: &Checkpoint,
    spec: &Spec,
    calib: Option<&Calibration>,
    shape: Shape,
) -> Result<Target> {
    let Shape {
        layer,
        slot,
        out,
        inp,
    } = shape;
    let key = Key::Linear {
        layer,
        slot,
        part: LinearPart::Weight,
    };
    let name = format!("`{}`", key.name(ckpt.arch.layout));
    let w = to_mat(&cpu(ckpt, key)?)?;
    let full = out.min(inp);
    let (matrix, chol) = match spec.method {
        Method::Svd => (w, None),
        Method::Whiten => {
            let gram = calib
                .and_then(|c| c.grams.get(&(layer, Input::of(slot))))
                .ok_or_else(|| {
                    // apply() requires --calib for whiten, and every selected linear has inputs.
                    Error::Internal(format!(
                        "no calibration statistics for layer {layer} {}",
                        slot.as_str()
                    ))
                })?;
            // The mean XᵀX/n (not the sum) keeps L at the scale of the activations, so the
            // factors stay at the scale of ordinary weights.
            let tokens = calib.map_or(1, |c| c.tokens.max(1)) as f64;
            let mean = Mat::from_fn(gram.nrows(), gram.ncols(), |i, j| gram[(i, j)] / tokens);
            let l = damped_cholesky(&mean, spec.calibration.damping()).map_err(|e| {
                Error::Spec(format!("whitening {name} (stored layer {layer}): {e}"))
            })?;
            (&w * &l, Some(l))
        }
    };
    let what = match chol {
        Some(_) => format!("{name} times the Cholesky factor of its calibration inputs"),
        None => name,
    };
    let svd = truncated_svd(matrix.as_ref(), full, &what)?;
    Ok(Target {
        shape,
        left: svd.left,
        right: svd.right,
        singular: svd.singular_values,
        chol,
    })
}

/// Ranks fixed by the structure alone (`--rank`, `--params-target`); None for `--energy`, whose
/// ranks depend on the spectra.
fn structural_ranks(
    arch: &Arch,
    shapes: &[Shape],
    spec: &Spec,
) -> Result<Option<Vec<Option<usize>>>> {
    let keep_if_saving = |t: &Shape, r: usize| (r < t.break_even()).then_some(r.max(1));
    if let Some(r) = spec.rank {
        for t in shapes {
            if r == 0 || r >= t.break_even() {
                return Err(Error::Spec(format!(
                    "--rank {r}: a {}×{} linear saves parameters only below rank {}",
                    t.out,
                    t.inp,
                    t.break_even()
                )));
            }
        }
        return Ok(Some(shapes.iter().map(|_| Some(r)).collect()));
    }
    if let Some(e) = spec.energy {
        if !(0.0..=1.0).contains(&e) || e == 0.0 {
            return Err(Error::Spec(format!("--energy {e}: must be in (0, 1]")));
        }
        return Ok(None);
    }
    // The command line requires one target; a spec built otherwise may have none.
    let Some(text) = spec.params_target.as_deref() else {
        return Err(Error::Spec(
            "lowrank-layers: give --rank, --energy or --params-target".into(),
        ));
    };
    let goal = parse_count(text).map_err(Error::Spec)?;
    let now = Budget::of_arch(arch).unique;
    if goal >= now {
        return Err(Error::Spec(format!(
            "--params-target {text}: the model already has {now} unique parameters, no more than the target; nothing to factorize"
        )));
    }
    let ranks_at = |ratio: f64| -> Vec<Option<usize>> {
        shapes
            .iter()
            .map(|t| keep_if_saving(t, ((t.break_even() as f64) * ratio).floor() as usize))
            .collect()
    };
    let count = |ranks: &[Option<usize>]| Budget::of_arch(&with_ranks(arch, shapes, ranks)).unique;
    let smallest = count(&shapes.iter().map(|_| Some(1)).collect::<Vec<_>>());
    if smallest > goal {
        return Err(Error::Spec(format!(
            "--params-target {text}: even rank 1 everywhere leaves {smallest} unique parameters"
        )));
    }
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    for _ in 0..40 {
        let mid = (lo + hi) / 2.0;
        if count(&ranks_at(mid)) <= goal {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let ranks = ranks_at(lo);
    Ok(Some(if ranks.iter().all(|r| r.is_none()) {
        shapes.iter().map(|_| Some(1)).collect()
    } else {
        ranks
    }))
}

/// The smallest rank per target that keeps `--energy` of its spectrum (dense if none saves).
fn energy_ranks(targets: &[Target], e: f64) -> Vec<Option<usize>> {
    targets
        .iter()
        .map(|t| {
            let r = (1..=t.singular.len())
                .find(|&r| energy(&t.singular, r) >= e)
                .unwrap_or(t.singular.len());
            (r < t.shape.break_even()).then_some(r.max(1))
        })
        .collect()
}

/// The architecture after the cut; unknown for `--energy` (the ranks depend on the weights).
pub fn plan(arch: &Arch, spec: &Spec) -> Result<Planned> {
    let shapes = selected(arch, spec)?;
    if shapes.is_empty() {
        return Err(Error::Spec("no linear selected".into()));
    }
    Ok(match structural_ranks(arch, &shapes, spec)? {
        Some(ranks) => Planned::Exact(with_ranks(arch, &shapes, &ranks)),
        None => Planned::Unknown("--energy: the ranks depend on the weights' spectra".into()),
    })
}

fn with_ranks(arch: &Arch, shapes: &[Shape], ranks: &[Option<usize>]) -> Arch {
    let mut arch = arch.clone();
    for (t, r) in shapes.iter().zip(ranks) {
        if let Some(rank) = r {
            arch.layers[t.layer]
                .linears
                .insert(t.slot, LinearKind::LowRank { rank: *rank });
        }
    }
    arch
}

pub fn apply(ckpt: &Checkpoint, spec: &Spec) -> Result<Outcome> {
    let start = std::time::Instant::now();
    let selection = selected(&ckpt.arch, spec)?;
    if selection.is_empty() {
        return Err(Error::Spec("no linear selected".into()));
    }
    let calibrator = Calibrator::open(ckpt, &spec.calibration, Some(Tags::Ignored))?;
    let calib = match &spec.calibration.calib {
        Some(_) => Some(calibrator.grams("lowrank-layers")?),
        None if spec.method == Method::Whiten => {
            return Err(Error::Spec("--method whiten needs --calib FILE".into()))
        }
        None => None,
    };
    let progress = crate::util::progress::Progress::new("svd", selection.len() as u64, "linears");
    let targets = selection
        .iter()
        .map(|&shape| {
            let target = decompose(ckpt, spec, calib.as_ref(), shape);
            progress.inc(1);
            target
        })
        .collect::<Result<Vec<_>>>()?;
    progress.finish();
    let ranks = match structural_ranks(&ckpt.arch, &selection, spec)? {
        Some(ranks) => ranks,
        None => {
            let energy = spec.energy.ok_or_else(|| {
                Error::Internal("only --energy leaves the ranks to the spectra".into())
            })?;
            energy_ranks(&targets, energy)
        }
    };
    let mut out = ckpt.clone();
    let mut details = vec![];
    for (t, rank) in targets.iter().zip(&ranks) {
        let Some(r) = *rank else {
            details.push(serde_json::json!({"layer": t.shape.layer, "linear": t.shape.slot.as_str(), "kept": "dense"}));
            continue;
        };
        // Balanced split: up = U√Σ, down = √Σ Vᵀ (· L⁻¹), so neither factor is orders of magnitude
        // smaller than the other — AdamW takes steps of the same absolute size on both, and an
        // unbalanced pair (UΣ, Vᵀ) lost F1 during recovery fine-tuning.
        let root: Vec<f64> = t.singular[..r]
            .iter()
            .map(|s| s.max(1e-12).sqrt())
            .collect();
        let up = Mat::from_fn(t.shape.out, r, |i, k| t.left[(i, k)] / root[k]);
        let mut v = Mat::from_fn(t.shape.inp, r, |j, k| t.right[(j, k)] * root[k]);
        if let Some(l) = &t.chol {
            // down = V_rᵀ L⁻¹: solve Lᵀ Z = V_r, then down = Zᵀ.
            faer::linalg::triangular_solve::solve_upper_triangular_in_place(
                l.transpose(),
                v.as_mut(),
                Par::Seq,
            );
        }
        let key = |part| Key::Linear {
            layer: t.shape.layer,
            slot: t.shape.slot,
            part,
        };
        out.set_tensor(key(LinearPart::Up), to_tensor(up.as_ref())?);
        out.set_tensor(key(LinearPart::Down), to_tensor(v.transpose())?);
        details.push(serde_json::json!({
            "layer": t.shape.layer, "linear": t.shape.slot.as_str(), "rank": r,
            "retained_energy": energy(&t.singular, r),
        }));
    }
    let arch = with_ranks(&ckpt.arch, &selection, &ranks);
    out.set_arch(arch)?;
    let mut report = serde_json::json!({
        "method": spec.method,
        "linears": details.len(),
        "mean_retained_energy": details.iter().filter_map(|d| d["retained_energy"].as_f64()).sum::<f64>()
            / details.iter().filter(|d| d["retained_energy"].is_f64()).count().max(1) as f64,
        "seconds": start.elapsed().as_secs_f64(),
        "details": details,
    });
    if let Some(c) = &calib {
        report["calibration_sentences"] = c.sentences.into();
        report["calibration_tokens"] = c.tokens.into();
        if let Some(note) = &c.note {
            report["note"] = note.clone().into();
        }
    }
    if let Some(errors) = heldout_errors(&calibrator, &[&out])? {
        report["heldout_layer_error"] = errors[0].clone().into();
    }
    Ok(Outcome::new(ckpt, out, Spec::NAME, spec, report))
}

impl Surgery for Spec {
    const NAME: &'static str = "lowrank-layers";
    const ABOUT: &'static str =
        "Factorize encoder linears into two low-rank factors (plain or activation-aware SVD)";
    const EXAMPLE: &'static [&'static str] = &["--rank", "3"];

    fn reads(&self) -> Vec<&std::path::Path> {
        self.calibration.reads()
    }

    fn plan(&self, arch: &Arch) -> Result<Planned> {
        plan(arch, self)
    }

    fn apply(&self, ckpt: &Checkpoint) -> Result<Outcome> {
        apply(ckpt, self)
    }
}
