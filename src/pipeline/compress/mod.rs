//! `surgery compress`: from a teacher and one target (unique parameters, a share of the encoder
//! FLOPs, or a measured speed-up) to the best model the cuts and the trainer can make in a time
//! budget, and the recipe that reproduces it.
//!
//! The search is multi-fidelity, cheapest first, so that time goes to the chains that earn it:
//! 1. every chain of cuts that meets the target is planned tensor-free (chains that cannot meet
//!    it are refused before anything runs);
//! 2. each is cut (no training) and scored on a dev subset;
//! 3. the better half, each at two learning rates, get short distillation runs, and successive
//!    halving (Jamieson & Talwalkar 2016; Hyperband's inner loop) keeps the better half of the
//!    arms while doubling their steps, until one is left;
//! 4. the winner gets the full recovery (KL·τ² + CE, augmented data, hidden-state matching,
//!    as many epochs as the time left allows: the cost of hidden-state matching is timed on the
//!    winner, and the teacher's pass over the augmented sentences is planned for), and the test
//!    set is evaluated once, at the end.
//!
//! Every candidate at every fidelity is a recipe run by the library's runner, so a killed
//! `compress` resumes where it stopped, and the winner's recipe reproduces its weights.

mod candidates;
mod record;
mod speed;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub use candidates::{Candidate, Cut, Target};
pub use record::{CandidateRecord, CompressRecord, Fidelity, StageRecord, Winner};

use crate::budget::flops::{Flops, DEFAULT_SEQ_LEN};
use crate::budget::{group, parse_count, Budget};
use crate::data::{read_dataset, ReadOptions};
use crate::error::{Error, Result};
use crate::io::artefacts::{read_json, write_json, EvalRecord};
use crate::io::Checkpoint;
use crate::model::Precision;
use crate::pipeline::runner::{self, Outcome, Plan, Progress};
use crate::util::options;

/// Where a speed target is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Runtime {
    /// `surgery eval`, f32.
    Surgery,
    /// `surgery eval --precision bf16`.
    SurgeryBf16,
    /// ONNX Runtime (its Python package), the model exported as `surgery export` writes it.
    Onnx,
    /// ONNX Runtime with the linears exported as `surgery export --quantize int8` writes them.
    OnnxInt8,
}

#[derive(Debug, Clone, clap::Args)]
pub struct CompressArgs {
    /// The teacher: a checkpoint with a token-classification head (never modified).
    pub teacher: PathBuf,
    /// Labelled training data (CoNLL or JSONL): calibration and distillation.
    #[arg(long)]
    pub train: PathBuf,
    /// Labelled dev data: every decision of the search is made on it.
    #[arg(long)]
    pub dev: PathBuf,
    /// Labelled test data, evaluated once, on the winner, at the end.
    #[arg(long)]
    pub test: Option<PathBuf>,
    /// Output folder: the model, compress.json, recipe.toml, report/ and the candidates' runs.
    #[arg(long)]
    pub out: PathBuf,
    /// Target: at most this many unique parameters (e.g. 4180329, 20M).
    #[arg(long, value_parser = parse_count, group = "target")]
    pub params: Option<u64>,
    /// Target: at most this share of the teacher's encoder FLOPs per token (at --seq-len).
    #[arg(long, value_parser = options::open_fraction, group = "target")]
    pub flops: Option<f64>,
    /// Target: at least this many times the teacher's tokens/s, measured on this machine in
    /// --runtime.
    #[arg(long, value_parser = options::positive_number, group = "target")]
    pub speedup: Option<f64>,
    /// Where --speedup is measured.
    #[arg(long, value_enum, default_value_t = Runtime::Surgery)]
    pub runtime: Runtime,
    /// Time budget in hours for the whole search.
    #[arg(long, default_value_t = 2.0, value_parser = options::positive_number)]
    pub hours: f64,
    /// The sequence length FLOPs are counted at.
    #[arg(long, default_value_t = DEFAULT_SEQ_LEN, value_parser = options::positive)]
    pub seq_len: usize,
    /// Seed of every training run.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Dev sentences that score the cheap fidelities (the final model is chosen on all of dev).
    #[arg(long, default_value_t = 1000, value_parser = options::positive)]
    pub dev_sentences: usize,
    /// Training sentences the calibrated cuts read.
    #[arg(long, default_value_t = 512, value_parser = options::positive)]
    pub calib_sentences: usize,
    /// The most epochs of the final distillation: a guard for long budgets; below it the time
    /// left decides.
    #[arg(long, default_value_t = 20, value_parser = options::positive)]
    pub max_epochs: usize,
    /// Sentences per training batch.
    #[arg(long, default_value_t = 32, value_parser = options::positive)]
    pub batch_size: usize,
    /// Tokens per training window (lowered to the model's positions).
    #[arg(long, default_value_t = options::TRAIN_MAX_LEN_DEFAULT, value_parser = options::max_len)]
    pub max_len: usize,
    /// Precision of the training runs' linears.
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    pub precision: Precision,
    /// List the candidates with their planned sizes and FLOPs; run nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// How a compress call ended.
pub enum CompressResult {
    /// `--dry-run`: the candidates that meet the target, and the chains their plan refused.
    Planned {
        teacher_params: u64,
        teacher_flops: u64,
        candidates: Vec<Candidate>,
        refused: Vec<(String, String)>,
    },
    /// The teacher meets the target already; nothing was written.
    TeacherMeetsTarget(String),
    Finished(Box<CompressRecord>),
}

/// Learning rates each short-distillation arm is tried at (mild cuts recover best slowly,
/// heavy ones fast: the plain recipe's 5e-5 and student A's 3e-4 bracket them).
const LEARNING_RATES: [f64; 2] = [1e-4, 3e-4];

/// The share of `--hours` the short distillations may take; the final recovery gets the rest.
const SHORT_SHARE: f64 = 0.3;
/// A distillation step with hidden-state matching against one with cached teacher logits, when
/// no plain run of the winner was timed (measured 1.4x to 1.8x on MiniLM students: the live
/// teacher weighs more as the student shrinks).
const HIDDEN_MATCHING_COST_UNMEASURED: f64 = 1.8;
/// Steps of the run that times hidden-state matching on the winner before its recovery is planned.
const PROBE_STEPS: usize = 60;
/// The name suffix of candidates planned again after the cut models measured slower than the
/// latency table predicted.
const REPLANNED: &str = "-corrected";

/// Runs the whole search; `progress` gets one line per event.
pub fn compress(args: &CompressArgs, progress: &mut dyn FnMut(&str)) -> Result<CompressResult> {
    let target = target(args)?;
    let teacher = Checkpoint::open(&args.teacher)?;
    teacher.require_labels()?;
    let teacher_params = Budget::of_checkpoint(&teacher)?.unique;
    let teacher_flops = Flops::of_arch(&teacher.arch, args.seq_len).per_token;
    match target {
        Target::Params { max } if teacher_params <= max => {
            return Ok(CompressResult::TeacherMeetsTarget(format!(
                "the teacher has {} unique parameters, within --params {}; nothing to do",
                group(teacher_params),
                group(max)
            )))
        }
        Target::Speedup { ratio } if ratio <= 1.0 => {
            return Ok(CompressResult::TeacherMeetsTarget(format!(
                "--speedup {ratio}: the teacher runs at 1× its own speed; nothing to do"
            )))
        }
        _ => {}
    }
    if matches!(args.runtime, Runtime::Onnx | Runtime::OnnxInt8)
        && args.speedup.is_some()
        && !args.dry_run
    {
        speed::onnx::check_available()?;
    }
    let calib = absolute(&args.train);
    let cut_data = candidates::CutData {
        calib: &calib,
        calib_sentences: args.calib_sentences,
        seq_len: args.seq_len,
    };
    if args.dry_run {
        // A speed target is planned at the share a --flops target would need: the share itself
        // is measured when it runs.
        let (candidates, refused) = candidates::candidates(&teacher.arch, target, &cut_data);
        return Ok(CompressResult::Planned {
            teacher_params,
            teacher_flops,
            candidates,
            refused,
        });
    }
    if let Target::Params { .. } | Target::Flops { .. } = target {
        // Before anything is written: a target no chain reaches.
        let (found, refused) = candidates::candidates(&teacher.arch, target, &cut_data);
        if found.is_empty() {
            return Err(unreachable(&teacher.arch, target, &refused));
        }
    }
    let mut search = Search::open(args, target, teacher_params, teacher_flops, progress)?;
    search.run(&teacher, &cut_data)?;
    Ok(CompressResult::Finished(Box::new(search.record)))
}

/// The one target of the command line.
fn target(args: &CompressArgs) -> Result<Target> {
    match (args.params, args.flops, args.speedup) {
        (Some(max), None, None) => Ok(Target::Params { max }),
        (None, Some(ratio), None) => Ok(Target::Flops { ratio }),
        (None, None, Some(ratio)) => Ok(Target::Speedup { ratio }),
        _ => Err(Error::Spec(
            "give one target: --params N, --flops r or --speedup x".into(),
        )),
    }
}

/// A search in progress: its folder, its record (saved after every step) and its clock.
struct Search<'a> {
    args: &'a CompressArgs,
    out: PathBuf,
    record: CompressRecord,
    started: Instant,
    /// Seconds spent before this invocation (a resumed search).
    spent_before: f64,
    progress: &'a mut dyn FnMut(&str),
    dev_subset: PathBuf,
    /// This call created the output folder.
    fresh: bool,
}

impl<'a> Search<'a> {
    /// Creates the output folder, or reopens the search it holds when its options are the same.
    fn open(
        args: &'a CompressArgs,
        target: Target,
        teacher_params: u64,
        teacher_flops: u64,
        progress: &'a mut dyn FnMut(&str),
    ) -> Result<Search<'a>> {
        let out = args.out.clone();
        let spec_hash = spec_hash(args);
        let record_path = out.join(CompressRecord::FILE);
        let reads = [
            args.teacher.as_path(),
            args.train.as_path(),
            args.dev.as_path(),
        ];
        crate::io::output::check_no_overlap(&out, &reads)?;
        let record = if record_path.is_file() {
            let record: CompressRecord = read_json(&record_path)?;
            if record.spec_hash != spec_hash {
                return Err(Error::Spec(format!(
                    "{}: holds a compress run with other options ({}); choose another --out",
                    out.display(),
                    record.command
                )));
            }
            progress(&format!(
                "resuming the search in {} (finished runs are kept)",
                out.display()
            ));
            record
        } else {
            if out.exists()
                && std::fs::read_dir(&out)
                    .map_err(|e| Error::io(&out, e))?
                    .next()
                    .is_some()
            {
                return Err(Error::OutputExists { path: out });
            }
            std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
            crate::io::output::mark(&out, "compress run")?;
            CompressRecord {
                written_by: format!("surgery {}", crate::util::build_info::VERSION),
                spec_hash,
                command: command_line(args),
                teacher: args.teacher.clone(),
                target,
                hours: args.hours,
                teacher_params,
                teacher_flops,
                teacher_dev_subset_f1: f64::NAN,
                teacher_tokens_per_second: f64::NAN,
                speed_table: vec![],
                candidates: vec![],
                refused_by_plan: vec![],
                stages: vec![],
                elapsed_seconds: 0.0,
                decisions: BTreeMap::new(),
                winner: None,
            }
        };
        let spent_before = record.elapsed_seconds;
        let fresh = record.stages.is_empty() && record.candidates.is_empty();
        Ok(Search {
            fresh,
            args,
            dev_subset: crate::io::output::absolute(&out.join("data/dev-subset.txt")),
            out,
            record,
            started: Instant::now(),
            spent_before,
            progress,
        })
    }

    fn save(&mut self) -> Result<()> {
        self.record.elapsed_seconds = self.elapsed();
        write_json(&self.out.join(CompressRecord::FILE), &self.record)
    }

    /// Seconds of the budget used so far, this invocation and earlier ones.
    fn elapsed(&self) -> f64 {
        self.spent_before + self.started.elapsed().as_secs_f64()
    }

    fn budget_seconds(&self) -> f64 {
        self.args.hours * 3600.0
    }

    fn say(&mut self, line: &str) {
        let elapsed = self.elapsed();
        let line = format!(
            "[{} of {}] {line}",
            clock(elapsed),
            clock(self.budget_seconds())
        );
        (self.progress)(&line);
    }

    /// A decision made once and kept: a resumed search repeats it instead of re-deciding.
    fn decide(&mut self, key: &str, decide: impl FnOnce(&Self) -> f64) -> f64 {
        if let Some(v) = self.record.decisions.get(key) {
            return *v;
        }
        let v = decide(self);
        self.record.decisions.insert(key.to_string(), v);
        v
    }

    fn stage_done(&mut self, stage: &str, started: f64, budget: f64) -> Result<()> {
        let seconds = self.elapsed() - started;
        match self.record.stages.iter_mut().find(|s| s.stage == stage) {
            // A stage finished before and found done again on a rerun.
            Some(s) => s.seconds += seconds,
            None => self.record.stages.push(StageRecord {
                stage: stage.to_string(),
                seconds,
                budget_seconds: budget,
            }),
        }
        self.save()
    }

    fn run(&mut self, teacher: &Checkpoint, cut_data: &candidates::CutData) -> Result<()> {
        self.prepare_data()?;
        let t0 = self.elapsed();
        self.measure_teacher()?;
        let target = self.resolve_speed_target()?;
        if self.record.candidates.is_empty() {
            let (found, refused) = candidates::candidates(&teacher.arch, target, cut_data);
            if found.is_empty() {
                return Err(unreachable(&teacher.arch, target, &refused));
            }
            self.record.refused_by_plan = refused;
            self.record.candidates = found
                .into_iter()
                .map(|candidate| CandidateRecord {
                    candidate,
                    cut_params: None,
                    cut_flops: None,
                    predicted_speedup: None,
                    measured_speedup: None,
                    fidelities: vec![],
                    dropped: None,
                    seconds: 0.0,
                })
                .collect();
        }
        if let Err(e) = self.check_hours() {
            // A folder this call made holds nothing worth keeping: a rerun with more hours
            // starts afresh instead of being refused as another search.
            if self.fresh {
                std::fs::remove_dir_all(&self.out).ok();
            }
            return Err(e);
        }
        self.stage_done("plan and measure", t0, 0.0)?;
        self.cut_all()?;
        if self.replan_for_measured_speed(teacher, cut_data)? {
            self.cut_all()?;
        }
        let (winner, lr) = self.successive_halving()?;
        self.final_recovery(winner, lr)
    }

    /// The training set's size (for the time estimates) and the dev subset the cheap
    /// fidelities are scored on: the first `--dev-sentences`.
    fn prepare_data(&mut self) -> Result<()> {
        if !self.record.decisions.contains_key("train_sentences") {
            let train = read_dataset(&self.args.train, &ReadOptions::default())?;
            let words: usize = train.sentences.iter().map(|s| s.words.len()).sum();
            let decisions = &mut self.record.decisions;
            decisions.insert("train_sentences".into(), train.sentences.len() as f64);
            decisions.insert("train_words".into(), words as f64);
        }
        if !self.record.decisions.contains_key("dev_words") {
            let dev = read_dataset(&self.args.dev, &ReadOptions::default())?;
            let words: usize = dev.sentences.iter().map(|s| s.words.len()).sum();
            self.record
                .decisions
                .insert("dev_words".into(), words as f64);
        }
        if self.dev_subset.is_file() {
            return Ok(());
        }
        let dev = read_dataset(&self.args.dev, &ReadOptions::default())?;
        let mut text = String::new();
        for s in dev.sentences.iter().take(self.args.dev_sentences) {
            for (w, t) in s.words.iter().zip(&s.tags) {
                text.push_str(&format!("{w} {t}\n"));
            }
            text.push('\n');
        }
        let dir = self.dev_subset.parent().expect("a file in a folder");
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        crate::io::atomic::write_text(&self.dev_subset, &text)
    }

    /// The teacher's dev-subset F1 (the reference of the cheap fidelities) and tokens/s.
    fn measure_teacher(&mut self) -> Result<()> {
        if self.record.teacher_dev_subset_f1.is_finite() {
            return Ok(());
        }
        let request = crate::eval::EvalRequest {
            checkpoint: self.args.teacher.clone(),
            data: self.dev_subset.clone(),
            read: ReadOptions::default(),
            unknown_labels: crate::data::labels::UnknownLabels::Error,
            matching: crate::metrics::Matching::Default,
            batch_size: 64,
            max_len: None,
            precision: Precision::F32,
            compute: crate::kernels::Compute::default(),
            write_predictions: None,
            save_json: None,
            force: false,
        };
        let e = crate::eval::run_eval(&request)?;
        self.record.teacher_dev_subset_f1 = e.record.f1;
        self.record.teacher_tokens_per_second = e.tokens_per_second;
        self.say(&format!(
            "teacher: dev-subset F1 {:.4}, {:.0} tokens/s",
            e.record.f1, e.tokens_per_second
        ));
        self.save()
    }

    /// A speed target becomes the FLOPs share the latency table predicts for it.
    fn resolve_speed_target(&mut self) -> Result<Target> {
        let Target::Speedup { ratio } = self.record.target else {
            return Ok(self.record.target);
        };
        if self.record.speed_table.is_empty() {
            self.say("timing the teacher cut to a grid of FLOPs shares");
            let table =
                self.timer()
                    .latency_table(&self.args.teacher, self.args.seq_len, &mut |line| {
                        (self.progress)(line)
                    })?;
            self.record.speed_table = table;
            self.save()?;
        }
        let share = speed::share_for(&self.record.speed_table, ratio).ok_or_else(|| {
            let fastest = self
                .record
                .speed_table
                .iter()
                .map(|p| p.1)
                .fold(0.0, f64::max);
            Error::Unreachable(format!(
                "--speedup {ratio}: the fastest structure timed here runs at {fastest:.2}× the \
                 teacher (at {:.0}% of its FLOPs); the smallest reachable target is about {fastest:.2}",
                100.0
                    * self
                        .record
                        .speed_table
                        .iter()
                        .map(|p| p.0)
                        .fold(1.0, f64::min)
            ))
        })?;
        self.record.decisions.insert("speed_share".into(), share);
        self.say(&format!(
            "--speedup {ratio}: searching at {:.1}% of the encoder FLOPs",
            share * 100.0
        ));
        Ok(Target::Flops { ratio: share })
    }

    /// Refuses a budget too small for even one candidate: its cut, a short run and one epoch.
    fn check_hours(&mut self) -> Result<()> {
        let needed = self.epoch_seconds() * 1.5 + 60.0;
        if self.budget_seconds() < needed {
            return Err(Error::Spec(format!(
                "--hours {}: too little for even one candidate (its cut, a short distillation and \
                 one epoch of recovery take about {:.2} h here); give --hours {:.2} or more",
                self.args.hours,
                needed / 3600.0,
                (needed / 3600.0 * 100.0).ceil() / 100.0
            )));
        }
        Ok(())
    }

    /// Seconds one epoch of distillation takes here: first estimated from the teacher's speed
    /// (a training step costs about three forward passes of as many tokens; 1.4 pieces a word
    /// is typical of CoNLL), then from the step time the first short run measured.
    fn epoch_seconds(&self) -> f64 {
        match self.record.decisions.get("seconds_per_step") {
            Some(step) => step * self.steps_per_epoch() as f64,
            None => {
                self.record.decisions["train_words"] * 1.4 * 3.0
                    / self.record.teacher_tokens_per_second.max(1.0)
            }
        }
    }

    /// One plain distillation epoch of the winner, read from the throughput of its longest
    /// short run: unlike the wall time of a short run, it leaves out loading, the teacher's
    /// cache and evaluations.
    fn winner_epoch_cost(&self, winner: usize) -> Option<EpochCost> {
        let run = self.longest_short_run(winner)?;
        let info: serde_json::Value = read_json(&run.join("run.json")).ok()?;
        let train_tokens = info.get("train_tokens")?.as_f64()?;
        let train_speed = logged_median(&run, "tokens_per_s")?;
        let eval_speed = logged_median(&run, "eval_tokens_per_s")?;
        // 1.4 word pieces a word is typical of CoNLL.
        let dev_tokens = self
            .record
            .decisions
            .get("dev_words")
            .copied()
            .unwrap_or(0.0)
            * 1.4;
        Some(EpochCost {
            train: train_tokens / train_speed,
            eval: dev_tokens / eval_speed,
        })
    }

    /// The folder of the winner's longest short distillation run.
    fn longest_short_run(&self, winner: usize) -> Option<PathBuf> {
        let c = &self.record.candidates[winner];
        let longest = c
            .fidelities
            .iter()
            .filter(|f| f.stage.starts_with("short-"))
            .max_by_key(|f| f.steps)?;
        let run_name = format!("{}-lr{:e}-{}", c.candidate.name, longest.lr?, longest.steps);
        Some(self.recipe_dir(&run_name).join(step_folder(0, "kd")))
    }

    /// How much slower a step with hidden-state matching is than a plain one, on the winner:
    /// a short run with the live teacher timed against the winner's plain short run.
    fn hidden_matching_cost(&mut self, winner: usize, lr: f64) -> Result<f64> {
        if let Some(v) = self.record.decisions.get("hidden_matching_cost") {
            return Ok(*v);
        }
        let Some(plain) = self
            .longest_short_run(winner)
            .and_then(|run| logged_median(&run, "tokens_per_s"))
        else {
            return Ok(self.decide("hidden_matching_cost", |_| HIDDEN_MATCHING_COST_UNMEASURED));
        };
        let name = self.record.candidates[winner].candidate.name.clone();
        self.say(&format!(
            "timing hidden-state matching on {name}: {PROBE_STEPS} steps"
        ));
        let run_name = format!("{name}-probe-hidden");
        let mut distill = self.distill_step(&[
            ("lr", format!("{lr:e}")),
            (
                "epochs",
                PROBE_STEPS.div_ceil(self.steps_per_epoch()).to_string(),
            ),
            ("max-steps", PROBE_STEPS.to_string()),
            ("log-every", (PROBE_STEPS / 6).to_string()),
            ("eval-every", PROBE_STEPS.to_string()),
            ("dev", self.dev_subset.display().to_string()),
            ("cache-teacher", self.cache("plain")),
            ("hidden-weight", "1".to_string()),
        ]);
        distill.insert(
            "input".into(),
            self.cut_dir(winner).display().to_string().into(),
        );
        let recipe = self.write_recipe(&run_name, &[("kd".to_string(), distill)])?;
        self.run_recipe(&recipe)?;
        let run = self.recipe_dir(&run_name).join(step_folder(0, "kd"));
        let hidden = logged_median(&run, "tokens_per_s").ok_or_else(|| {
            Error::Internal(format!("{}: no training speed logged", run.display()))
        })?;
        let cost = (plain / hidden).max(1.0);
        self.say(&format!(
            "  hidden-state matching: {hidden:.0} tokens/s against {plain:.0} plain ({cost:.2}x)"
        ));
        Ok(self.decide("hidden_matching_cost", |_| cost))
    }

    /// Seconds the teacher takes to write the logits of the augmented training set (twice the
    /// training sentences) at its measured inference speed; none when the cache is there.
    fn augmented_cache_seconds(&self) -> f64 {
        if Path::new(&self.cache("final")).is_file() {
            return 0.0;
        }
        self.record.decisions["train_words"] * 1.4 * 2.0
            / self.record.teacher_tokens_per_second.max(1.0)
    }

    fn steps_per_epoch(&self) -> usize {
        (self.record.decisions["train_sentences"] as usize)
            .div_ceil(self.args.batch_size)
            .max(1)
    }

    /// Stage 1: every candidate cut and scored on the dev subset.
    fn cut_all(&mut self) -> Result<()> {
        let t0 = self.elapsed();
        let n = self.record.candidates.len();
        for i in 0..n {
            if !self.record.candidates[i].fidelities.is_empty() {
                continue;
            }
            let name = self.record.candidates[i].candidate.name.clone();
            self.say(&format!("cut {}/{n}: {name}", i + 1));
            let started = Instant::now();
            let steps = self.cut_steps(i);
            let recipe = self.write_recipe(&name, &steps)?;
            self.run_recipe(&recipe)?;
            let cut = Checkpoint::open(&self.cut_dir(i))?;
            let params = Budget::of_checkpoint(&cut)?.unique;
            let flops = Flops::of_arch(&cut.arch, self.args.seq_len).per_token;
            let f1 = self.eval_f1(&name, steps.len() - 1)?;
            let meets = self.meets(params, flops);
            let seconds = started.elapsed().as_secs_f64();
            let c = &mut self.record.candidates[i];
            c.cut_params = Some(params);
            c.cut_flops = Some(flops);
            c.seconds += seconds;
            if !self.record.speed_table.is_empty() {
                c.predicted_speedup = speed::predicted_speedup(
                    &self.record.speed_table,
                    flops as f64 / self.record.teacher_flops as f64,
                );
            }
            c.fidelities.push(Fidelity {
                stage: "cut".into(),
                steps: 0,
                lr: None,
                dev_f1: f1,
                seconds,
            });
            if !meets {
                c.dropped = Some(format!(
                    "missed the target once cut ({} params, {} FLOPs/token)",
                    group(params),
                    group(flops)
                ));
            }
            if let Target::Speedup { ratio } = self.record.target {
                let measured = self.timer().speedup(&self.args.teacher, &self.cut_dir(i))?;
                let c = &mut self.record.candidates[i];
                c.measured_speedup = Some(measured);
                // Candidates of a corrected plan stay: they are the closest the table can get.
                if measured < ratio && c.dropped.is_none() && !c.candidate.name.ends_with(REPLANNED)
                {
                    c.dropped = Some(format!(
                        "measured {measured:.2}× the teacher's tokens/s once cut, below {ratio}×"
                    ));
                }
                self.say(&format!(
                    "  {name}: measured {measured:.2}× the teacher's tokens/s"
                ));
            }
            self.say(&format!(
                "  {name}: {} params, {:.1}% FLOPs, dev-subset F1 {f1:.4} with no training",
                group(params),
                100.0 * flops as f64 / self.record.teacher_flops as f64
            ));
            self.save()?;
        }
        self.stage_done("cut", t0, 0.0)
    }

    /// A speed target some cut candidates measured below: each such chain is planned once more
    /// at the share its own measurement calls for (the latency table scaled by how that cut
    /// model measured against the table's prediction: ragged structures run slower than the
    /// table's uniform ones, layers dropped whole run faster). Returns whether new candidates
    /// were planned.
    fn replan_for_measured_speed(
        &mut self,
        teacher: &Checkpoint,
        cut_data: &candidates::CutData,
    ) -> Result<bool> {
        let Target::Speedup { ratio } = self.record.target else {
            return Ok(false);
        };
        if self.record.decisions.contains_key("speed_correction") {
            return Ok(false);
        }
        let missed: Vec<(String, f64)> = self
            .record
            .candidates
            .iter()
            .filter(|c| !c.candidate.name.ends_with(REPLANNED))
            .filter_map(|c| {
                let measured = c.measured_speedup?;
                (measured < ratio)
                    .then_some((c.candidate.name.clone(), measured / c.predicted_speedup?))
            })
            .collect();
        let Some(median_factor) = median(missed.iter().map(|(_, f)| *f)) else {
            return Ok(false);
        };
        let mut replanned = vec![];
        for (name, factor) in &missed {
            let table = speed::corrected(&self.record.speed_table, *factor);
            let Some(share) = speed::share_for(&table, ratio) else {
                self.say(&format!(
                    "  {name} ran at {factor:.2} of the predicted speed: no share timed here \
                     reaches {ratio}× once corrected"
                ));
                continue;
            };
            let (found, _) =
                candidates::candidates(&teacher.arch, Target::Flops { ratio: share }, cut_data);
            let Some(mut candidate) = found.into_iter().find(|c| &c.name == name) else {
                continue;
            };
            self.say(&format!(
                "  {name} ran at {factor:.2} of the predicted speed: planned again at {:.1}% of \
                 the encoder FLOPs",
                share * 100.0
            ));
            candidate.name.push_str(REPLANNED);
            self.record
                .decisions
                .insert(format!("speed_share:{}", candidate.name), share);
            replanned.push(candidate);
        }
        if replanned.is_empty() && self.record.candidates.iter().all(|c| c.dropped.is_some()) {
            return Err(Error::Unreachable(format!(
                "--speedup {ratio}: the cut models ran at {median_factor:.2} of the speed the \
                 latency table predicted (median), and no share timed here reaches {ratio}× once \
                 corrected"
            )));
        }
        if replanned.is_empty() {
            return Ok(false);
        }
        self.record
            .decisions
            .insert("speed_correction".into(), median_factor);
        let table = self.record.speed_table.clone();
        for candidate in replanned {
            let predicted = candidate.flops.and_then(|f| {
                speed::predicted_speedup(&table, f as f64 / self.record.teacher_flops as f64)
            });
            self.record.candidates.push(CandidateRecord {
                candidate,
                cut_params: None,
                cut_flops: None,
                predicted_speedup: predicted,
                measured_speedup: None,
                fidelities: vec![],
                dropped: None,
                seconds: 0.0,
            });
        }
        self.save()?;
        Ok(true)
    }

    /// How the speed target is timed: in the chosen runtime, on the dev subset.
    fn timer(&self) -> speed::Timer {
        speed::Timer {
            runtime: self.args.runtime,
            data: self.dev_subset.clone(),
            scratch: self.out.join("speed"),
        }
    }

    fn meets(&self, params: u64, flops: u64) -> bool {
        match self.record.target {
            Target::Params { max } => params <= max,
            Target::Flops { ratio } => {
                flops as f64 <= ratio * self.record.teacher_flops as f64 * (1.0 + 1e-9)
            }
            Target::Speedup { .. } => {
                let share = self.record.decisions.get("speed_share").copied();
                share.is_none_or(|s| {
                    flops as f64 <= s * self.record.teacher_flops as f64 * (1.0 + 1e-9)
                })
            }
        }
    }

    /// Stage 2: short distillation runs with successive halving over (candidate, lr) arms; the
    /// winning arm.
    fn successive_halving(&mut self) -> Result<(usize, f64)> {
        let t0 = self.elapsed();
        let budget = SHORT_SHARE * self.budget_seconds();
        // The better half of the cut candidates (at least two), each at every learning rate.
        let mut alive: Vec<usize> = (0..self.record.candidates.len())
            .filter(|&i| self.record.candidates[i].dropped.is_none())
            .collect();
        alive.sort_by(|&a, &b| {
            let f = |i: usize| self.record.candidates[i].fidelities[0].dev_f1;
            f(b).total_cmp(&f(a)).then(a.cmp(&b))
        });
        if alive.is_empty() {
            return Err(Error::Unreachable(
                "no candidate met the target once cut (see compress.json)".into(),
            ));
        }
        let keep = alive.len().div_ceil(2).max(alive.len().min(2));
        for &i in &alive[keep..] {
            self.record.candidates[i].dropped =
                Some("lower half of the cut candidates' dev-subset F1".into());
        }
        alive.truncate(keep);
        let mut arms: Vec<(usize, f64)> = alive
            .iter()
            .flat_map(|&i| LEARNING_RATES.iter().map(move |&lr| (i, lr)))
            .collect();
        let rounds = (arms.len() as f64).log2().ceil().max(1.0) as usize;
        // Round r runs arms/2^r arms for s·2^r steps: each round costs about arms·s steps.
        let steps_per_epoch = self.steps_per_epoch();
        let first_steps = self.decide("short_first_steps", |s| {
            let step = s.epoch_seconds() / steps_per_epoch as f64;
            let per_round = budget / rounds as f64;
            let steps = per_round / (arms.len() as f64 * step.max(1e-6));
            // At least 10 steps, at most half an epoch (or 10 when an epoch is shorter).
            steps.min(steps_per_epoch as f64 / 2.0).max(10.0).floor()
        }) as usize;
        let mut steps = first_steps;
        for round in 0..rounds {
            if arms.len() <= 1 {
                break;
            }
            let mut scored = vec![];
            for (k, &(i, lr)) in arms.iter().enumerate() {
                let name = self.record.candidates[i].candidate.name.clone();
                self.say(&format!(
                    "short distillation, round {}/{rounds}, arm {}/{}: {name} at lr {lr:e}, {steps} steps",
                    round + 1,
                    k + 1,
                    arms.len()
                ));
                let f1 = self.short_run(i, lr, steps)?;
                scored.push((f1, i, lr));
            }
            scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            let survivors = scored.len().div_ceil(2);
            for &(f1, i, lr) in &scored[survivors..] {
                // A candidate is dropped once none of its arms survive.
                if !scored[..survivors].iter().any(|s| s.1 == i) {
                    self.record.candidates[i].dropped = Some(format!(
                        "round {} of the short distillations: dev-subset F1 {f1:.4} at lr {lr:e}, \
                         below the surviving arms",
                        round + 1
                    ));
                }
            }
            arms = scored[..survivors].iter().map(|s| (s.1, s.2)).collect();
            self.save()?;
            steps *= 2;
        }
        self.stage_done("short distillation", t0, budget)?;
        Ok(arms[0])
    }

    /// One short distillation arm: `steps` steps from the candidate's cut, scored on the dev
    /// subset; recorded as a fidelity.
    fn short_run(&mut self, i: usize, lr: f64, steps: usize) -> Result<f64> {
        let name = self.record.candidates[i].candidate.name.clone();
        let stage = format!("short-{steps}");
        if let Some(f) = self.record.candidates[i]
            .fidelities
            .iter()
            .find(|f| f.stage == stage && f.lr == Some(lr))
        {
            return Ok(f.dev_f1);
        }
        let started = Instant::now();
        let spe = self.steps_per_epoch();
        let epochs = steps.div_ceil(spe).max(1);
        let run_name = format!("{name}-lr{lr:e}-{steps}");
        let distill = self.distill_step(&[
            ("lr", format!("{lr:e}")),
            ("epochs", epochs.to_string()),
            ("max-steps", steps.to_string()),
            ("eval-every", steps.to_string()),
            ("dev", self.dev_subset.display().to_string()),
            ("cache-teacher", self.cache("plain")),
        ]);
        let mut distill = distill;
        distill.insert("input".into(), self.cut_dir(i).display().to_string().into());
        let all = vec![
            ("kd".to_string(), distill),
            ("dev".to_string(), eval_step(&self.dev_subset)),
        ];
        let recipe = self.write_recipe(&run_name, &all)?;
        self.run_recipe(&recipe)?;
        let f1 = self.eval_f1(&run_name, all.len() - 1)?;
        let seconds = started.elapsed().as_secs_f64();
        // The measured step time replaces the estimate (the first run's, kept on resume).
        if !self.record.decisions.contains_key("seconds_per_step") {
            self.record
                .decisions
                .insert("seconds_per_step".into(), seconds / steps.max(1) as f64);
        }
        self.record.candidates[i].seconds += seconds;
        self.record.candidates[i].fidelities.push(Fidelity {
            stage,
            steps,
            lr: Some(lr),
            dev_f1: f1,
            seconds,
        });
        self.say(&format!("  {name} at lr {lr:e}: dev-subset F1 {f1:.4}"));
        self.save()?;
        Ok(f1)
    }

    /// Stage 3: the winner's full recovery, its model, recipe and report.
    fn final_recovery(&mut self, winner: usize, lr: f64) -> Result<()> {
        let t0 = self.elapsed();
        let remaining = (self.budget_seconds() - self.elapsed()).max(0.0);
        let hidden = self.hidden_matching_cost(winner, lr)?;
        let cost = self.winner_epoch_cost(winner).unwrap_or_else(|| EpochCost {
            train: self.epoch_seconds(),
            eval: 0.0,
        });
        let train = self.decide("final_epoch_train_seconds", |_| cost.train);
        let eval = self.decide("final_epoch_eval_seconds", |_| cost.eval);
        let cache = self.decide("final_cache_seconds", |s| s.augmented_cache_seconds());
        // What the epochs may use: a tenth kept back, less the teacher's cache of the training
        // set and the closing dev and test evaluations.
        let left = (self.budget_seconds() - self.elapsed()).max(0.0) * 0.9 - 2.0 * eval;
        // Augmentation doubles an epoch's sentences; hidden-state matching runs the teacher's
        // encoder live at every step.
        let augmented_epoch = 2.0 * train * hidden + eval;
        let max_epochs = self.args.max_epochs as f64;
        let epochs_aug = self.decide("final_epochs_augmented", |_| {
            ((left - cache) / augmented_epoch).floor().min(max_epochs)
        });
        // Augmentation doubles the sentences of an epoch: worth it only when it still leaves two
        // epochs, else the same time goes to more plain epochs.
        let (epochs, augment) = if epochs_aug >= 2.0 {
            (epochs_aug as usize, true)
        } else {
            let plain = self.decide("final_epochs_plain", |_| {
                ((left - cache / 2.0) / (train * hidden + eval))
                    .floor()
                    .clamp(1.0, max_epochs)
            });
            (plain as usize, false)
        };
        let name = self.record.candidates[winner].candidate.name.clone();
        self.say(&format!(
            "final recovery of {name}: {epochs} epoch(s) at lr {lr:e}{}",
            if augment {
                ", augmented, hidden-state matching"
            } else {
                ""
            }
        ));
        let mut options = vec![
            ("lr", format!("{lr:e}")),
            ("epochs", epochs.to_string()),
            ("dev", absolute(&self.args.dev)),
            ("cache-teacher", self.cache("final")),
            ("hidden-weight", "1".to_string()),
        ];
        if augment {
            options.push(("augment", "mention,token".into()));
            options.push(("augment-ratio", "1".into()));
        }
        if let Some(test) = &self.args.test {
            options.push(("test", absolute(test)));
        }
        let distill = self.distill_step(&options);
        let mut steps = self.cut_steps(winner);
        steps.pop();
        steps.push(("recover".into(), distill));
        steps.push(("dev".into(), eval_step(&self.args.dev)));
        let final_name = format!("{name}-final");
        let recipe = self.write_recipe(&final_name, &steps)?;
        let public = self.out.join("recipe.toml");
        std::fs::copy(&recipe, &public).map_err(|e| Error::io(&public, e))?;
        self.run_recipe(&recipe)?;
        let run_dir = self
            .recipe_dir(&final_name)
            .join(step_folder(steps.len() - 2, "recover"));
        let best = run_dir.join("best");
        let model = self.out.join("model");
        copy_checkpoint(&best, &model)?;
        let ckpt = Checkpoint::open(&model)?;
        let params = Budget::of_checkpoint(&ckpt)?.unique;
        let flops = Flops::of_arch(&ckpt.arch, self.args.seq_len).per_token;
        let dev_f1 = self.eval_f1(&final_name, steps.len() - 1)?;
        let test_f1 = read_json::<EvalRecord>(&run_dir.join("test.json"))
            .ok()
            .map(|r| r.f1);
        let measured_speedup = match self.record.target {
            Target::Speedup { .. } => Some(self.timer().speedup(&self.args.teacher, &model)?),
            _ => None,
        };
        let seconds = self.elapsed() - t0;
        self.record.candidates[winner].fidelities.push(Fidelity {
            stage: "final".into(),
            steps: epochs,
            lr: Some(lr),
            dev_f1,
            seconds,
        });
        self.record.winner = Some(Winner {
            candidate: name,
            model: model.clone(),
            recipe: public,
            lr,
            epochs,
            augment,
            hidden_weight: 1.0,
            params,
            flops,
            dev_f1,
            test_f1,
            measured_speedup,
        });
        self.stage_done("final recovery", t0, remaining)?;
        self.write_report(&run_dir)
    }

    fn write_report(&mut self, run_dir: &Path) -> Result<()> {
        let dir = self.out.join("report");
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let (markdown, svg) = self.record.markdown();
        crate::io::atomic::write_text(&dir.join("compress.md"), &markdown)?;
        crate::io::atomic::write_text(&dir.join("candidates.svg"), &svg)?;
        // The winner's training curves, by the report command's own code.
        let entries = crate::pipeline::report::collect(&[run_dir.to_path_buf()])?;
        let rendered = crate::pipeline::report::build(&entries, None, "surgery compress")?;
        crate::io::atomic::write_text(&dir.join("README.md"), &rendered.markdown)?;
        for (name, text) in &rendered.files {
            crate::io::atomic::write_text(&dir.join(name), text)?;
        }
        self.save()
    }

    /// The teacher-logit cache for the runs without (`plain`) or with augmentation (`final`).
    fn cache(&self, kind: &str) -> String {
        absolute(&self.out.join(format!("cache/teacher-{kind}.safetensors")))
    }

    /// A distillation step from the previous step (the last cut) with the search's fixed options.
    fn distill_step(&self, extra: &[(&str, String)]) -> toml::Table {
        let mut t = toml::Table::new();
        t.insert("kind".into(), "train distill".into());
        t.insert("teacher".into(), "${teacher}".into());
        t.insert("train".into(), absolute(&self.args.train).into());
        let fixed = [
            ("alpha", "0.5".to_string()),
            ("temperature", "2".to_string()),
            ("seed", self.args.seed.to_string()),
            ("batch-size", self.args.batch_size.to_string()),
            ("max-len", self.args.max_len.to_string()),
            ("precision", precision_name(self.args.precision).to_string()),
        ];
        for (k, v) in fixed.iter().chain(extra) {
            t.insert(k.to_string(), v.clone().into());
        }
        t
    }

    /// The steps of a candidate's cuts, then the cut model's evaluation on the dev subset.
    fn cut_steps(&self, i: usize) -> Vec<(String, toml::Table)> {
        let cuts = &self.record.candidates[i].candidate.cuts;
        let mut steps = vec![];
        for (k, cut) in cuts.iter().enumerate() {
            let mut t = toml::Table::new();
            t.insert("kind".into(), cut.kind.clone().into());
            if k == 0 {
                t.insert("input".into(), "${teacher}".into());
            }
            for (key, value) in &cut.options {
                let value: toml::Value = if value.is_empty() {
                    true.into()
                } else {
                    value.clone().into()
                };
                t.insert(key.clone(), value);
            }
            let name = if k + 1 == cuts.len() {
                "cut".to_string()
            } else {
                format!("cut{}", k + 1)
            };
            steps.push((name, t));
        }
        steps.push(("dev".into(), eval_step(&self.dev_subset)));
        steps
    }

    /// Writes `recipes/NAME.toml` with the teacher as a variable.
    fn write_recipe(&self, name: &str, steps: &[(String, toml::Table)]) -> Result<PathBuf> {
        let mut text = format!(
            "# Written by `surgery compress`: {}\n[recipe]\nname = {}\n\n[vars]\nteacher = {}\n",
            self.record.command,
            toml::Value::from(name),
            toml::Value::from(absolute(&self.args.teacher))
        );
        for (step, table) in steps {
            text.push_str(&format!(
                "\n[[step]]\nname = {}\n",
                toml::Value::from(step.as_str())
            ));
            // The kind and the input first, as people write recipes.
            let first = ["kind", "input"];
            for key in first {
                if let Some(v) = table.get(key) {
                    text.push_str(&format!("{key} = {v}\n"));
                }
            }
            for (k, v) in table.iter().filter(|(k, _)| !first.contains(&k.as_str())) {
                text.push_str(&format!("{k} = {v}\n"));
            }
        }
        let path = self.out.join("recipes").join(format!("{name}.toml"));
        let dir = path.parent().expect("a file in a folder");
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        crate::io::atomic::write_text(&path, &text)?;
        Ok(path)
    }

    fn recipe_dir(&self, name: &str) -> PathBuf {
        self.out.join("runs").join(name)
    }

    /// The folder of candidate `i`'s cut model (its recipe's last cut step).
    fn cut_dir(&self, i: usize) -> PathBuf {
        let c = &self.record.candidates[i].candidate;
        self.recipe_dir(&c.name)
            .join(step_folder(c.cuts.len() - 1, "cut"))
    }

    /// Runs a recipe with the library's runner (finished steps are skipped).
    fn run_recipe(&mut self, recipe: &Path) -> Result<()> {
        let mut plan = Plan::check(recipe, &[], &self.out.join("runs"))?;
        let progress = &mut *self.progress;
        let outcome = runner::execute(&mut plan, None, &mut |event| {
            if let Progress::Running { step, .. } = event {
                progress(&format!("    {} ({})", step.name, step.kind.name()));
            }
        })?;
        match outcome {
            Outcome::Finished(_) => Ok(()),
            Outcome::Failed { step, error, .. } => Err(match error {
                crate::pipeline::step::StepError::Failed(e) => e,
                crate::pipeline::step::StepError::OverBudget { unique, max } => Error::Internal(
                    format!("step {}: {unique} unique parameters over {max}", step + 1),
                ),
            }),
        }
    }

    /// The F1 an `eval` step of a recipe wrote.
    fn eval_f1(&self, recipe: &str, index: usize) -> Result<f64> {
        let path = self
            .recipe_dir(recipe)
            .join(step_folder(index, "dev"))
            .join("eval.json");
        Ok(read_json::<EvalRecord>(&path)?.f1)
    }
}

/// One plain distillation epoch, in seconds.
struct EpochCost {
    /// The training steps.
    train: f64,
    /// The dev evaluation that closes the epoch.
    eval: f64,
}

/// The median of a value a training run logged, its first row (the warm-up) left out when
/// there are others.
fn logged_median(run: &Path, key: &str) -> Option<f64> {
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).ok()?;
    let values: Vec<f64> = metrics
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|r| r.get(key)?.as_f64())
        .collect();
    let skip = usize::from(values.len() > 1);
    median(values.into_iter().skip(skip))
}

fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = values.filter(|x| x.is_finite() && *x > 0.0).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

/// The absolute path, as the recipes write it (they reproduce from any working folder).
fn absolute(path: &Path) -> String {
    crate::io::output::absolute(path).display().to_string()
}

/// An `eval` step on `data`.
fn eval_step(data: &Path) -> toml::Table {
    let mut t = toml::Table::new();
    t.insert("kind".into(), "eval".into());
    t.insert("data".into(), absolute(data).into());
    t
}

fn step_folder(index: usize, name: &str) -> String {
    format!("{:02}-{name}", index + 1)
}

fn precision_name(p: Precision) -> &'static str {
    match p {
        Precision::F32 => "f32",
        Precision::Bf16 => "bf16",
    }
}

/// Copies a checkpoint folder's files into `to` atomically (a rerun replaces its own copy).
fn copy_checkpoint(from: &Path, to: &Path) -> Result<()> {
    let dir = crate::io::atomic::AtomicDir::create(to, true)?;
    for entry in std::fs::read_dir(from).map_err(|e| Error::io(from, e))? {
        let entry = entry.map_err(|e| Error::io(from, e))?;
        if entry.path().is_file() {
            let name = entry.file_name().to_string_lossy().into_owned();
            std::fs::copy(entry.path(), dir.path(&name)).map_err(|e| Error::io(entry.path(), e))?;
        }
    }
    dir.commit()
}

/// `h:mm`.
fn clock(seconds: f64) -> String {
    let minutes = (seconds / 60.0).round() as u64;
    format!("{}:{:02}", minutes / 60, minutes % 60)
}

/// The options that decide the result (not --dry-run).
fn spec_hash(args: &CompressArgs) -> String {
    crate::util::hash::fnv1a(command_line(args).as_bytes())
}

/// The command line that reproduces the search.
fn command_line(args: &CompressArgs) -> String {
    let mut words = vec![
        "surgery compress".to_string(),
        args.teacher.display().to_string(),
        format!("--train {}", args.train.display()),
        format!("--dev {}", args.dev.display()),
    ];
    if let Some(t) = &args.test {
        words.push(format!("--test {}", t.display()));
    }
    words.push(format!("--out {}", args.out.display()));
    if let Some(p) = args.params {
        words.push(format!("--params {p}"));
    }
    if let Some(f) = args.flops {
        words.push(format!("--flops {f}"));
    }
    if let Some(s) = args.speedup {
        let runtime = clap::ValueEnum::to_possible_value(&args.runtime)
            .map(|v| v.get_name().to_string())
            .unwrap_or_default();
        words.push(format!("--speedup {s} --runtime {runtime}"));
    }
    words.push(format!(
        "--hours {} --seq-len {} --seed {} --dev-sentences {} --calib-sentences {} --max-epochs {} --batch-size {} --max-len {} --precision {}",
        args.hours,
        args.seq_len,
        args.seed,
        args.dev_sentences,
        args.calib_sentences,
        args.max_epochs,
        args.batch_size,
        args.max_len,
        precision_name(args.precision)
    ));
    words.join(" ")
}

/// The error of a target no chain reaches, naming the smallest reachable.
fn unreachable(teacher: &crate::arch::Arch, target: Target, refused: &[(String, String)]) -> Error {
    let reasons = refused
        .iter()
        .map(|(n, why)| format!("{n}: {why}"))
        .collect::<Vec<_>>()
        .join("; ");
    let (asked, smallest) = match target {
        Target::Params { max } => (
            format!("--params {}", group(max)),
            format!(
                "{} unique parameters",
                group(candidates::smallest_params(teacher))
            ),
        ),
        Target::Flops { ratio } | Target::Speedup { ratio } => {
            (format!("--flops {ratio}"), "any share above 0".to_string())
        }
    };
    Error::Unreachable(format!(
        "{asked}: no chain of cuts reaches it; the smallest reachable is {smallest} \
         (every head and FFN neuron removed, embeddings at rank 8) ({reasons})"
    ))
}
