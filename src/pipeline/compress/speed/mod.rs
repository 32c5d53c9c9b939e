//! Speed for speed targets, measured on this machine in the runtime the user names: the teacher
//! cut uniformly to a grid of FLOPs shares (heads and FFN neurons removed by a data-free rule:
//! the weights do not change the time), timed side by side with the teacher like `eval` times a
//! model, gives a latency table (as Kwon et al. use); the share for a speed-up is read off it.

use std::path::{Path, PathBuf};

use super::Runtime;
use crate::budget::flops::Flops;
use crate::data::labels::UnknownLabels;
use crate::data::ReadOptions;
use crate::error::{Error, Result};
use crate::eval::{run_eval, EvalRequest};
use crate::export::LinearStorage;
use crate::io::Checkpoint;
use crate::kernels::Compute;
use crate::metrics::Matching;
use crate::model::Precision;
use crate::pipeline::step::StepCommand;

pub mod onnx;

/// The FLOPs shares timed for the table.
const GRID: [f64; 9] = [0.12, 0.16, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.65];

/// Timing rounds per model in surgery's runtime; the fastest counts (the others met a busier
/// machine).
const ROUNDS: usize = 2;

/// How models are timed: the runtime, the labelled sentences they run over, and a folder of
/// compress's own for the models written only to be timed.
pub struct Timer {
    pub runtime: Runtime,
    pub data: PathBuf,
    pub scratch: PathBuf,
}

impl Timer {
    /// Tokens/s of each checkpoint over the data, timed side by side: passes of the models
    /// alternate, so that a machine getting busier or quieter during the timing (this one's
    /// speed moves by a third from one minute to the next) weighs on all of them alike.
    fn side_by_side(&self, checkpoints: &[&Path]) -> Result<Vec<f64>> {
        let in_onnx = |linears| {
            onnx::tokens_per_second(checkpoints, &self.data, linears, &self.scratch.join("onnx"))
        };
        let precision = match self.runtime {
            Runtime::Surgery => Precision::F32,
            Runtime::SurgeryBf16 => Precision::Bf16,
            Runtime::Onnx => return in_onnx(LinearStorage::F32),
            Runtime::OnnxInt8 => return in_onnx(LinearStorage::DynamicInt8),
        };
        let mut best = vec![0f64; checkpoints.len()];
        for _ in 0..ROUNDS {
            for (speed, checkpoint) in best.iter_mut().zip(checkpoints) {
                *speed = speed.max(self.surgery_tokens_per_second(checkpoint, precision)?);
            }
        }
        Ok(best)
    }

    fn surgery_tokens_per_second(&self, checkpoint: &Path, precision: Precision) -> Result<f64> {
        let request = EvalRequest {
            checkpoint: checkpoint.to_path_buf(),
            data: self.data.clone(),
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
        Ok(run_eval(&request)?.tokens_per_second)
    }

    /// Tokens/s of `model` against the teacher's, timed side by side.
    pub fn speedup(&self, teacher: &Path, model: &Path) -> Result<f64> {
        let speeds = self.side_by_side(&[teacher, model])?;
        self.remove_scratch_if_empty();
        Ok(speeds[1] / speeds[0])
    }

    /// The latency table: (share of the teacher's FLOPs, tokens/s against the teacher), the
    /// grid's models timed side by side with the teacher; they are written under the scratch
    /// folder and removed after.
    pub fn latency_table(
        &self,
        teacher: &Path,
        seq_len: usize,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Vec<(f64, f64)>> {
        let teacher_flops = Flops::of_arch(&Checkpoint::open(teacher)?.arch, seq_len).per_token;
        let mut dirs = vec![];
        let mut shares = vec![];
        for share in GRID {
            let dir: PathBuf = self.scratch.join(format!("share-{share}"));
            uniform_cut(teacher, share, &dir)?;
            let flops = Flops::of_arch(&Checkpoint::open(&dir)?.arch, seq_len).per_token;
            shares.push(flops as f64 / teacher_flops as f64);
            dirs.push(dir);
        }
        let mut models = vec![teacher];
        models.extend(dirs.iter().map(PathBuf::as_path));
        let speeds = self.side_by_side(&models)?;
        for dir in &dirs {
            std::fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        self.remove_scratch_if_empty();
        let table: Vec<(f64, f64)> = shares
            .into_iter()
            .zip(&speeds[1..])
            .map(|(share, speed)| (share, speed / speeds[0]))
            .collect();
        for (share, ratio) in &table {
            progress(&format!(
                "speed table: {:.0}% of the FLOPs → {ratio:.2}× the teacher's tokens/s",
                100.0 * share
            ));
        }
        Ok(table)
    }

    /// The scratch folder is compress's own; it goes once the models timed in it are gone.
    fn remove_scratch_if_empty(&self) {
        std::fs::remove_dir(&self.scratch).ok();
    }
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
