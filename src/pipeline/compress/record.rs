//! What `compress` writes down: `compress.json` (every candidate, each fidelity's dev F1, the
//! time each stage took, why a candidate was dropped, and the decisions a resumed run must
//! repeat), and the Markdown report with its chart.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::candidates::{Candidate, Target};
use crate::budget::group;
use crate::pipeline::plot::{Chart, Reference, Series, Style};

/// One evaluation of a candidate at one fidelity.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fidelity {
    /// `cut` (no training), `short-N` (N distillation steps) or `final`.
    pub stage: String,
    /// Distillation steps (0 for the cut alone).
    pub steps: usize,
    /// The learning rate of the distillation (none for the cut alone).
    pub lr: Option<f64>,
    /// F1 on the dev subset (`cut`, `short-N`) or the whole dev set (`final`).
    pub dev_f1: f64,
    pub seconds: f64,
}

/// A candidate and everything measured of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CandidateRecord {
    #[serde(flatten)]
    pub candidate: Candidate,
    /// Unique parameters and encoder FLOPs per token of the cut model, once cut.
    pub cut_params: Option<u64>,
    pub cut_flops: Option<u64>,
    /// Predicted tokens/s against the teacher (speed targets only).
    pub predicted_speedup: Option<f64>,
    /// Tokens/s of the cut model against the teacher, timed side by side (speed targets only).
    #[serde(default)]
    pub measured_speedup: Option<f64>,
    pub fidelities: Vec<Fidelity>,
    /// Why the search stopped considering it (`None` for the winner, or before the search
    /// reached it).
    pub dropped: Option<String>,
    pub seconds: f64,
}

impl CandidateRecord {
    /// The dev F1 of its highest fidelity so far.
    pub fn best_known_f1(&self) -> Option<f64> {
        self.fidelities.last().map(|f| f.dev_f1)
    }
}

/// How long a stage took against what it was given.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageRecord {
    pub stage: String,
    pub seconds: f64,
    pub budget_seconds: f64,
}

/// The finished model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Winner {
    pub candidate: String,
    pub model: PathBuf,
    pub recipe: PathBuf,
    pub lr: f64,
    pub epochs: usize,
    pub augment: bool,
    pub hidden_weight: f64,
    pub params: u64,
    pub flops: u64,
    pub dev_f1: f64,
    /// Evaluated once, at the end (when `--test` is given).
    pub test_f1: Option<f64>,
    /// Measured against the teacher side by side (speed targets only).
    pub measured_speedup: Option<f64>,
}

/// `compress.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompressRecord {
    pub written_by: String,
    /// FNV-1a of the options that decide the result: a rerun with other options is refused.
    pub spec_hash: String,
    pub command: String,
    pub teacher: PathBuf,
    pub target: Target,
    pub hours: f64,
    pub teacher_params: u64,
    pub teacher_flops: u64,
    /// The teacher on the dev subset the early fidelities use.
    pub teacher_dev_subset_f1: f64,
    pub teacher_tokens_per_second: f64,
    /// The FLOPs share searched for a speed target, and the timed structures that chose it:
    /// (share of the FLOPs, measured tokens/s against the teacher).
    pub speed_table: Vec<(f64, f64)>,
    pub candidates: Vec<CandidateRecord>,
    /// Chains refused by their plan before anything ran, and why.
    pub refused_by_plan: Vec<(String, String)>,
    pub stages: Vec<StageRecord>,
    /// Seconds spent by every invocation so far, saved with each record (a killed search counts
    /// the time it had spent).
    #[serde(default)]
    pub elapsed_seconds: f64,
    /// Numbers decided from timings (steps per round, epochs): a resumed run reuses them so it
    /// repeats the same runs.
    pub decisions: BTreeMap<String, f64>,
    pub winner: Option<Winner>,
}

impl CompressRecord {
    pub const FILE: &'static str = "compress.json";

    /// The x value of a candidate in the chart: its size in the target's measure.
    fn measure(&self, c: &CandidateRecord) -> Option<f64> {
        match self.target {
            Target::Params { .. } => c.cut_params.map(|p| p as f64),
            _ => c
                .cut_flops
                .map(|f| f as f64 / self.teacher_flops.max(1) as f64),
        }
    }

    /// The report: the candidates' dev F1 at each fidelity against the target's measure, the
    /// table of every candidate, the stages' time against `--hours`, and the winner.
    pub fn markdown(&self) -> (String, String) {
        let x_label = match self.target {
            Target::Params { .. } => "unique parameters",
            Target::Flops { .. } | Target::Speedup { .. } => "share of the teacher's encoder FLOPs",
        };
        let mut by_stage: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for c in &self.candidates {
            let Some(x) = self.measure(c) else { continue };
            for f in &c.fidelities {
                let stage = f.stage.split('-').next().unwrap_or("").to_string();
                by_stage.entry(stage).or_default().push((x, f.dev_f1));
            }
        }
        let chart = Chart {
            title: "compress: candidates' dev F1 by fidelity".into(),
            x_label: x_label.into(),
            y_label: "dev F1".into(),
            series: by_stage
                .into_iter()
                .map(|(stage, points)| Series::new(stage, points, Style::Points))
                .collect(),
            references: vec![Reference {
                name: "teacher (dev subset)".into(),
                y: self.teacher_dev_subset_f1,
                dashed: true,
            }],
            x_range: None,
            y_range: None,
        };
        let mut md = String::new();
        md.push_str("# compress\n\n");
        md.push_str(&format!("`{}`\n\n", self.command));
        md.push_str(&format!(
            "Target: {}; teacher {} unique parameters, {} encoder FLOPs per token, dev-subset F1 {:.4}.\n\n",
            match self.target {
                Target::Params { max } => format!("at most {} unique parameters", group(max)),
                Target::Flops { ratio } => format!("at most {:.1}% of the encoder FLOPs", ratio * 100.0),
                Target::Speedup { ratio } => format!("{ratio}× the teacher's tokens/s"),
            },
            group(self.teacher_params),
            group(self.teacher_flops),
            self.teacher_dev_subset_f1
        ));
        md.push_str("![candidates](candidates.svg)\n\n");
        md.push_str(
            "| candidate | chain | params | FLOPs share | dev F1 by fidelity | dropped |\n",
        );
        md.push_str("|---|---|---:|---:|---|---|\n");
        for c in &self.candidates {
            let chain = c
                .candidate
                .cuts
                .iter()
                .map(|cut| cut.kind.as_str())
                .collect::<Vec<_>>()
                .join(" → ");
            let fids = c
                .fidelities
                .iter()
                .map(|f| match f.lr {
                    Some(lr) => format!("{} (lr {lr:e}): {:.4}", f.stage, f.dev_f1),
                    None => format!("{}: {:.4}", f.stage, f.dev_f1),
                })
                .collect::<Vec<_>>()
                .join("; ");
            md.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                c.candidate.name,
                chain,
                c.cut_params.map(group).unwrap_or_else(|| "—".into()),
                c.cut_flops
                    .map(|f| format!("{:.3}", f as f64 / self.teacher_flops.max(1) as f64))
                    .unwrap_or_else(|| "—".into()),
                fids,
                c.dropped.as_deref().unwrap_or("")
            ));
        }
        if !self.refused_by_plan.is_empty() {
            md.push_str("\nRefused by their plan before anything ran:\n\n");
            for (name, why) in &self.refused_by_plan {
                md.push_str(&format!("- {name}: {why}\n"));
            }
        }
        md.push_str(&format!(
            "\n| stage | seconds | budget (s) |\n|---|---:|---:|\n{}",
            self.stages
                .iter()
                .map(|s| format!(
                    "| {} | {:.0} | {:.0} |\n",
                    s.stage, s.seconds, s.budget_seconds
                ))
                .collect::<String>()
        ));
        md.push_str(&format!(
            "| all | {:.0} | {:.0} |\n",
            self.stages.iter().map(|s| s.seconds).sum::<f64>(),
            self.hours * 3600.0
        ));
        if let Some(w) = &self.winner {
            md.push_str(&format!(
                "\n## Winner: {}\n\n{} unique parameters, {:.1}% of the encoder FLOPs; distilled {} epoch(s) at lr {:e}{}{}: dev F1 {:.4}{}{}.\n\nModel: `{}`; reproduce it with `surgery run {}`. Training curves: `report/`.\n",
                w.candidate,
                group(w.params),
                100.0 * w.flops as f64 / self.teacher_flops.max(1) as f64,
                w.epochs,
                w.lr,
                if w.augment { ", augmented data" } else { "" },
                if w.hidden_weight > 0.0 { ", hidden-state matching" } else { "" },
                w.dev_f1,
                w.test_f1.map(|t| format!(", test F1 {t:.4}")).unwrap_or_default(),
                w.measured_speedup
                    .map(|s| format!(", {s:.2}× the teacher's tokens/s"))
                    .unwrap_or_default(),
                w.model.display(),
                w.recipe.display()
            ));
            let predicted = self
                .candidates
                .iter()
                .find(|c| c.candidate.name == w.candidate)
                .and_then(|c| c.predicted_speedup);
            if let (Some(p), Some(m)) = (predicted, w.measured_speedup) {
                md.push_str(&format!(
                    "\nSpeed: the latency table predicted {p:.2}× the teacher's tokens/s; the finished model measured {m:.2}× ({:+.0}%).\n",
                    100.0 * (m / p - 1.0)
                ));
            }
        }
        (md, chart.to_svg())
    }
}
