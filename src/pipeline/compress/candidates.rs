//! The chains of cuts `compress` tries: for a target, every ordering of the existing cuts that
//! makes sense, each planned from the structure alone before anything runs, so a chain that
//! misses the target is dropped (with why) at no cost.

use serde::{Deserialize, Serialize};

use crate::arch::{Arch, EmbeddingKind};
use crate::budget::flops::Flops;
use crate::budget::Budget;
use crate::cuts::Planned;
use crate::pipeline::step::StepCommand;

/// What the compressed model must meet.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Target {
    /// At most this many unique parameters.
    Params { max: u64 },
    /// At most this share of the teacher's encoder FLOPs per token.
    Flops { ratio: f64 },
    /// At least this many times the teacher's tokens/s (searched as a FLOPs share predicted
    /// from timed structures).
    Speedup { ratio: f64 },
}

/// One cut of a chain: a recipe step's kind and its options (the input is the previous cut's
/// output, or the teacher).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cut {
    pub kind: String,
    /// Option and value; an empty value is a flag.
    pub options: Vec<(String, String)>,
}

impl Cut {
    fn new(kind: &str, options: &[(&str, String)]) -> Cut {
        Cut {
            kind: kind.to_string(),
            options: options
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        }
    }

    /// The command line of the cut (input and output are placeholders: planning reads neither).
    fn argv(&self) -> Vec<String> {
        let mut argv: Vec<String> = self.kind.split(' ').map(String::from).collect();
        argv.extend(["IN".into(), "OUT".into()]);
        for (k, v) in &self.options {
            argv.push(match v.is_empty() {
                true => format!("--{k}"),
                false => format!("--{k}={v}"),
            });
        }
        argv
    }
}

/// A candidate: a named chain of cuts and what its plan says of the result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Candidate {
    pub name: String,
    pub cuts: Vec<Cut>,
    /// Unique parameters after the chain, when the plan knows them exactly.
    pub params: Option<u64>,
    /// Encoder FLOPs per token after the chain, when the plan knows them exactly.
    pub flops: Option<u64>,
    /// What the plan guarantees when the exact size depends on data (the Fisher scores).
    pub planned: String,
}

/// The files the cuts read: the calibration data.
pub struct CutData<'a> {
    pub calib: &'a str,
    pub calib_sentences: usize,
    pub seq_len: usize,
}

/// The chains worth trying for `target`, planned against the teacher's structure; chains the
/// plan refuses come back in the second list with the reason.
pub fn candidates(
    teacher: &Arch,
    target: Target,
    data: &CutData,
) -> (Vec<Candidate>, Vec<(String, String)>) {
    let chains = match target {
        Target::Params { max } => params_chains(teacher, max, data),
        Target::Flops { ratio } | Target::Speedup { ratio } => flops_chains(teacher, ratio, data),
    };
    let mut kept = vec![];
    let mut dropped = vec![];
    for (name, cuts) in chains {
        match plan_chain(teacher, &cuts) {
            Ok((arch, planned)) => {
                let (params, flops) = match &arch {
                    Some(a) => (
                        Some(Budget::of_arch(a).unique),
                        Some(Flops::of_arch(a, data.seq_len).per_token),
                    ),
                    None => (None, None),
                };
                if let (Target::Params { max }, Some(p)) = (target, params) {
                    if p > max {
                        dropped.push((name, format!("plans {p} unique parameters > {max}")));
                        continue;
                    }
                }
                kept.push(Candidate {
                    name,
                    cuts,
                    params,
                    flops,
                    planned,
                });
            }
            Err(why) => dropped.push((name, why)),
        }
    }
    (kept, dropped)
}

/// Plans a chain: the structure after it when every cut is exact, and a line saying what the
/// last data-dependent cut guarantees.
fn plan_chain(teacher: &Arch, cuts: &[Cut]) -> std::result::Result<(Option<Arch>, String), String> {
    let mut arch = Some(teacher.clone());
    let mut planned = String::from("exact");
    for cut in cuts {
        let command = StepCommand::parse(&cut.argv())?;
        let StepCommand::Surgery(surgery) = command else {
            return Err(format!("{} is not a cut", cut.kind));
        };
        let Some(before) = arch.take() else {
            // After a data-dependent cut only the cut's own check is left to the run.
            continue;
        };
        match surgery.plan(&before).map_err(|e| e.to_string())? {
            Planned::Exact(after) => arch = Some(after),
            Planned::Unknown(why) => planned = why,
        }
    }
    Ok((arch, planned))
}

/// The fewest unique parameters the chains reach: every head and FFN neuron removed (what
/// structured pruning leaves at its limit), the embeddings at rank 8 when that saves.
pub fn smallest_params(teacher: &Arch) -> u64 {
    let mut arch = teacher.clone();
    for layer in &mut arch.layers {
        layer.num_heads = 0;
        layer.intermediate = 0;
    }
    let full = Budget::of_arch(&arch).unique;
    let factorized =
        StepCommand::parse(&Cut::new("factorize-embeddings", &[("rank", "8".into())]).argv())
            .ok()
            .and_then(|c| match c {
                StepCommand::Surgery(s) => s.plan(&arch).ok(),
                _ => None,
            });
    match factorized {
        Some(Planned::Exact(a)) => full.min(Budget::of_arch(&a).unique),
        _ => full,
    }
}

/// Word-embedding parameters at rank `e` (V·E + E·H), or unfactorized (V·H).
fn embedding_params(arch: &Arch, rank: Option<usize>) -> u64 {
    let (v, h) = (arch.vocab as u64, arch.embedding_size as u64);
    match rank {
        Some(e) => v * e as u64 + e as u64 * h,
        None => v * h,
    }
}

/// Embedding ranks for a parameter budget: the largest rank whose embeddings take at most 35%
/// of the budget, and the largest at most 20% (student A: rank 48, 35% of 4.18M).
fn embedding_ranks(arch: &Arch, max: u64) -> Vec<Option<usize>> {
    let factorized = matches!(arch.embeddings, EmbeddingKind::Factorized { .. });
    let mut ranks = vec![];
    if !factorized && embedding_params(arch, None) <= max * 35 / 100 {
        ranks.push(None);
    }
    let width = arch.embedding_size.min(arch.vocab);
    for share in [35u64, 20] {
        let best = (1..width)
            .rev()
            .find(|&e| embedding_params(arch, Some(e)) <= max * share / 100)
            // Ranks in steps of 8 (friendlier to the matrix kernels), at least 8.
            .map(|e| (e / 8 * 8).max(8));
        if let Some(e) = best {
            let saves = embedding_params(arch, Some(e)) < embedding_params(arch, None);
            if e < width && saves && !ranks.contains(&Some(e)) {
                ranks.push(Some(e));
            }
        }
    }
    ranks
}

/// Layers kept when half are dropped: every other one, the last included.
fn every_other_layer(layers: usize) -> Vec<usize> {
    let mut keep: Vec<usize> = (0..layers).rev().step_by(2).collect();
    keep.reverse();
    keep
}

fn join(values: &[usize]) -> String {
    values
        .iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Chains for a unique-parameter budget: the embeddings factorized where they would take too
/// much of it, then the encoder cut to the budget by activation-aware low rank, by structured
/// pruning of heads and neurons, or by dropping half the layers and low rank.
fn params_chains(teacher: &Arch, max: u64, data: &CutData) -> Vec<(String, Vec<Cut>)> {
    let calib = [
        ("calib", data.calib.to_string()),
        ("calib-sentences", data.calib_sentences.to_string()),
    ];
    let mut chains = vec![];
    for rank in embedding_ranks(teacher, max) {
        let (prefix, mut first) = match rank {
            Some(e) => (
                format!("emb{e}"),
                vec![Cut::new("factorize-embeddings", &[("rank", e.to_string())])],
            ),
            None => ("full-emb".to_string(), vec![]),
        };
        let lowrank = Cut::new(
            "lowrank-layers",
            &[
                ("method", "whiten".into()),
                ("params-target", max.to_string()),
                calib[0].clone(),
                calib[1].clone(),
            ],
        );
        let structured = Cut::new(
            "prune-structured",
            &[
                ("params", max.to_string()),
                ("seq-len", data.seq_len.to_string()),
                calib[0].clone(),
                calib[1].clone(),
            ],
        );
        let mut with = |name: &str, cuts: Vec<Cut>| {
            let mut chain = first.clone();
            chain.extend(cuts);
            chains.push((format!("{prefix}-{name}"), chain));
        };
        with("lowrank", vec![lowrank.clone()]);
        with("structured", vec![structured]);
        if teacher.num_layers() >= 4 {
            let drop = Cut::new(
                "drop-layers",
                &[("keep", join(&every_other_layer(teacher.num_layers())))],
            );
            with("half-layers-lowrank", vec![drop, lowrank]);
        }
        first.clear();
    }
    chains
}

/// Chains for an encoder-FLOPs share: structured pruning alone (with and without the layer
/// refit), and after dropping layers (the pruning then keeps the rest of the share).
fn flops_chains(teacher: &Arch, ratio: f64, data: &CutData) -> Vec<(String, Vec<Cut>)> {
    let structured = |r: f64, extra: &[(&str, String)]| {
        let mut options = vec![
            ("flops", format!("{}", (r * 1e6).round() / 1e6)),
            ("seq-len", data.seq_len.to_string()),
            ("calib", data.calib.to_string()),
            ("calib-sentences", data.calib_sentences.to_string()),
        ];
        options.extend(extra.iter().cloned());
        Cut::new("prune-structured", &options)
    };
    let mut chains = vec![
        ("structured".to_string(), vec![structured(ratio, &[])]),
        (
            "structured-no-refit".to_string(),
            vec![structured(ratio, &[("no-reconstruct", String::new())])],
        ),
    ];
    let layers = teacher.num_layers();
    if layers >= 4 && ratio < 0.5 {
        let keep = every_other_layer(layers);
        let share = ratio * layers as f64 / keep.len() as f64;
        chains.push((
            "half-layers-structured".to_string(),
            vec![
                Cut::new("drop-layers", &[("keep", join(&keep))]),
                structured(share.min(1.0), &[]),
            ],
        ));
    }
    chains
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_other_layer_keeps_the_last() {
        assert_eq!(every_other_layer(6), vec![1, 3, 5]);
        assert_eq!(every_other_layer(5), vec![0, 2, 4]);
    }
}
