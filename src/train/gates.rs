//! `train gates`: learns one hard-concrete gate per attention head together with the model,
//! with an L0 penalty λ·E[open heads] (Voita et al. 2019). `--target-heads K` replaces the
//! hand-tuned λ by a proportional controller, λ = η·max(0, E[open] − K): the penalty acts only
//! while too many heads are expected open and vanishes at the target, so the task loss alone
//! decides which gates reopen. (An integrating controller, λ ← λ + η·(E − K), was tried first
//! on MiniLM: it wound up and closed every gate before relaxing.) The gates are written to
//! `gates.json` (for `remove-heads --gates`) and their trajectories to `gates.svg`.

use std::path::{Path, PathBuf};

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::data::Example;
use crate::error::{Error, Result};
use crate::eval::BatchData;
use crate::io::artefacts::{read_metrics, MetricLine};
use crate::model::gates::GatesFile;
use crate::model::gates::HeadGates;
use crate::model::loss::batch_cross_entropy;
use crate::model::{Bert, Mode, Outputs};
use crate::train::command::{CommonArgs, TrainingCommand};
use crate::train::inputs::{finetune_inputs, PreparedRun};
use crate::train::objective::Objective;
use crate::train::optim::OptParam;
use crate::train::run_dir::RunDir;
use crate::train::setup;
use crate::train::trainer::TrainOutcome;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct GateSpec {
    /// Weight λ of the L0 penalty (expected number of open heads).
    #[arg(
        long,
        conflicts_with = "target_heads",
        required_unless_present = "target_heads",
        value_parser = crate::util::options::non_negative,
    )]
    pub l0: Option<f64>,
    /// Aim for this many open heads (λ adapted by a controller instead of --l0).
    #[arg(long)]
    pub target_heads: Option<usize>,
    /// Controller gain η for --target-heads: λ = η·max(0, E[open] − K).
    #[arg(long, default_value_t = 0.01, value_parser = crate::util::options::positive_number)]
    pub lambda_lr: f64,
    /// Learning rate of the gates' log α (the weights use --lr).
    #[arg(long, default_value_t = 0.05, value_parser = crate::util::options::positive_number)]
    pub gate_lr: f64,
    /// Initial log α (3: every gate starts ~99% open).
    #[arg(long, default_value_t = 3.0, value_parser = crate::util::options::finite)]
    pub gate_init: f64,
}

/// `train gates`' own options.
#[derive(Debug, Clone, clap::Args)]
pub struct GatesArgs {
    /// Fine-tuned checkpoint folder.
    pub checkpoint: PathBuf,
    #[command(flatten)]
    pub gates: GateSpec,
}

impl TrainingCommand for GatesArgs {
    const NAME: &'static str = "train gates";
    const ABOUT: &'static str =
        "Learn hard-concrete head gates with an L0 penalty (writes gates.json and gates.svg)";
    const EXAMPLE: &'static [&'static str] = &["--target-heads", "4"];
    const OUTPUTS: &'static [(&'static str, &'static str)] = &[("gates", "gates.json")];

    /// Fine-tuning with gates and the L0 penalty.
    fn train(&self, common: &CommonArgs) -> Result<TrainOutcome> {
        let (input, gates, spec) = (&self.checkpoint, &self.gates, &common.spec);
        if gates.l0.is_some_and(|l| l < 0.0) {
            return Err(Error::Spec("--l0 must be non-negative".into()));
        }
        let open = setup::open(common, &[input])?;
        let prepared = finetune_inputs(input, common)?;
        let head_gates = head_gates(input, &prepared, gates, &open.device)?;
        let extra_params: Vec<OptParam> = head_gates
            .log_alpha
            .iter()
            .enumerate()
            .map(|(l, v)| {
                OptParam::external(
                    &format!("gates.log_alpha.{l}"),
                    v.clone(),
                    false,
                    gates.gate_lr / spec.lr,
                )
            })
            .collect();
        let provenance = serde_json::json!({
            "input": input, "data": common.data, "gates": gates, "files": prepared.files
        });
        // The saved checkpoints carry no gates: a test score of them would not be the gated
        // model's. Remove the heads (`remove-heads --gates`), then evaluate.
        let prepared = PreparedRun {
            test: None,
            ..prepared
        };
        let mut objective = GatedCrossEntropy {
            gates: head_gates,
            extra_params,
            spec: gates.clone(),
            lambda: gates.l0.unwrap_or(0.0),
        };
        open.ready(prepared, common)?
            .fit(common, provenance, &mut objective)
    }
}

/// One gate per head of the prepared model, every one at `--gate-init`; refuses a model
/// without heads and a target above their number.
fn head_gates(
    input: &Path,
    prepared: &PreparedRun,
    gates: &GateSpec,
    device: &candle_core::Device,
) -> Result<HeadGates> {
    let heads = prepared.ckpt.arch.heads_per_layer();
    let total: usize = heads.iter().sum();
    if total == 0 {
        return Err(Error::Spec(format!(
            "{}: the model has no attention heads to gate",
            input.display()
        )));
    }
    if gates.target_heads.is_some_and(|k| k > total) {
        return Err(Error::Spec(format!(
            "--target-heads exceeds the model's {total} heads"
        )));
    }
    Ok(HeadGates::new(&heads, gates.gate_init, device)?)
}

/// Writes `gates.json` for `remove-heads --gates`.
pub fn write_gates_file(path: &Path, model: &Bert) -> Result<()> {
    let gates = model
        .gates()
        .ok_or_else(|| Error::Internal("gates.json asked of a model without gates".into()))?;
    let arch = model.arch();
    let file = GatesFile {
        heads_per_layer: arch.heads_per_layer(),
        hidden_size: arch.hidden,
        gates: gates.values()?,
    };
    let text = serde_json::to_string_pretty(&file)
        .map_err(|e| Error::Internal(format!("gates.json does not serialise: {e}")))?;
    crate::io::atomic::replace_file(path, |tmp| {
        std::fs::write(tmp, text.as_bytes()).map_err(|e| Error::io(tmp, e))
    })
}

/// Cross-entropy plus λ·E[open heads] over hard-concrete head gates.
struct GatedCrossEntropy {
    gates: HeadGates,
    extra_params: Vec<OptParam>,
    spec: GateSpec,
    /// The current L0 weight (fixed, or set by the controller each step).
    lambda: f64,
}

impl Objective for GatedCrossEntropy {
    fn op(&self) -> &'static str {
        GatesArgs::NAME
    }

    fn extra_params(&self) -> Vec<OptParam> {
        self.extra_params.clone()
    }

    fn prepare(&self, model: Bert) -> Bert {
        model.with_gates(self.gates.clone())
    }

    fn loss(
        &mut self,
        model: &Bert,
        batch: &BatchData,
        _: &[&Example],
        mode: &mut Mode,
    ) -> Result<Tensor> {
        let out = model.forward(&batch.batch, mode, Outputs::default())?;
        let task = batch_cross_entropy(&out, &batch.labels)?;
        let open = self.gates.expected_open()?;
        let Some(k) = self.spec.target_heads else {
            return Ok((task + (open * self.lambda)?)?);
        };
        // The controller: λ = rate · max(E[open] − K, 0), read on the host in RAM; on a device
        // it stays there (no transfer inside a step).
        if open.device().is_cpu() {
            let e = open.to_scalar::<f32>()? as f64;
            self.lambda = self.spec.lambda_lr * (e - k as f64).max(0.0);
            return Ok((task + (open * self.lambda)?)?);
        }
        let lambda = ((open.detach() - k as f64)?.relu()? * self.spec.lambda_lr)?;
        Ok((task + (open * lambda)?)?)
    }

    fn log_fields(&self, _: &Bert) -> Result<serde_json::Map<String, serde_json::Value>> {
        let mut fields = serde_json::Map::new();
        let gates: Vec<serde_json::Value> = self
            .gates
            .values()?
            .into_iter()
            .map(serde_json::Value::from)
            .collect();
        fields.insert("gates".into(), gates.into());
        fields.insert(
            "expected_open_heads".into(),
            (self.gates.expected_open()?.to_scalar::<f32>()? as f64).into(),
        );
        Ok(fields)
    }

    /// `gates.json` for `remove-heads --gates` and the trajectories in `gates.svg`.
    fn finish(&self, run: &RunDir, model: &Bert) -> Result<()> {
        write_gates_file(&run.path.join("gates.json"), model)?;
        let metrics = read_metrics(&run.path.join("metrics.jsonl"))?;
        if let Some(svg) = gates_svg(&metrics) {
            let path = run.path.join("gates.svg");
            std::fs::write(&path, svg).map_err(|e| Error::io(&path, e))?;
        }
        Ok(())
    }
}

/// An SVG of gate trajectories (one line per head, coloured by layer) from `metrics.jsonl`.
pub fn gates_svg(metrics: &[MetricLine]) -> Option<String> {
    let points: Vec<(f64, Vec<Vec<f64>>)> = metrics
        .iter()
        .filter_map(|l| match l {
            MetricLine::Train(t) => Some((
                t.step as f64,
                serde_json::from_value(t.extra.get("gates")?.clone()).ok()?,
            )),
            MetricLine::Eval(_) => None,
        })
        .collect();
    let (last_step, first) = (points.last()?.0.max(1.0), &points.first()?.1);
    let (w, h, left, top, plot_w, plot_h) = (720.0, 420.0, 60.0, 30.0, 620.0, 330.0);
    let x = |s: f64| left + plot_w * s / last_step;
    let y = |g: f64| top + plot_h * (1.0 - g);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="18" text-anchor="middle" font-size="14">Head gate values (deterministic) during training</text>
<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="black"/><line x1="{left}" y1="{top}" x2="{left}" y2="{}" stroke="black"/>
<text x="{}" y="{}" text-anchor="middle">optimizer step</text>
<text x="15" y="{}" transform="rotate(-90 15 {})" text-anchor="middle">gate value</text>
"#,
        w / 2.0,
        top + plot_h,
        left + plot_w,
        top + plot_h,
        top + plot_h,
        left + plot_w / 2.0,
        h - 10.0,
        top + plot_h / 2.0,
        top + plot_h / 2.0
    );
    for frac in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let step = (last_step * frac).round();
        svg.push_str(&format!(
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{step}</text>"#,
            x(step),
            top + plot_h + 16.0
        ));
        svg.push('\n');
    }
    for g in [0.0, 0.5, 1.0] {
        svg.push_str(&format!(
            r#"<text x="{}" y="{}" text-anchor="end">{g}</text>"#,
            left - 5.0,
            y(g) + 4.0
        ));
        svg.push('\n');
    }
    let layers = first.len();
    for (l, layer) in first.iter().enumerate() {
        let hue = 360.0 * l as f64 / layers.max(1) as f64;
        for head in 0..layer.len() {
            let path: Vec<String> = points
                .iter()
                .filter_map(|(s, g)| Some(format!("{:.1},{:.1}", x(*s), y(*g.get(l)?.get(head)?))))
                .collect();
            svg.push_str(&format!(
                r#"<polyline fill="none" stroke="hsl({hue:.0},70%,45%)" stroke-opacity="0.7" points="{}"/>"#,
                path.join(" ")
            ));
            svg.push('\n');
        }
        svg.push_str(&format!(
            r#"<rect x="{}" y="{}" width="10" height="10" fill="hsl({hue:.0},70%,45%)"/><text x="{}" y="{}">layer {l}</text>"#,
            left + plot_w + 5.0 - 60.0,
            top + 5.0 + 16.0 * l as f64,
            left + plot_w + 20.0 - 60.0,
            top + 14.0 + 16.0 * l as f64
        ));
        svg.push('\n');
    }
    svg.push_str("</svg>\n");
    Some(svg)
}
