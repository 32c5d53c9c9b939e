//! tie-layers: ALBERT-style cross-layer sharing. The layers of a group run one stored layer whose
//! weights are the mean of the members' (or the first member's); the config's `layer_map` says
//! which stored layer each logical layer runs, and shared weights count once in the budget.

use serde::{Deserialize, Serialize};

use super::Surgery;
use super::{cpu, move_to_layer, Outcome, Planned};
use crate::arch::Arch;
use crate::error::{Error, Result};
use crate::io::Checkpoint;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Init {
    /// Average the members' weights.
    #[default]
    Mean,
    /// Keep the first member's weights.
    First,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Groups of logical layers sharing weights, e.g. `0-2,3-5` or `0-1,2-3,4-5`.
    #[arg(
        long,
        conflicts_with = "share_all",
        required_unless_present = "share_all"
    )]
    pub groups: Option<String>,
    /// One group with every layer.
    #[arg(long)]
    #[serde(default)]
    pub share_all: bool,
    /// How a group's shared weights are initialised.
    #[arg(long = "from", value_enum, default_value_t = Init::Mean)]
    #[serde(default)]
    pub init: Init,
}

/// Parses `0-2,3-5` (ranges and single layers) into groups.
pub fn parse_groups(text: &str, layers: usize) -> Result<Vec<Vec<usize>>> {
    let bad = |msg: String| Error::Spec(format!("--groups `{text}`: {msg}"));
    let mut groups = vec![];
    let mut seen = vec![false; layers];
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let parse = |s: &str| {
            s.trim()
                .parse::<usize>()
                .map_err(|_| bad(format!("`{part}` is not a layer range")))
        };
        let (a, b) = (parse(a)?, parse(b)?);
        if a > b {
            return Err(bad(format!("`{part}` is an empty range")));
        }
        if b >= layers {
            return Err(bad(format!(
                "layer {b} does not exist ({})",
                super::layer_range(layers)
            )));
        }
        for l in a..=b {
            if std::mem::replace(&mut seen[l], true) {
                return Err(bad(format!("layer {l} is in two groups")));
            }
        }
        groups.push((a..=b).collect());
    }
    if groups.is_empty() {
        return Err(bad("no groups".into()));
    }
    Ok(groups)
}

/// The architecture with the layers shared as asked (checks that each group's layers match).
pub fn plan(arch: &Arch, spec: &Spec) -> Result<Arch> {
    Ok(grouping(arch, spec)?.0)
}

/// The new architecture and the groups of logical layers, each group one new stored layer.
fn grouping(arch: &Arch, spec: &Spec) -> Result<(Arch, Vec<Vec<usize>>)> {
    super::require_layers(arch, "tie-layers")?;
    let n = arch.num_layers();
    let mut groups = match (&spec.groups, spec.share_all) {
        (_, true) => vec![(0..n).collect()],
        (Some(g), false) => parse_groups(g, n)?,
        (None, false) => return Err(Error::Spec("give --groups or --share-all".into())),
    };
    // Layers in no group keep their weights: each is a group of one.
    for l in 0..n {
        if !groups.iter().any(|g| g.contains(&l)) {
            groups.push(vec![l]);
        }
    }
    groups.sort_by_key(|g| g[0]);
    let mut new_arch = arch.clone();
    new_arch.layers.clear();
    new_arch.layer_map = vec![0; n];
    for (index, group) in groups.iter().enumerate() {
        let stored = stored_layers(arch, group);
        let first = &arch.layers[stored[0]];
        if let Some(&other) = stored.iter().find(|&&s| arch.layers[s] != *first) {
            return Err(Error::Spec(format!(
                "layers {:?} cannot share weights: stored layer {other} has a different structure than stored layer {} (heads, sizes or linear kinds differ)",
                group, stored[0]
            )));
        }
        new_arch.layers.push(first.clone());
        for &l in group {
            new_arch.layer_map[l] = index;
        }
    }
    Ok((new_arch, groups))
}

/// Distinct stored layers of a group of logical layers (a layer may already be shared).
fn stored_layers(arch: &Arch, group: &[usize]) -> Vec<usize> {
    let mut stored: Vec<usize> = vec![];
    for &l in group {
        if !stored.contains(&arch.layer_map[l]) {
            stored.push(arch.layer_map[l]);
        }
    }
    stored
}

pub fn apply(ckpt: &Checkpoint, spec: &Spec) -> Result<Outcome> {
    let arch = &ckpt.arch;
    let (new_arch, groups) = grouping(arch, spec)?;
    let mut out = ckpt.clone();
    for (index, group) in groups.iter().enumerate() {
        let stored = stored_layers(arch, group);
        let members: &[usize] = match spec.init {
            Init::Mean => &stored,
            Init::First => &stored[..1],
        };
        for (key, _) in arch.layer_tensors(stored[0]) {
            let mut sum = cpu(ckpt, key)?;
            for &s in &members[1..] {
                sum = (sum + cpu(ckpt, move_to_layer(key, s))?)?;
            }
            out.set_tensor(move_to_layer(key, index), (sum / members.len() as f64)?);
        }
    }
    out.set_arch(new_arch)?;
    let report = serde_json::json!({"groups": groups, "stored_layers": groups.len()});
    Ok(Outcome::new(ckpt, out, Spec::NAME, spec, report))
}

impl Surgery for Spec {
    const NAME: &'static str = "tie-layers";
    const ABOUT: &'static str = "Share weights across layers (ALBERT-style)";
    const EXAMPLE: &'static [&'static str] = &["--groups", "0-1"];

    fn plan(&self, arch: &Arch) -> Result<Planned> {
        plan(arch, self).map(Planned::Exact)
    }

    fn apply(&self, ckpt: &Checkpoint) -> Result<Outcome> {
        apply(ckpt, self)
    }
}
