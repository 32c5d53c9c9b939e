//! sparsegpt: one-shot pruning of every encoder linear with OBS weight updates, layer by layer:
//! the inputs of layer l are computed by the already-pruned layers before it; the Hessian of a
//! linear is H = 2·XᵀX/n over the real (non-pad) calibration tokens (n = their count; the scale
//! cancels in the updates and the damping is relative); query, key and value share one. The
//! classifier and the embeddings stay dense. `--method magnitude` is the no-update baseline.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Tensor};
use faer::Mat;
use serde::{Deserialize, Serialize};

use super::obs::{magnitude, sparsegpt, Pattern, Solver};
use super::Surgery;
use super::{Outcome, Planned};
use crate::arch::{Arch, Key, LinearKind, LinearPart, LinearSlot, SparsePattern};
use crate::cuts::calibrate::Input;
use crate::error::{Error, Result};
use crate::eval::{collate, BatchData};
use crate::io::Checkpoint;
use crate::kernels::Compute;
use crate::model::{dropouts_of, Bert, Mode, Params};

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
pub struct Spec {
    // Where the calibration forward passes run (the linear algebra stays on the CPU); not
    // part of the spec: the same cut may be computed on another device.
    #[command(flatten)]
    #[serde(skip)]
    pub compute: Compute,
    /// Fraction of each linear's weights to remove, in (0, 1).
    #[arg(long, conflicts_with = "pattern", required_unless_present = "pattern", value_parser = crate::util::options::open_fraction)]
    pub sparsity: Option<f64>,
    /// N:M semi-structured sparsity, e.g. 2:4 (N zeros in every M inputs).
    #[arg(long)]
    pub pattern: Option<String>,
    /// Calibration sentences (CoNLL or JSONL).
    #[arg(long)]
    pub calib: PathBuf,
    #[arg(long, default_value_t = 256, value_parser = crate::util::options::positive)]
    pub calib_sentences: usize,
    /// Dampening, times the mean of the Hessian's diagonal.
    #[arg(long, default_value_t = 0.01, value_parser = crate::util::options::positive_number)]
    pub damp: f64,
    /// Columns per block.
    #[arg(long, default_value_t = 128, value_parser = crate::util::options::positive)]
    pub block: usize,
    #[arg(long, value_enum, default_value_t = Method::Sparsegpt)]
    pub method: Method,
    /// Held-out sentences (e.g. the dev set) on which each linear's relative output error is
    /// measured as well: the calibration error alone flatters the solver that fitted it.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heldout: Option<PathBuf>,
    /// How many held-out sentences to use.
    #[arg(long, default_value_t = 256, value_parser = crate::util::options::positive)]
    #[serde(default = "default_heldout_sentences")]
    pub heldout_sentences: usize,
}

fn default_heldout_sentences() -> usize {
    256
}

impl Spec {
    fn pattern(&self) -> Result<Pattern> {
        parse_pattern(self.sparsity, self.pattern.as_deref())
    }
}

/// `--sparsity s` or `--pattern N:M`, checked.
pub(super) fn parse_pattern(sparsity: Option<f64>, pattern: Option<&str>) -> Result<Pattern> {
    match (sparsity, pattern) {
        (Some(s), None) => {
            if !(s > 0.0 && s < 1.0) {
                return Err(Error::Spec(format!("--sparsity {s}: must be in (0, 1)")));
            }
            Ok(Pattern::Unstructured(s))
        }
        (None, Some(p)) => {
            let parsed = p.split_once(':').and_then(|(n, m)| {
                Some((
                    n.trim().parse::<usize>().ok()?,
                    m.trim().parse::<usize>().ok()?,
                ))
            });
            match parsed {
                Some((n, m)) if n > 0 && n < m => Ok(Pattern::NofM { n, m }),
                Some((n, m)) => Err(Error::Spec(format!("--pattern {n}:{m}: N must be in 1..M"))),
                None => Err(Error::Spec(format!(
                    "--pattern `{p}`: expected N:M such as 2:4"
                ))),
            }
        }
        _ => Err(Error::Spec("give --sparsity or --pattern".into())),
    }
}

/// The largest group an N:M pattern may use: the formats hardware runs have M ≤ 16; wider
/// groups are accepted up to this size, beyond which "N of M" no longer means a local pattern.
const MAX_GROUP: usize = 64;

/// Every linear's input size must be a whole number of groups of `m`: a final partial group
/// would have no N:M meaning (it used to be zeroed whole).
fn check_groups(arch: &Arch, m: usize) -> Result<()> {
    if m > MAX_GROUP {
        return Err(Error::Spec(format!(
            "--pattern N:{m}: groups of at most {MAX_GROUP} inputs are supported (e.g. 2:4, 4:8)"
        )));
    }
    for layer in 0..arch.layers.len() {
        for slot in LinearSlot::ALL {
            let (_, inputs) = arch.linear_shape(layer, slot);
            if inputs % m != 0 {
                return Err(Error::Spec(format!(
                    "--pattern N:{m}: layer {layer} {} has {inputs} inputs, not a multiple of {m}, so its last group would be partial",
                    slot.as_str()
                )));
            }
        }
    }
    Ok(())
}

/// Accumulates XᵀX of the real tokens of a batch into `gram`. Detached: the weights are
/// candle variables, and a tracked result would keep every batch's whole graph alive.
fn accumulate(gram: &mut Option<Tensor>, x: &Tensor, rows: &Tensor) -> Result<()> {
    let x = x.detach().index_select(rows, 0)?;
    let g = x.t()?.matmul(&x)?;
    *gram = Some(match gram.take() {
        Some(acc) => (acc + g)?,
        None => g,
    });
    Ok(())
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

/// The architecture with every encoder linear marked sparse with `pattern` (they must be dense).
pub(super) fn sparse_arch(arch: &Arch, pattern: Pattern) -> Result<Arch> {
    super::require_layers(arch, "sparse pruning")?;
    for layer in &arch.layers {
        if let Some((slot, kind)) = layer.linears.iter().find(|(_, k)| **k != LinearKind::Dense) {
            return Err(Error::Spec(format!(
                "{} is already {}; pruning needs dense linears",
                slot.as_str(),
                crate::budget::describe_linear(*kind)
            )));
        }
    }
    if let Pattern::NofM { m, .. } = pattern {
        check_groups(arch, m)?;
    }
    let sparse = match pattern {
        Pattern::Unstructured(s) => SparsePattern::Unstructured { sparsity: s as f32 },
        Pattern::NofM { n, m } => SparsePattern::NofM { n, m },
    };
    let mut arch = arch.clone();
    for layer in &mut arch.layers {
        for slot in LinearSlot::ALL {
            layer
                .linears
                .insert(slot, LinearKind::Sparse { pattern: sparse });
        }
    }
    Ok(arch)
}

/// Sentences run layer by layer: their batches, the rows of real tokens, and each batch's
/// current hidden states (the output of the layers pruned so far), detached from the graph so
/// that memory stays one layer's worth however many sentences calibrate.
pub(crate) struct LayerInputs {
    pub(crate) batches: Vec<BatchData>,
    pub(crate) real_rows: Vec<Tensor>,
    pub(crate) tokens: usize,
    pub(crate) sentences: usize,
    pub(crate) xs: Vec<Tensor>,
}

impl LayerInputs {
    pub(crate) fn new(
        ckpt: &Checkpoint,
        model: &Bert,
        path: &std::path::Path,
        n: usize,
    ) -> Result<(Self, Option<String>)> {
        let device = model.device().clone();
        let (prepared, tokenizer, note) =
            crate::cuts::calibrate::calibration_examples(ckpt, path, n)?;
        let plan = crate::data::bucket_batches(&prepared.lengths(), 32, None);
        let batches: Vec<BatchData> = plan
            .batches
            .iter()
            .map(|b| {
                collate(
                    &b.iter().map(|&i| &prepared.examples[i]).collect::<Vec<_>>(),
                    tokenizer.pad_id(),
                    &device,
                )
            })
            .collect::<Result<_>>()?;
        let real_rows: Vec<Tensor> = batches
            .iter()
            .map(|b| {
                let mask = b.batch.attention_mask.flatten_all()?.to_vec1::<f32>()?;
                let rows: Vec<u32> = (0..mask.len() as u32)
                    .filter(|&i| mask[i as usize] > 0.0)
                    .collect();
                Ok(Tensor::from_vec(rows.clone(), rows.len(), &device)?)
            })
            .collect::<Result<_>>()?;
        let xs = batches
            .iter()
            .map(|b| Ok(model.embed(&b.batch, &mut Mode::Eval)?.detach()))
            .collect::<candle_core::Result<_>>()?;
        let inputs = LayerInputs {
            tokens: real_rows.iter().map(|r| r.elem_count()).sum(),
            sentences: prepared.data.sentences.len(),
            batches,
            real_rows,
            xs,
        };
        Ok((inputs, note))
    }

    /// XᵀX of the real tokens at every linear input of logical layer `logical`.
    fn grams(&self, model: &Bert, logical: usize) -> Result<BTreeMap<Input, Option<Tensor>>> {
        let mut grams: BTreeMap<Input, Option<Tensor>> = BTreeMap::new();
        for ((x, batch), rows) in self.xs.iter().zip(&self.batches).zip(&self.real_rows) {
            let (_, inputs) = model.run_layer(logical, x, &batch.batch, true)?;
            let inputs = inputs.expect("captured");
            accumulate(
                grams.entry(Input::Attention).or_default(),
                &inputs.attention,
                rows,
            )?;
            if let Some(c) = &inputs.context {
                accumulate(grams.entry(Input::Context).or_default(), c, rows)?;
            }
            accumulate(grams.entry(Input::Ffn).or_default(), &inputs.ffn, rows)?;
            accumulate(
                grams.entry(Input::FfnActivation).or_default(),
                &inputs.ffn_activation,
                rows,
            )?;
        }
        Ok(grams)
    }

    /// Moves the hidden states through logical layer `logical` (as pruned so far).
    pub(crate) fn advance(&mut self, model: &Bert, logical: usize) -> Result<()> {
        self.xs = self
            .xs
            .iter()
            .zip(&self.batches)
            .map(|(x, b)| Ok(model.run_layer(logical, x, &b.batch, false)?.0.detach()))
            .collect::<Result<_>>()?;
        Ok(())
    }
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

pub fn apply(ckpt: &Checkpoint, spec: &Spec) -> Result<Outcome> {
    let started = Instant::now();
    let new_arch = plan(&ckpt.arch, spec)?;
    let pattern = spec.pattern()?;
    let (device, kernels) = spec.compute.open()?;
    let params = Params::from_checkpoint(ckpt, &device)?;
    let model = Bert::new(&ckpt.arch, &params, dropouts_of(&ckpt.config)).with_kernels(kernels);
    let (mut calib, note) = LayerInputs::new(ckpt, &model, &spec.calib, spec.calib_sentences)?;
    let mut heldout = match &spec.heldout {
        Some(path) => Some(LayerInputs::new(ckpt, &model, path, spec.heldout_sentences)?.0),
        None => None,
    };
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
                            damp: spec.damp,
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
    if let Some(note) = note {
        report["note"] = note.into();
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
        let mut reads = vec![self.calib.as_path()];
        reads.extend(self.heldout.as_deref());
        reads
    }

    fn plan(&self, arch: &Arch) -> Result<Planned> {
        plan(arch, self).map(Planned::Exact)
    }

    fn apply(&self, ckpt: &Checkpoint) -> Result<Outcome> {
        apply(ckpt, self)
    }
}
