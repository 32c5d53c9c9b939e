//! Speed for speed targets, measured on this machine: the teacher cut uniformly to a grid of
//! FLOPs shares (heads and FFN neurons removed by a data-free rule: the weights do not change
//! the time), each timed like `eval` times a model, gives a latency table (as Kwon et al. use);
//! the share for a speed-up is read off it.

use std::path::{Path, PathBuf};

use crate::budget::flops::Flops;
use crate::data::labels::UnknownLabels;
use crate::data::ReadOptions;
use crate::error::{Error, Result};
use crate::eval::{run_eval, EvalRequest};
use crate::io::Checkpoint;
use crate::kernels::Compute;
use crate::metrics::Matching;
use crate::model::Precision;
use crate::pipeline::step::StepCommand;

/// The FLOPs shares timed for the table.
const GRID: [f64; 9] = [0.12, 0.16, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.65];

/// Timing rounds per model; the fastest counts (the others met a busier machine).
const ROUNDS: usize = 2;

/// Tokens/s of a checkpoint over `data`, the fastest of [`ROUNDS`] passes.
pub fn tokens_per_second(checkpoint: &Path, data: &Path, precision: Precision) -> Result<f64> {
    let request = EvalRequest {
        checkpoint: checkpoint.to_path_buf(),
        data: data.to_path_buf(),
        read: ReadOptions::default(),
        unknown_labels: UnknownLabels::Outside,
        matching: Matching::Default,
        batch_size: 32,
        max_len: None,
        precision,
        compute: Compute::default(),
        write_predictions: None,
        save_json: None,
        force: false,
    };
    let mut best = 0f64;
    for _ in 0..ROUNDS {
        best = best.max(run_eval(&request)?.tokens_per_second);
    }
    Ok(best)
}

/// Tokens/s of `model` against the teacher's, timed side by side (teacher, model, teacher) so
/// that a machine getting busier or quieter during the timing shows in neither direction.
pub fn measured_speedup(
    teacher: &Path,
    model: &Path,
    data: &Path,
    precision: Precision,
) -> Result<f64> {
    let before = tokens_per_second(teacher, data, precision)?;
    let speed = tokens_per_second(model, data, precision)?;
    let after = tokens_per_second(teacher, data, precision)?;
    Ok(speed / ((before + after) / 2.0))
}

/// The table with every speed-up scaled by `factor`: what the cut models measured against
/// what the table predicted for them (ragged structures run slower than uniform ones).
pub fn corrected(table: &[(f64, f64)], factor: f64) -> Vec<(f64, f64)> {
    table.iter().map(|&(s, v)| (s, v * factor)).collect()
}

/// The teacher with `1 - share` of each layer's heads and FFN neurons removed (the last heads,
/// the smallest neurons by magnitude), written to `out`.
fn uniform_cut(teacher: &Path, share: f64, out: &Path) -> Result<()> {
    let ckpt = Checkpoint::open(teacher)?;
    let mut heads = vec![];
    for (stored, layer) in ckpt.arch.layers.iter().enumerate() {
        let keep = ((layer.num_heads as f64 * share).round() as usize).max(1);
        if keep < layer.num_heads {
            let removed: Vec<String> = (keep..layer.num_heads).map(|h| h.to_string()).collect();
            heads.push(format!("{stored}:{}", removed.join(",")));
        }
    }
    let cut = |ckpt: &Checkpoint, argv: Vec<String>| -> Result<Checkpoint> {
        match StepCommand::parse(&argv) {
            Ok(StepCommand::Surgery(s)) => Ok(s.apply(ckpt)?.checkpoint),
            Ok(_) => Err(Error::Internal(format!("{argv:?} is not a cut"))),
            Err(e) => Err(Error::Internal(format!("{argv:?}: {e}"))),
        }
    };
    let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut model = ckpt;
    if !heads.is_empty() {
        let mut argv = words(&["remove-heads", "IN", "OUT", "--heads"]);
        argv.push(heads.join(";"));
        model = cut(&model, argv)?;
    }
    let mut argv = words(&[
        "prune-neurons",
        "IN",
        "OUT",
        "--uniform",
        "--by",
        "magnitude",
    ]);
    argv.push(format!("--keep-ratio={share}"));
    model = cut(&model, argv)?;
    let history = model.history();
    model.save(out, true, history)
}

/// The latency table: (share of the teacher's FLOPs, tokens/s against the teacher), measured
/// on `data`; the timed models are written under `scratch` and removed after.
pub fn latency_table(
    teacher: &Path,
    data: &Path,
    precision: Precision,
    seq_len: usize,
    scratch: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<(f64, Vec<(f64, f64)>)> {
    let teacher_flops = Flops::of_arch(&Checkpoint::open(teacher)?.arch, seq_len).per_token;
    let before = tokens_per_second(teacher, data, precision)?;
    let mut measured = vec![];
    for share in GRID {
        let dir: PathBuf = scratch.join(format!("share-{share}"));
        uniform_cut(teacher, share, &dir)?;
        let flops = Flops::of_arch(&Checkpoint::open(&dir)?.arch, seq_len).per_token;
        let speed = tokens_per_second(&dir, data, precision)?;
        std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        measured.push((flops as f64 / teacher_flops as f64, speed));
        progress(&format!(
            "speed table: {:.0}% of the FLOPs → {:.0} tokens/s",
            100.0 * flops as f64 / teacher_flops as f64,
            speed
        ));
    }
    let after = tokens_per_second(teacher, data, precision)?;
    let teacher_speed = (before + after) / 2.0;
    let table = measured
        .into_iter()
        .map(|(share, speed)| (share, speed / teacher_speed))
        .collect();
    Ok((teacher_speed, table))
}

/// The largest FLOPs share predicted to run at least `speedup` times the teacher's tokens/s
/// (linear between the timed shares), with a 3% margin for timing noise; `None` when even the
/// smallest timed share is too slow.
pub fn share_for(table: &[(f64, f64)], speedup: f64) -> Option<f64> {
    let goal = speedup * 1.03;
    let mut points = table.to_vec();
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut best = None;
    for pair in points.windows(2) {
        let ((s0, v0), (s1, v1)) = (pair[0], pair[1]);
        if v0 >= goal {
            best = Some(s0);
        }
        if v0 >= goal && v1 < goal && v0 > v1 {
            best = Some(s0 + (s1 - s0) * (v0 - goal) / (v0 - v1));
        }
    }
    if let Some(&(s, v)) = points.last() {
        if v >= goal {
            best = Some(s);
        }
    }
    best
}

/// The speed-up predicted for a FLOPs share (linear between the timed shares).
pub fn predicted_speedup(table: &[(f64, f64)], share: f64) -> Option<f64> {
    let mut points = table.to_vec();
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    points.windows(2).find_map(|p| {
        let ((s0, v0), (s1, v1)) = (p[0], p[1]);
        (share >= s0 && share <= s1).then(|| v0 + (v1 - v0) * (share - s0) / (s1 - s0).max(1e-12))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_share_is_read_off_the_table_with_a_margin() {
        let table = [(0.2, 4.0), (0.4, 2.0), (0.6, 1.5)];
        let share = share_for(&table, 2.0).unwrap();
        // 2.06 lies between 0.2 (4.0) and 0.4 (2.0).
        assert!(share > 0.39 && share < 0.4, "{share}");
        assert_eq!(share_for(&table, 5.0), None);
        let p = predicted_speedup(&table, 0.3).unwrap();
        assert!((p - 3.0).abs() < 1e-9);
        // Models that ran at 80% of the predicted speed move the share down.
        let slower = corrected(&table, 0.8);
        let share_slower = share_for(&slower, 2.0).unwrap();
        assert!(share_slower < share && share_slower > 0.2, "{share_slower}");
    }
}
