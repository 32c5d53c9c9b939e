//! prune-structured: post-training structured pruning after Kwon et al. 2022 ("A Fast
//! Post-Training Pruning Framework for Transformers"). Attention heads and FFN neurons are scored
//! by the diagonal Fisher information of their masks on the token-classification loss
//! ([`super::shared::unit_scores`]), kept jointly and globally under an encoder-FLOPs fraction (at a
//! stated sequence length) or a unique-parameter budget, physically removed ([`super::shared::units`]),
//! and each layer's output linears are then refitted by least squares so that its output matches
//! the unpruned model's on calibration sentences ([`super::shared::reconstruct`]).
//!
//! The search (Kwon et al.'s, generalised to units of unequal cost): heads and neurons are each
//! ranked by score per unit of cost; for every number of kept heads h (best first), the
//! neurons fill what the budget leaves, best first; the h whose kept units have the largest
//! summed score wins (the removed units' summed Fisher score estimates the loss increase).
//! With equal costs per head and per neuron (a model without low-rank or shared layers), this
//! is exactly their algorithm. Their within-layer mask rearrangement is not done.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::shared::calibrate::{self, Calib, CalibOptions, Calibrator, Tags};
use super::shared::layer_inputs::heldout_errors;
use super::shared::reconstruct::reconstruct;
use super::shared::unit_scores::{fisher, require_classifier, UnitScores};
use super::shared::units::{cut, describe_cut, Keep};
use super::Surgery;
use super::{Outcome, Planned};
use crate::arch::Arch;
use crate::budget::flops::{head_cost, neuron_cost, Flops, UnitCost, DEFAULT_SEQ_LEN};
use crate::budget::{group, parse_count, Budget};
use crate::error::{Error, Result};
use crate::io::Checkpoint;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, clap::Args)]
#[serde(deny_unknown_fields)]
#[command(mut_args(calibrate::defaults(Calib::Required, "2048", "512")))]
pub struct Spec {
    /// Keep at most this fraction of the encoder FLOPs per token, in (0, 1].
    #[arg(long, conflicts_with = "params", required_unless_present = "params", value_parser = crate::util::options::fraction_above_zero)]
    pub flops: Option<f64>,
    /// Keep at most this many unique parameters (e.g. 15M).
    #[arg(long, value_parser = crate::budget::count_text)]
    pub params: Option<String>,
    /// The sequence length FLOPs are counted at (attention costs grow with it).
    #[arg(long, default_value_t = DEFAULT_SEQ_LEN, value_parser = crate::util::options::seq_len)]
    pub seq_len: usize,
    /// Skip the layer-wise least-squares reconstruction.
    #[arg(long)]
    pub no_reconstruct: bool,
    // Labelled calibration sentences for the Fisher scores and the reconstruction (whose ridge
    // `--damp` sets, times the mean diagonal of ZᵀZ); the held-out ones measure each layer's
    // output error, with and without reconstruction.
    #[command(flatten)]
    pub calibration: CalibOptions,
}

/// The budget in the units the search spends: FLOPs per token or unique parameters.
struct Budgeted {
    /// What the model costs now, and what it may cost.
    now: u64,
    limit: u64,
    /// What is left with every head and neuron removed.
    floor: u64,
    /// Cost of one head / one neuron of each stored layer.
    head: Vec<u64>,
    neuron: Vec<u64>,
    what: &'static str,
}

fn budgeted(arch: &Arch, spec: &Spec) -> Result<Budgeted> {
    super::require_layers(arch, "prune-structured")?;
    if spec.seq_len == 0 {
        return Err(Error::Spec("--seq-len must be positive".into()));
    }
    let pick = |c: UnitCost| {
        if spec.flops.is_some() {
            c.flops
        } else {
            c.params
        }
    };
    let head: Vec<u64> = (0..arch.layers.len())
        .map(|s| pick(head_cost(arch, s, spec.seq_len)))
        .collect();
    let neuron: Vec<u64> = (0..arch.layers.len())
        .map(|s| pick(neuron_cost(arch, s)))
        .collect();
    let units: u64 = arch
        .layers
        .iter()
        .enumerate()
        .map(|(s, l)| head[s] * l.num_heads as u64 + neuron[s] * l.intermediate as u64)
        .sum();
    let (now, limit, what) = match (spec.flops, &spec.params) {
        (Some(r), _) => {
            if !(r > 0.0 && r <= 1.0) {
                return Err(Error::Spec(format!("--flops {r}: must be in (0, 1]")));
            }
            let now = Flops::of_arch(arch, spec.seq_len).per_token;
            (
                now,
                (r * now as f64).floor() as u64,
                "encoder FLOPs per token",
            )
        }
        (None, Some(text)) => {
            let limit = parse_count(text).map_err(Error::Spec)?;
            (Budget::of_arch(arch).unique, limit, "unique parameters")
        }
        // The command line requires one; a spec built otherwise may have neither.
        (None, None) => {
            return Err(Error::Spec(
                "prune-structured: give --flops or --params".into(),
            ))
        }
    };
    let floor = now.saturating_sub(units);
    if limit < floor {
        return Err(Error::Spec(format!(
            "the budget of {} {what} is below the {} left with every head and neuron removed",
            group(limit),
            group(floor)
        )));
    }
    // One head in the cheapest layer: below that, no layer could attend to any other token.
    let cheapest_head = head
        .iter()
        .zip(&arch.layers)
        .filter(|(_, l)| l.num_heads > 0)
        .map(|(c, _)| *c)
        .min();
    if let Some(c) = cheapest_head {
        if limit < floor + c {
            return Err(Error::Spec(format!(
                "the budget of {} {what} cannot keep a single attention head (one costs {}): the model would no longer look at context",
                group(limit),
                group(c)
            )));
        }
    }
    Ok(Budgeted {
        now,
        limit,
        floor,
        head,
        neuron,
        what,
    })
}

/// Tensor-free: the budget is checked and stated; which units stay depends on the scores.
pub fn plan(arch: &Arch, spec: &Spec) -> Result<Planned> {
    let b = budgeted(arch, spec)?;
    Ok(Planned::Unknown(format!(
        "at most {} {} (now {}); which heads and neurons stay depends on the Fisher scores",
        group(b.limit),
        b.what,
        group(b.now)
    )))
}

/// One unit in the search: (score per cost, score, cost, stored layer, index).
type Ranked = (f64, f64, u64, usize, usize);

fn ranked(scores: &[Vec<f64>], cost: &[u64]) -> Vec<Ranked> {
    let mut units: Vec<Ranked> = scores
        .iter()
        .enumerate()
        .flat_map(|(s, v)| {
            v.iter()
                .enumerate()
                .map(move |(i, &x)| (x / cost[s].max(1) as f64, x, cost[s], s, i))
        })
        .collect();
    units.sort_by(|a, b| b.0.total_cmp(&a.0).then((a.3, a.4).cmp(&(b.3, b.4))));
    units
}

/// The joint global search: the number of heads kept, best first, and the neurons that fill
/// the rest of the budget, maximising the summed score of what is kept.
fn search(arch: &Arch, scores: &UnitScores, b: &Budgeted) -> Keep {
    let heads = ranked(&scores.heads, &b.head);
    let neurons = ranked(&scores.neurons, &b.neuron);
    // Prefix sums of the neurons' cost and score.
    let mut n_cost = vec![0u64];
    let mut n_score = vec![0.0f64];
    for u in &neurons {
        n_cost.push(n_cost.last().unwrap() + u.2);
        n_score.push(n_score.last().unwrap() + u.1);
    }
    let left = b.limit - b.floor;
    let (mut best, mut best_score) = ((0, 0), f64::NEG_INFINITY);
    let (mut h_cost, mut h_score) = (0u64, 0.0f64);
    for h in 0..=heads.len() {
        if h > 0 {
            h_cost += heads[h - 1].2;
            h_score += heads[h - 1].1;
        }
        if h_cost > left {
            break;
        }
        let n = n_cost.partition_point(|&c| c <= left - h_cost) - 1;
        let total = h_score + n_score[n];
        if total > best_score {
            (best, best_score) = ((h, n), total);
        }
    }
    let mut keep = Keep {
        heads: vec![vec![]; arch.layers.len()],
        neurons: vec![vec![]; arch.layers.len()],
    };
    for u in &heads[..best.0] {
        keep.heads[u.3].push(u.4);
    }
    for u in &neurons[..best.1] {
        keep.neurons[u.3].push(u.4);
    }
    keep.heads.iter_mut().for_each(|k| k.sort_unstable());
    keep.neurons.iter_mut().for_each(|k| k.sort_unstable());
    keep
}

pub fn apply(ckpt: &Checkpoint, spec: &Spec) -> Result<Outcome> {
    require_classifier(ckpt, "prune-structured")?;
    let arch = &ckpt.arch;
    let budget = budgeted(arch, spec)?;
    let calibrator = Calibrator::open(ckpt, &spec.calibration, Some(Tags::Labels))?;
    let run = fisher(&calibrator, Spec::NAME)?;
    let t_search = Instant::now();
    let keep = search(arch, &run.scores, &budget);
    let pruned = cut(ckpt, &keep)?;
    let search_seconds = t_search.elapsed().as_secs_f64();
    let mut report = serde_json::json!({
        "calibration_sentences": run.sentences,
        "calibration_tokens": run.tokens,
        "fisher_seconds": run.seconds,
        "search_seconds": search_seconds,
        "budget": {"what": budget.what, "limit": budget.limit, "before": budget.now},
    });
    describe_cut(&mut report, arch, &keep, &pruned);
    let flops = |a: &Arch| Flops::of_arch(a, spec.seq_len).per_token;
    let (before, after) = (flops(arch), flops(&pruned.arch));
    report["seq_len"] = spec.seq_len.into();
    report["flops_per_token_before"] = before.into();
    report["flops_per_token_after"] = after.into();
    report["flops_ratio"] = (after as f64 / before.max(1) as f64).into();
    if let Some(note) = run.note {
        report["note"] = note.into();
    }
    let out = if spec.no_reconstruct {
        if let Some(errors) = heldout_errors(&calibrator, &[&pruned])? {
            report["heldout_layer_error_pruned"] = errors[0].clone().into();
        }
        pruned
    } else {
        let (refit, r) = reconstruct(&calibrator, &pruned, spec.calibration.damping())?;
        report["reconstruction"] = serde_json::to_value(&r).expect("serialises");
        if let Some(errors) = heldout_errors(&calibrator, &[&pruned, &refit])? {
            report["heldout_layer_error_pruned"] = errors[0].clone().into();
            report["heldout_layer_error_reconstructed"] = errors[1].clone().into();
        }
        refit
    };
    Ok(Outcome::new(ckpt, out, Spec::NAME, spec, report))
}

impl Surgery for Spec {
    const NAME: &'static str = "prune-structured";
    const ABOUT: &'static str =
        "Remove heads and FFN neurons jointly under a FLOPs or parameter budget (Fisher scores, layer-wise reconstruction)";
    const EXAMPLE: &'static [&'static str] = &["--flops", "0.6", "--calib", "{calib}"];

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
