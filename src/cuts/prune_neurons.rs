//! prune-neurons: removes FFN neurons — rows of the intermediate linear (and their bias entries)
//! and the matching columns of the output linear — keeping the best-scored ones, by Fisher
//! information on the task loss or by weight magnitude (see [`super::shared::unit_scores`]). The kept
//! neurons are ranked globally over all stored layers (a layer may lose every neuron: its FFN
//! then adds only the output bias to the residual) or, with `--uniform`, the same share in each
//! layer. Per-layer intermediate sizes go into the `surgery` block of config.json.

use serde::{Deserialize, Serialize};

use super::shared::calibrate::{self, Calib, CalibOptions, Calibrator, Tags};
use super::shared::layer_inputs::heldout_errors;
use super::shared::unit_scores::{fisher, magnitude, require_classifier, UnitScores};
use super::shared::units::{arch_with_counts, cut, describe_cut, Keep};
use super::Surgery;
use super::{Outcome, Planned};
use crate::arch::Arch;
use crate::budget::flops::neuron_cost;
use crate::error::{Error, Result};
use crate::io::Checkpoint;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum NeuronScore {
    /// Diagonal Fisher information of each neuron's mask on the task loss (needs --calib).
    Fisher,
    /// ‖row into the neuron‖₂ · ‖column out of it‖₂ (no data).
    Magnitude,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, clap::Args)]
#[serde(deny_unknown_fields)]
#[command(mut_args(calibrate::defaults(Calib::Optional, "2048", "512")))]
pub struct Spec {
    /// Neurons to keep over all stored layers.
    #[arg(
        long,
        conflicts_with = "keep_ratio",
        required_unless_present = "keep_ratio",
        value_parser = crate::util::options::whole
    )]
    pub keep: Option<usize>,
    /// Share of the neurons to keep, in (0, 1].
    #[arg(long, value_parser = crate::util::options::fraction_above_zero)]
    pub keep_ratio: Option<f64>,
    /// Keep the same share in every layer instead of ranking globally.
    #[arg(long)]
    pub uniform: bool,
    #[arg(long, value_enum)]
    pub by: NeuronScore,
    // Labelled calibration sentences for --by fisher; the held-out ones measure each layer's
    // output error against the uncut model.
    #[command(flatten)]
    pub calibration: CalibOptions,
}

/// Neurons kept per stored layer when the choice depends only on the structure (`--uniform`),
/// else the total to keep.
enum Counts {
    PerLayer(Vec<usize>),
    Total(usize),
}

fn counts(arch: &Arch, spec: &Spec) -> Result<Counts> {
    super::require_layers(arch, "prune-neurons")?;
    spec.calibration.refuse_damp("prune-neurons")?;
    let sizes: Vec<usize> = arch.layers.iter().map(|l| l.intermediate).collect();
    let total: usize = sizes.iter().sum();
    let keep = match (spec.keep, spec.keep_ratio) {
        (Some(n), _) if n > total => {
            return Err(Error::Spec(format!(
                "--keep {n}: the model has only {total} neurons"
            )))
        }
        (Some(n), _) => n,
        (None, Some(r)) if r > 0.0 && r <= 1.0 => (r * total as f64).round() as usize,
        (None, r) => {
            return Err(Error::Spec(format!(
                "--keep-ratio {}: must be in (0, 1]",
                r.unwrap_or(f64::NAN)
            )))
        }
    };
    if !spec.uniform {
        return Ok(Counts::Total(keep));
    }
    Ok(Counts::PerLayer(match (spec.keep, spec.keep_ratio) {
        // A count is kept exactly, split over the layers.
        (Some(n), _) => apportion(&sizes, n),
        // A share is the same share of every layer (equal layers stay equal: a plain config).
        (None, r) => {
            let r = r.unwrap_or(1.0);
            sizes
                .iter()
                .map(|&n| (r * n as f64).round() as usize)
                .collect()
        }
    }))
}

/// Splits `keep` (at most the sum of `sizes`) over the layers in proportion to their sizes, by
/// largest remainders (ties to the earlier layer), so the counts sum to exactly `keep`:
/// rounding each layer's share alone made `--keep 3` keep 4.
fn apportion(sizes: &[usize], keep: usize) -> Vec<usize> {
    let total: u128 = sizes.iter().map(|&n| n as u128).sum();
    if total == 0 {
        return vec![0; sizes.len()];
    }
    let share = |n: usize| {
        (
            keep as u128 * n as u128 / total,
            keep as u128 * n as u128 % total,
        )
    };
    let mut counts: Vec<usize> = sizes.iter().map(|&n| share(n).0 as usize).collect();
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.sort_by(|&a, &b| share(sizes[b]).1.cmp(&share(sizes[a]).1).then(a.cmp(&b)));
    let short = keep - counts.iter().sum::<usize>();
    for &layer in order.iter().take(short) {
        counts[layer] += 1;
    }
    counts
}

/// `--uniform` is exact. A global ranking is exact in size when every neuron costs the same
/// number of parameters (which neurons go is decided by the scores); the plan then assumes the
/// cut is spread evenly. Otherwise the size depends on the scores.
pub fn plan(arch: &Arch, spec: &Spec) -> Result<Planned> {
    let heads: Vec<usize> = arch.layers.iter().map(|l| l.num_heads).collect();
    match counts(arch, spec)? {
        Counts::PerLayer(n) => Ok(Planned::Exact(arch_with_counts(arch, &heads, &n)?)),
        Counts::Total(keep) => {
            let costs: Vec<u64> = (0..arch.layers.len())
                .map(|s| neuron_cost(arch, s).params)
                .collect();
            if costs.windows(2).any(|w| w[0] != w[1]) {
                return Ok(Planned::Unknown(
                    "neurons cost different numbers of parameters in different layers: the size depends on which the scores keep".into(),
                ));
            }
            let mut left: Vec<usize> = arch.layers.iter().map(|l| l.intermediate).collect();
            let mut to_cut = left.iter().sum::<usize>() - keep;
            while to_cut > 0 {
                for l in left.iter_mut().filter(|l| **l > 0) {
                    if to_cut == 0 {
                        break;
                    }
                    *l -= 1;
                    to_cut -= 1;
                }
            }
            Ok(Planned::Exact(arch_with_counts(arch, &heads, &left)?))
        }
    }
}

/// Indices of the `n` best scores, ascending.
pub fn top(scores: &[f64], n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut kept = order[..n.min(order.len())].to_vec();
    kept.sort_unstable();
    kept
}

/// The neurons each stored layer keeps.
fn choose(arch: &Arch, scores: &UnitScores, counts: Counts) -> Vec<Vec<usize>> {
    match counts {
        Counts::PerLayer(n) => scores
            .neurons
            .iter()
            .zip(n)
            .map(|(s, n)| top(s, n))
            .collect(),
        Counts::Total(keep) => {
            let mut ranked: Vec<(f64, usize, usize)> = scores
                .neurons
                .iter()
                .enumerate()
                .flat_map(|(l, s)| s.iter().enumerate().map(move |(i, v)| (*v, l, i)))
                .collect();
            ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then((a.1, a.2).cmp(&(b.1, b.2))));
            let mut kept = vec![vec![]; arch.layers.len()];
            for &(_, l, i) in ranked.iter().take(keep) {
                kept[l].push(i);
            }
            kept.iter_mut().for_each(|k| k.sort_unstable());
            kept
        }
    }
}

pub fn apply(ckpt: &Checkpoint, spec: &Spec) -> Result<Outcome> {
    let arch = &ckpt.arch;
    let counts = counts(arch, spec)?;
    let mut report = serde_json::json!({});
    let tags = match spec.by {
        NeuronScore::Magnitude => None,
        NeuronScore::Fisher => {
            require_classifier(ckpt, "prune-neurons --by fisher")?;
            Some(Tags::Labels)
        }
    };
    let calibrator = Calibrator::open(ckpt, &spec.calibration, tags)?;
    let scores = match spec.by {
        NeuronScore::Magnitude => magnitude(ckpt)?,
        NeuronScore::Fisher => {
            let run = fisher(&calibrator, "--by fisher")?;
            report["calibration_sentences"] = run.sentences.into();
            report["calibration_tokens"] = run.tokens.into();
            report["fisher_seconds"] = run.seconds.into();
            if let Some(note) = run.note {
                report["note"] = note.into();
            }
            run.scores
        }
    };
    let keep = Keep {
        heads: Keep::all(arch).heads,
        neurons: choose(arch, &scores, counts),
    };
    let out = cut(ckpt, &keep)?;
    describe_cut(&mut report, arch, &keep, &out);
    if let Some(errors) = heldout_errors(&calibrator, &[&out])? {
        report["heldout_layer_error"] = errors[0].clone().into();
    }
    Ok(Outcome::new(ckpt, out, Spec::NAME, spec, report))
}

impl Surgery for Spec {
    const NAME: &'static str = "prune-neurons";
    const ABOUT: &'static str =
        "Remove FFN neurons (intermediate rows and output columns), by Fisher score or magnitude";
    const EXAMPLE: &'static [&'static str] = &[
        "--keep-ratio",
        "0.5",
        "--by",
        "fisher",
        "--calib",
        "{calib}",
        "--uniform",
    ];

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

#[cfg(test)]
mod tests {
    use super::apportion;

    #[test]
    fn a_uniform_count_is_split_exactly_by_largest_remainders() {
        assert_eq!(apportion(&[24, 24, 24], 3), [1, 1, 1]);
        assert_eq!(apportion(&[24, 24, 24], 4), [2, 1, 1]);
        assert_eq!(apportion(&[10, 30, 0], 5), [1, 4, 0]);
        assert_eq!(apportion(&[10, 30], 40), [10, 30]);
        assert_eq!(apportion(&[0, 0], 0), [0, 0]);
    }
}
