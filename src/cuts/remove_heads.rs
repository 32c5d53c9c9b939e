//! remove-heads: physically removes attention heads — the query/key/value output rows and the
//! attention-output input columns of each removed head — and records the per-layer head count
//! (a layer may keep none: its attention sub-block then adds only the output bias to the
//! residual). Heads are named explicitly, read from a gates file (`train gates`), or ranked by
//! the gradient-based importance of Michel et al. (2019).

use std::collections::BTreeSet;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::shared::calibrate::{self, Calib, CalibOptions, Calibrator, Tags};
use super::shared::layer_inputs::heldout_errors;
use super::shared::unit_scores::head_importance;
use super::Surgery;
use super::{cpu, Outcome, Planned};
use crate::arch::{Arch, Key, LinearKind, LinearPart, LinearSlot};
use crate::error::{Error, Result};
use crate::io::Checkpoint;
use crate::model::gates::GatesFile;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Ranking {
    /// |∂L/∂gate| accumulated over labelled data, normalised per layer (Michel et al. 2019).
    #[default]
    Importance,
    /// The learned gate values of a `train gates` run (--gates FILE).
    Gates,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, clap::Args)]
#[serde(deny_unknown_fields)]
#[command(
    mut_args(calibrate::defaults(Calib::Optional, "512", "512")),
    mut_arg("calib", |a| a.alias("data")),
    mut_arg("calib_sentences", |a| a.alias("data-sentences"))
)]
pub struct Spec {
    /// Heads to remove, `layer:head,head;layer:head`, e.g. `0:1,3;5:0,2,7` (logical layers).
    #[arg(long, conflicts_with_all = ["gates", "keep"], required_unless_present_any = ["gates", "keep"])]
    pub heads: Option<String>,
    /// A gates file written by `train gates`: heads whose gate is below --threshold are removed.
    #[arg(long)]
    pub gates: Option<PathBuf>,
    #[arg(long, default_value_t = 0.5, value_parser = crate::util::options::unit_interval)]
    pub threshold: f64,
    /// Keep this many heads in the whole model, chosen by --by.
    #[arg(long)]
    pub keep: Option<usize>,
    #[arg(long, value_enum, default_value_t = Ranking::Importance)]
    pub by: Ranking,
    /// Allow removing every head of every layer.
    #[arg(long)]
    pub allow_empty: bool,
    // Labelled calibration sentences for the importance scores (`--data` is the old name of
    // `--calib`); the held-out ones measure each layer's output error against the uncut model.
    #[command(flatten)]
    pub calibration: CalibOptions,
}

/// Parses `0:1,3;5:0,2,7` into (logical layer, head) pairs.
pub fn parse_heads(text: &str) -> Result<BTreeSet<(usize, usize)>> {
    let bad = |m: String| Error::Spec(format!("--heads `{text}`: {m}"));
    let mut out = BTreeSet::new();
    for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (layer, heads) = part
            .split_once(':')
            .ok_or_else(|| bad(format!("`{part}` is not layer:heads")))?;
        let layer: usize = layer
            .trim()
            .parse()
            .map_err(|_| bad(format!("`{layer}` is not a layer")))?;
        for h in heads.split(',') {
            let head: usize = h
                .trim()
                .parse()
                .map_err(|_| bad(format!("`{h}` is not a head index")))?;
            out.insert((layer, head));
        }
    }
    Ok(out)
}

/// A spec that selects no heads: the command line cannot make one, a recipe's or a library
/// caller's spec can.
fn no_selection() -> Error {
    Error::Spec("remove-heads: give --heads, --gates or --keep".into())
}

/// The heads to remove, as (logical layer, head).
fn heads_to_remove(
    calibrator: &Calibrator,
    spec: &Spec,
) -> Result<(BTreeSet<(usize, usize)>, serde_json::Value)> {
    let arch = &calibrator.original().arch;
    let heads = arch.heads_per_layer();
    if let Some(text) = &spec.heads {
        return Ok((parse_heads(text)?, serde_json::Value::Null));
    }
    if let Some(path) = spec.gates.as_ref().filter(|_| spec.keep.is_none()) {
        let file = read_gates(path, &heads, arch.hidden)?;
        let remove = gated_heads(&file, spec.threshold);
        return Ok((remove, serde_json::json!({"gates": file.gates})));
    }
    let keep = spec.keep.ok_or_else(no_selection)?;
    let scores = match spec.by {
        Ranking::Gates => {
            let path = spec
                .gates
                .as_ref()
                .ok_or_else(|| Error::Spec("--by gates needs --gates FILE".into()))?;
            read_gates(path, &heads, arch.hidden)?.gates
        }
        Ranking::Importance => head_importance(calibrator, "--keep --by importance")?,
    };
    let mut ranked: Vec<(f64, usize, usize)> = scores
        .iter()
        .enumerate()
        .flat_map(|(l, s)| s.iter().enumerate().map(move |(h, v)| (*v, l, h)))
        .collect();
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
    let remove = ranked.iter().skip(keep).map(|&(_, l, h)| (l, h)).collect();
    Ok((remove, serde_json::json!({"scores": scores})))
}

/// The heads whose gate is below the threshold, as (logical layer, head).
fn gated_heads(file: &GatesFile, threshold: f64) -> BTreeSet<(usize, usize)> {
    file.gates
        .iter()
        .enumerate()
        .flat_map(|(l, g)| {
            g.iter()
                .enumerate()
                .filter(move |(_, v)| **v < threshold)
                .map(move |(h, _)| (l, h))
        })
        .collect()
}

/// Reads a gates file and checks it was made for this structure.
fn read_gates(path: &std::path::Path, heads: &[usize], hidden: usize) -> Result<GatesFile> {
    let text = crate::io::text_input::read_text(path)?;
    let file: GatesFile = serde_json::from_str(&text).map_err(|e| Error::Input {
        path: path.to_path_buf(),
        line: e.line(),
        msg: e.to_string(),
    })?;
    if file.heads_per_layer != heads || file.hidden_size != hidden {
        return Err(Error::Input {
            path: path.to_path_buf(),
            line: 0,
            msg: format!(
                "gates for a different model: {:?} heads per layer, hidden {} (this model: {heads:?}, hidden {hidden})",
                file.heads_per_layer, file.hidden_size
            ),
        });
    }
    Ok(file)
}

/// The architecture after the removal. `--keep N` is exact in size (every head of a layer costs
/// the same) though which heads go is decided at run time; a gates file that does not exist yet
/// (written by an earlier recipe step) leaves the structure unknown.
pub fn plan(arch: &Arch, spec: &Spec) -> Result<Planned> {
    spec.calibration.refuse_damp(Spec::NAME)?;
    let heads = arch.heads_per_layer();
    let remove: BTreeSet<(usize, usize)> = if let Some(text) = &spec.heads {
        parse_heads(text)?
    } else if let Some(keep) = spec.keep {
        // Any `total − keep` heads: remove them round-robin from the last head of each layer.
        let total: usize = heads.iter().sum();
        let mut left = heads.clone();
        let mut remove = BTreeSet::new();
        for l in (0..heads.len()).cycle().take(total * heads.len().max(1)) {
            if remove.len() >= total.saturating_sub(keep) {
                break;
            }
            if left[l] > 0 && !arch.layer_map[..l].contains(&arch.layer_map[l]) {
                left[l] -= 1;
                remove.insert((l, left[l]));
            }
        }
        remove
    } else {
        let path = spec.gates.as_ref().ok_or_else(no_selection)?;
        if !path.exists() {
            return Ok(Planned::Unknown(format!(
                "the heads below the threshold are known once {} exists",
                path.display()
            )));
        }
        gated_heads(&read_gates(path, &heads, arch.hidden)?, spec.threshold)
    };
    Ok(Planned::Exact(
        without_heads(arch, &remove, spec.allow_empty)?.0,
    ))
}

/// The new architecture and, per stored layer, the heads removed from it (checks the indices,
/// that some head is left, and that the attention linears are not low-rank).
fn without_heads(
    arch: &Arch,
    remove: &BTreeSet<(usize, usize)>,
    allow_empty: bool,
) -> Result<(Arch, Vec<BTreeSet<usize>>)> {
    // Check indices and map logical layers to stored ones.
    let mut by_stored: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); arch.layers.len()];
    for &(layer, head) in remove {
        if layer >= arch.num_layers() {
            return Err(Error::Spec(format!(
                "layer {layer} does not exist (the model has {})",
                arch.num_layers()
            )));
        }
        let stored = arch.layer_map[layer];
        if head >= arch.layers[stored].num_heads {
            return Err(Error::Spec(format!(
                "layer {layer} has {} heads; head {head} does not exist",
                arch.layers[stored].num_heads
            )));
        }
        by_stored[stored].insert(head);
    }
    let left: usize = arch
        .layers
        .iter()
        .zip(&by_stored)
        .map(|(l, r)| l.num_heads - r.len())
        .sum();
    if left == 0 && !allow_empty {
        return Err(Error::Spec(
            "this would remove every head of every layer; pass --allow-empty to do it anyway"
                .into(),
        ));
    }
    let mut new_arch = arch.clone();
    for (stored, removed) in by_stored.iter().enumerate() {
        if removed.is_empty() {
            continue;
        }
        for slot in [
            LinearSlot::Query,
            LinearSlot::Key,
            LinearSlot::Value,
            LinearSlot::AttentionOutput,
        ] {
            if matches!(arch.layers[stored].linear(slot), LinearKind::LowRank { .. }) {
                return Err(Error::Spec(format!(
                    "layer {stored} {} is low-rank; remove heads before factorizing",
                    slot.as_str()
                )));
            }
        }
        new_arch.layers[stored].num_heads -= removed.len();
    }
    Ok((new_arch, by_stored))
}

pub fn apply(ckpt: &Checkpoint, spec: &Spec) -> Result<Outcome> {
    let arch = &ckpt.arch;
    spec.calibration.refuse_damp(Spec::NAME)?;
    let ranked = spec.heads.is_none() && spec.keep.is_some() && spec.by == Ranking::Importance;
    let calibrator = Calibrator::open(ckpt, &spec.calibration, ranked.then_some(Tags::Labels))?;
    let (remove, extra) = heads_to_remove(&calibrator, spec)?;
    let (new_arch, by_stored) = without_heads(arch, &remove, spec.allow_empty)?;
    let mut out = ckpt.clone();
    let d = arch.head_dim;
    for (stored, removed) in by_stored.iter().enumerate() {
        if removed.is_empty() {
            continue;
        }
        let keep: Vec<u32> = (0..arch.layers[stored].num_heads)
            .filter(|h| !removed.contains(h))
            .flat_map(|h| (h * d..(h + 1) * d).map(|i| i as u32))
            .collect();
        let index = Tensor::from_vec(keep.clone(), keep.len(), &Device::Cpu)?;
        let key = |slot, part| Key::Linear {
            layer: stored,
            slot,
            part,
        };
        let select = |t: Tensor, dim: usize| -> Result<Tensor> {
            if keep.is_empty() {
                let mut shape = t.dims().to_vec();
                shape[dim] = 0;
                Ok(Tensor::zeros(shape, candle_core::DType::F32, &Device::Cpu)?)
            } else {
                Ok(t.index_select(&index, dim)?)
            }
        };
        for slot in [LinearSlot::Query, LinearSlot::Key, LinearSlot::Value] {
            out.set_tensor(
                key(slot, LinearPart::Weight),
                select(cpu(ckpt, key(slot, LinearPart::Weight))?, 0)?,
            );
            out.set_tensor(
                key(slot, LinearPart::Bias),
                select(cpu(ckpt, key(slot, LinearPart::Bias))?, 0)?,
            );
        }
        let ao = key(LinearSlot::AttentionOutput, LinearPart::Weight);
        out.set_tensor(ao, select(cpu(ckpt, ao)?, 1)?);
    }
    out.set_arch(new_arch)?;
    let shared = arch.layer_map.iter().enumerate().any(|(i, &s)| i != s);
    let mut report = serde_json::json!({
        "removed_heads": remove.len(),
        "heads_left": out.arch.layers.iter().map(|l| l.num_heads).sum::<usize>(),
        "heads_per_layer": out.arch.heads_per_layer(),
    });
    if shared {
        report["note"] = "layers share weights: removing a head of a layer removes it from every layer sharing it".into();
    }
    if !extra.is_null() {
        report["ranking"] = extra;
    }
    if let Some(errors) = heldout_errors(&calibrator, &[&out])? {
        report["heldout_layer_error"] = errors[0].clone().into();
    }
    Ok(Outcome::new(ckpt, out, Spec::NAME, spec, report))
}

impl Surgery for Spec {
    const NAME: &'static str = "remove-heads";
    const ABOUT: &'static str =
        "Remove attention heads (named, below a gate threshold, or the least important)";
    const EXAMPLE: &'static [&'static str] = &["--heads", "0:1,3;2:0"];

    fn reads(&self) -> Vec<&std::path::Path> {
        let mut reads: Vec<&std::path::Path> = self.gates.iter().map(|p| p.as_path()).collect();
        reads.extend(self.calibration.reads());
        reads
    }

    fn plan(&self, arch: &Arch) -> Result<Planned> {
        plan(arch, self)
    }

    fn apply(&self, ckpt: &Checkpoint) -> Result<Outcome> {
        apply(ckpt, self)
    }
}
