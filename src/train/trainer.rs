//! The training loop every objective shares: resume, AdamW, the learning-rate schedule,
//! accumulation and clipping, the logging window, evaluation with best/ and last/ checkpoints,
//! the NaN guard and the final test evaluation. An [`Objective`] supplies the loss and whatever
//! it adds (parameters, log fields, output files); a [`Trainer`] runs it.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{Device, Tensor};

use serde::Serialize;

use crate::arch::{Arch, HistoryEntry, Key, LinearKind};
use crate::budget::Budget;
use crate::data::{bucket_batches, Example};
use crate::error::{Error, Result};
use crate::eval::{collate, evaluate_model, Evaluation, Prepared};
use crate::io::artefacts::{read_json, write_json, EvalLine, MetricLine, RunRecord, TrainLine};
use crate::io::{Checkpoint, TensorStore};
use crate::kernels::device::{name as device_name, seed_step};
use crate::kernels::Kernels;
use crate::metrics::Matching;
use crate::model::{dropouts_of, Bert, Mode, Params};
use crate::train::inputs::PreparedRun;
use crate::train::objective::Objective;
use crate::train::optim::{AdamW, AdamWConfig, OptParam};
use crate::train::run_dir::{check_resumed_data, restore_optimizer, Progress, RunDir};
use crate::train::schedule::LrSchedule;
use crate::train::spec::TrainSpec;
use crate::util::build_info;
use crate::util::hash::fnv1a;
use crate::util::progress::{Display, Progress as StepBar};
use crate::util::rng::Rng;

/// What a finished run reports.
#[derive(Debug, Clone, Serialize)]
pub struct TrainOutcome {
    pub run_dir: PathBuf,
    pub best_dev_f1: f64,
    pub best_step: usize,
    pub steps: usize,
    pub train_tokens_per_second: f64,
    pub padding_ratio: f64,
    pub test: Option<crate::metrics::Report>,
    pub seconds: f64,
}

/// Everything the loop needs besides the loss.
pub struct LoopInputs {
    /// The checkpoint, labels and tokenised splits (`test: None` skips the test evaluation).
    pub prepared: PreparedRun,
    pub spec: TrainSpec,
    /// Where the model trains and which kernels run it (not part of the spec: a run may
    /// resume on another device).
    pub device: Device,
    pub kernels: Kernels,
    /// Extra provenance for run.json (command line, data hashes, teacher, ...).
    pub provenance: serde_json::Value,
}

/// Trains with `objective` until the spec's steps are done (or `stop_after` steps, as if
/// interrupted); the run folder is already open and locked, and the machine's resources checked
/// ([`crate::train::setup::OpenRun::ready`]).
pub fn fit(
    inputs: LoopInputs,
    objective: &mut dyn Objective,
    run: RunDir,
    stop_after: Option<usize>,
) -> Result<TrainOutcome> {
    Trainer::new(inputs, objective, run, stop_after)?.run()
}

/// How many steps a run takes and how its learning rate moves.
struct Schedule {
    /// Token count of each training example (what the batches are planned from).
    lengths: Vec<usize>,
    steps_per_epoch: usize,
    total_steps: usize,
    warmup: usize,
    /// Padding of a seeded batch plan, for run.json.
    padding: f64,
}

impl Schedule {
    fn new(train: &Prepared, spec: &TrainSpec) -> Self {
        let lengths = train.lengths();
        let batches_per_epoch = lengths.len().div_ceil(spec.batch_size);
        let steps_per_epoch = batches_per_epoch.div_ceil(spec.grad_accum);
        let mut total_steps = steps_per_epoch * spec.epochs;
        if spec.max_steps > 0 {
            total_steps = total_steps.min(spec.max_steps);
        }
        let warmup = (spec.warmup_ratio * total_steps as f64).round() as usize;
        let padding =
            bucket_batches(&lengths, spec.batch_size, Some(&mut Rng::new(spec.seed))).padding_ratio;
        Schedule {
            lengths,
            steps_per_epoch,
            total_steps,
            warmup,
            padding,
        }
    }

    /// The learning rate of the update made at optimizer step `step` (0-based).
    fn lr(&self, spec: &TrainSpec, step: usize) -> f64 {
        LrSchedule {
            peak: spec.lr,
            warmup: self.warmup,
            total: self.total_steps,
            decay: spec.decay,
        }
        .at(step)
    }
}

/// What the run records about itself: the spec with the objective's settings, its hash, and
/// the history the saved checkpoints carry.
struct Record {
    op: &'static str,
    spec_json: serde_json::Value,
    spec_hash: String,
    /// The checkpoint's history before this run.
    history_before: Vec<HistoryEntry>,
    params_before: u64,
}

impl Record {
    fn new(spec: &TrainSpec, objective: &dyn Objective) -> Result<Self> {
        let mut spec_json = serde_json::to_value(spec)
            .map_err(|e| Error::Internal(format!("the training spec does not serialise: {e}")))?;
        let settings = objective.settings();
        if !settings.is_null() {
            spec_json["objective"] = settings;
        }
        let spec_hash = fnv1a(spec_json.to_string().as_bytes());
        Ok(Record {
            op: objective.op(),
            spec_json,
            spec_hash,
            history_before: vec![],
            params_before: 0,
        })
    }

    /// Fills in the starting checkpoint's history; the resumed weights already record this run,
    /// which is recorded again when saving.
    fn start_from(&mut self, ckpt: &Checkpoint, resumed: bool) {
        self.history_before = ckpt.history();
        if resumed && self.history_before.last().is_some_and(|h| h.op == self.op) {
            self.history_before.pop();
        }
        self.params_before = Budget::of_arch(&ckpt.arch).unique;
    }

    /// The history of a checkpoint saved by this run.
    fn history(&self, ckpt: &Checkpoint) -> Vec<HistoryEntry> {
        let mut h = self.history_before.clone();
        h.push(HistoryEntry {
            op: self.op.to_string(),
            args: self.spec_json.clone(),
            params_before: self.params_before,
            params_after: Budget::of_arch(&ckpt.arch).unique,
        });
        h
    }
}

/// The losses and tokens since the last metrics line.
struct Window {
    loss: f64,
    batches: usize,
    tokens: usize,
    /// On a device the losses are summed there and read once per window.
    loss_on_device: Option<Tensor>,
    start: Instant,
}

impl Window {
    fn new() -> Self {
        Window {
            loss: 0.0,
            batches: 0,
            tokens: 0,
            loss_on_device: None,
            start: Instant::now(),
        }
    }

    /// Adds a batch's loss. In RAM it is read at once and returned, so the guard stops at the
    /// step that diverged; on a device it is summed there (`None`).
    fn add(&mut self, loss: &Tensor) -> Result<Option<f64>> {
        if loss.device().is_cpu() {
            let value = loss.to_scalar::<f32>()? as f64;
            if value.is_finite() {
                self.loss += value;
            }
            return Ok(Some(value));
        }
        let detached = loss.detach();
        self.loss_on_device = Some(match self.loss_on_device.take() {
            Some(sum) => (sum + detached)?,
            None => detached,
        });
        Ok(None)
    }

    /// The mean loss over the window's batches.
    fn mean(&mut self) -> Result<f64> {
        if let Some(sum) = self.loss_on_device.take() {
            self.loss += sum.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
        }
        Ok(self.loss / self.batches.max(1) as f64)
    }

    fn restart(&mut self) {
        *self = Window::new();
    }
}

/// What the loop does after a batch.
enum Flow {
    Continue,
    /// Every step of the schedule is done.
    Done,
    /// `stop_after` steps are done: stop as if interrupted.
    Stopped,
}

/// One training run: the model, its optimizer and where the loop stands.
pub struct Trainer<'o> {
    inputs: LoopInputs,
    objective: &'o mut dyn Objective,
    run: RunDir,
    stop_after: Option<usize>,
    record: Record,
    schedule: Schedule,
    /// The checkpoint the trained weights are stored into when saved.
    ckpt: Checkpoint,
    params: Params,
    model: Bert,
    optimizer: AdamW,
    progress: Progress,
    window: Window,
    /// Batches whose gradients wait for the next optimizer step.
    accumulated: usize,
    last_eval_step: Option<usize>,
    all_tokens: usize,
    train_seconds: f64,
    started: Instant,
    /// How progress is shown; the bar while the steps run on a terminal.
    display: Display,
    bar: Option<StepBar>,
}

impl<'o> Trainer<'o> {
    /// Resumes or starts the run: builds the model and optimizer (restoring their state from
    /// `last/` when resuming) and writes run.json.
    pub fn new(
        inputs: LoopInputs,
        objective: &'o mut dyn Objective,
        run: RunDir,
        stop_after: Option<usize>,
    ) -> Result<Self> {
        let started = Instant::now();
        let spec = &inputs.spec;
        let mut record = Record::new(spec, &*objective)?;
        let (ckpt, progress, optimizer_state) = resume_or_start(&run, &inputs, &record.spec_hash)?;
        record.start_from(&ckpt, optimizer_state.is_some());
        let params = Params::from_checkpoint(&ckpt, &inputs.device)?;
        let model = objective.prepare(
            Bert::new(&ckpt.arch, &params, dropouts_of(&ckpt.config))
                .with_precision(spec.precision)
                .with_kernels(inputs.kernels),
        );
        let mut vars = model_params(&ckpt.arch, &params);
        vars.extend(objective.extra_params());
        let optimizer = optimizer(vars, spec, inputs.kernels, optimizer_state.as_ref())?;
        let schedule = Schedule::new(&inputs.prepared.train, spec);
        if progress.step > schedule.total_steps {
            return Err(Error::Input {
                path: run.last().join("state/progress.json"),
                line: 1,
                msg: format!(
                    "step {} is beyond the run's {} steps: the state is damaged; start the run again with --force",
                    progress.step, schedule.total_steps
                ),
            });
        }
        let trainer = Trainer {
            inputs,
            objective,
            run,
            stop_after,
            record,
            schedule,
            ckpt,
            params,
            model,
            optimizer,
            progress,
            window: Window::new(),
            accumulated: 0,
            last_eval_step: None,
            all_tokens: 0,
            train_seconds: 0.0,
            started,
            display: Display::current(),
            bar: None,
        };
        trainer.write_run_json()?;
        Ok(trainer)
    }

    /// Trains to the end of the schedule (or `stop_after`), evaluates on test with the best
    /// checkpoint and reports.
    pub fn run(mut self) -> Result<TrainOutcome> {
        if !self.run.resuming {
            // The starting point is evaluated and kept as best/, so a recovery run never ends
            // with a best/ worse on dev than the model it started from.
            self.eval_and_checkpoint()?;
            self.last_eval_step = Some(0);
        }
        if self.display == Display::Bar {
            let bar = StepBar::with_display(
                "train",
                self.schedule.total_steps as u64,
                "steps",
                Display::Bar,
            );
            bar.inc(self.progress.step as u64);
            self.bar = Some(bar);
        }
        while self.progress.step < self.schedule.total_steps {
            match self.epoch() {
                Ok(Flow::Continue) => {}
                Ok(Flow::Done) => break,
                Ok(Flow::Stopped) => {
                    self.bar = None;
                    return self.stop();
                }
                Err(e) => {
                    self.bar = None;
                    return Err(e);
                }
            }
        }
        self.bar = None;
        self.finish()
    }

    /// The rest of the current epoch, in its seeded batch plan.
    fn epoch(&mut self) -> Result<Flow> {
        let spec = &self.inputs.spec;
        let mut plan_rng = Rng::new(spec.seed ^ (0x5151 + self.progress.epoch as u64 * 7919));
        let plan = bucket_batches(&self.schedule.lengths, spec.batch_size, Some(&mut plan_rng));
        let batches = plan.batches.len();
        for (b, rows) in plan
            .batches
            .iter()
            .enumerate()
            .skip(self.progress.batch_in_epoch)
        {
            match self.batch(rows, b, b + 1 == batches)? {
                Flow::Continue => {}
                flow => return Ok(flow),
            }
        }
        Ok(Flow::Continue)
    }

    /// One batch: its gradients, then an optimizer step once `grad_accum` batches (or the
    /// epoch's last) are in.
    fn batch(&mut self, rows: &[usize], b: usize, end_of_epoch: bool) -> Result<Flow> {
        let t0 = self.accumulate(rows)?;
        self.progress.batch_in_epoch = b + 1;
        if self.accumulated < self.inputs.spec.grad_accum && !end_of_epoch {
            self.train_seconds += t0.elapsed().as_secs_f64();
            return Ok(Flow::Continue);
        }
        self.step(t0, end_of_epoch)
    }

    /// Forward and backward over the examples `rows`: the loss is watched and its gradients
    /// added to the optimizer's. Returns when the computation started (collation excluded).
    fn accumulate(&mut self, rows: &[usize]) -> Result<Instant> {
        let device = &self.inputs.device;
        let examples: Vec<&Example> = rows
            .iter()
            .map(|&i| &self.inputs.prepared.train.examples[i])
            .collect();
        let data = collate(&examples, self.inputs.prepared.tokenizer.pad_id(), device)?;
        let t0 = Instant::now();
        if !device.is_cpu() {
            seed_step(device, self.progress.rng.next_u64())?;
        }
        let mut mode = Mode::Train(&mut self.progress.rng);
        let loss = self
            .objective
            .loss(&self.model, &data, &examples, &mut mode)?;
        if let Some(value) = self.window.add(&loss)? {
            if !value.is_finite() {
                return Err(self.diverged(value));
            }
        }
        let grads = loss.backward()?;
        self.optimizer.accumulate(&grads)?;
        drop(grads);
        self.accumulated += 1;
        self.window.batches += 1;
        self.window.tokens += data.real_tokens;
        self.all_tokens += data.real_tokens;
        Ok(t0)
    }

    /// The optimizer step, then the metrics line, the evaluation and the stops that are due.
    fn step(&mut self, t0: Instant, end_of_epoch: bool) -> Result<Flow> {
        let spec = &self.inputs.spec;
        let lr = self.schedule.lr(spec, self.progress.step);
        let grad_norm = self
            .optimizer
            .step(lr, self.accumulated as f64, spec.max_grad_norm)?;
        self.accumulated = 0;
        self.progress.step += 1;
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
        self.train_seconds += t0.elapsed().as_secs_f64();
        let (step, total) = (self.progress.step, self.schedule.total_steps);
        if step % spec.log_every.max(1) == 0 || step == total {
            self.log(lr, grad_norm.value()?)?;
        }
        let spec = &self.inputs.spec;
        let eval_now = if spec.eval_every > 0 {
            step % spec.eval_every == 0
        } else {
            end_of_epoch
        } || step == total;
        if end_of_epoch {
            self.progress.epoch += 1;
            self.progress.batch_in_epoch = 0;
        }
        if eval_now {
            self.eval_and_checkpoint()?;
            self.last_eval_step = Some(step);
        }
        Ok(if step >= total {
            Flow::Done
        } else if self.stop_after.is_some_and(|n| step >= n) {
            Flow::Stopped
        } else {
            Flow::Continue
        })
    }

    /// Closes the logging window: one metrics line (and a progress line on stderr).
    fn log(&mut self, lr: f64, grad_norm: f64) -> Result<()> {
        let secs = self.window.start.elapsed().as_secs_f64();
        let tps = self.window.tokens as f64 / secs.max(1e-9);
        let avg = self.window.mean()?;
        if !avg.is_finite() {
            return Err(self.diverged(avg));
        }
        let (step, total) = (self.progress.step, self.schedule.total_steps);
        let log_every = self.inputs.spec.log_every.max(1);
        let remaining = (total - step) as f64 * secs / log_every as f64;
        match (&self.bar, self.display) {
            (Some(bar), _) => bar.set_message(format!(
                "epoch {} loss {avg:.4} lr {lr:.2e} {tps:.0} tok/s",
                self.progress.epoch + 1
            )),
            (None, Display::Quiet) => {}
            (None, _) => eprintln!(
                "step {step}/{total} epoch {} loss {avg:.4} lr {lr:.2e} grad-norm {grad_norm:.3} {tps:.0} tok/s ETA {}",
                self.progress.epoch + 1,
                format_duration(remaining)
            ),
        }
        self.run.log(MetricLine::Train(TrainLine {
            step,
            epoch: self.progress.epoch,
            loss: avg,
            lr,
            grad_norm,
            tokens_per_s: tps,
            extra: self.objective.log_fields(&self.model)?,
        }))?;
        self.window.restart();
        Ok(())
    }

    /// Evaluates on dev, keeps best/ when dev F1 improved and writes last/.
    fn eval_and_checkpoint(&mut self) -> Result<()> {
        let e = self.evaluate(&self.model, &self.inputs.prepared.dev)?;
        let f1 = e.report.f1();
        let line = format!(
            "eval step {}: dev F1 {:.4} (P {:.4} R {:.4}), {:.0} tok/s",
            self.progress.step,
            f1,
            e.report.micro.precision,
            e.report.micro.recall,
            e.tokens_per_second
        );
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
        let progress = &mut self.progress;
        self.run.log(MetricLine::Eval(EvalLine {
            step: progress.step,
            epoch: Some(progress.epoch),
            eval: "dev".into(),
            f1,
            precision: Some(e.report.micro.precision),
            recall: Some(e.report.micro.recall),
            eval_tokens_per_s: Some(e.tokens_per_second),
        }))?;
        self.params.store_into(&mut self.ckpt)?;
        if progress.best_f1.is_none_or(|b| f1 > b) {
            progress.best_f1 = Some(f1);
            progress.best_step = Some(progress.step);
            let history = self.record.history(&self.ckpt);
            self.ckpt.save(&self.run.best(), true, history)?;
        }
        let history = self.record.history(&self.ckpt);
        self.run
            .save_last(&self.ckpt, history, &self.optimizer, progress)
    }

    fn evaluate(&self, model: &Bert, prepared: &Prepared) -> Result<Evaluation> {
        evaluate_model(
            model,
            prepared,
            &self.inputs.prepared.labels,
            self.inputs.prepared.tokenizer.pad_id(),
            self.inputs.spec.eval_batch_size,
            Matching::Default,
            &self.inputs.device,
        )
    }

    /// Stops after `stop_after` steps as if interrupted: last/ holds the state to resume.
    fn stop(mut self) -> Result<TrainOutcome> {
        if self.last_eval_step != Some(self.progress.step) {
            self.params.store_into(&mut self.ckpt)?;
            let history = self.record.history(&self.ckpt);
            self.run
                .save_last(&self.ckpt, history, &self.optimizer, &self.progress)?;
        }
        eprintln!(
            "stopped after step {} as asked; continue with --resume",
            self.progress.step
        );
        Ok(self.outcome(None))
    }

    /// The end of the schedule: a last evaluation if none was kept, the objective's own
    /// outputs, and the test evaluation of best/.
    fn finish(mut self) -> Result<TrainOutcome> {
        if self.last_eval_step != Some(self.progress.step) && self.progress.best_f1.is_none() {
            self.eval_and_checkpoint()?;
        }
        self.objective.finish(&self.run, &self.model)?;
        let test = match &self.inputs.prepared.test {
            Some(test) => Some(self.test(test)?),
            None => None,
        };
        Ok(self.outcome(test))
    }

    /// Evaluates best/ on the test split once: test.json and a metrics line.
    fn test(&self, test: &Prepared) -> Result<crate::metrics::Report> {
        let spec = &self.inputs.spec;
        let best = Checkpoint::open(&self.run.best())?;
        let best_model = Bert::load(&best, &self.inputs.device)?
            .with_precision(spec.precision)
            .with_kernels(self.inputs.kernels);
        let e = self.evaluate(&best_model, test)?;
        write_json(
            &self.run.path.join("test.json"),
            &e.record(&self.run.best(), &test.data.path),
        )?;
        self.run.log(MetricLine::Eval(EvalLine {
            step: self.progress.step,
            epoch: None,
            eval: "test".into(),
            f1: e.report.f1(),
            precision: None,
            recall: None,
            eval_tokens_per_s: None,
        }))?;
        Ok(e.report)
    }

    fn outcome(&self, test: Option<crate::metrics::Report>) -> TrainOutcome {
        TrainOutcome {
            run_dir: self.run.path.clone(),
            best_dev_f1: self.progress.best_f1.unwrap_or(0.0),
            best_step: self.progress.best_step.unwrap_or(0),
            steps: self.progress.step,
            train_tokens_per_second: self.all_tokens as f64 / self.train_seconds.max(1e-9),
            padding_ratio: self.schedule.padding,
            test,
            seconds: self.started.elapsed().as_secs_f64(),
        }
    }

    fn write_run_json(&self) -> Result<()> {
        let (inputs, schedule) = (&self.inputs, &self.schedule);
        let spec = &inputs.spec;
        self.run.write_run_json(&RunRecord {
            op: self.record.op.to_string(),
            spec: self.record.spec_json.clone(),
            spec_hash: self.record.spec_hash.clone(),
            labels: inputs.prepared.labels.labels().to_vec(),
            surgery_version: build_info::VERSION.to_string(),
            dependencies: build_info::dependencies(),
            git_commit: build_info::GIT_COMMIT.to_string(),
            command: std::env::args().collect(),
            unique_parameters: self.record.params_before,
            train_examples: schedule.lengths.len(),
            train_tokens: inputs.prepared.train.num_tokens(),
            padding_ratio: schedule.padding,
            steps: schedule.total_steps,
            device: device_name(&inputs.device),
            kernels: format!("{:?}", inputs.kernels).to_lowercase(),
            provenance: inputs.provenance.clone(),
            input_history: Some(
                self.record
                    .history_before
                    .iter()
                    .map(|h| h.op.clone())
                    .collect(),
            ),
        })?;
        eprintln!(
            "training {} unique parameters: {} examples, {} steps ({} per epoch), padding {:.1}%, {}",
            self.record.params_before,
            schedule.lengths.len(),
            schedule.total_steps,
            schedule.steps_per_epoch,
            schedule.padding * 100.0,
            crate::kernels::describe(inputs.kernels, spec.precision, &inputs.device)
        );
        Ok(())
    }

    /// The error of a run whose loss became NaN or infinite: which step, the learning rate of
    /// the update that led there, and what was saved.
    fn diverged(&self, loss: f64) -> Error {
        let (run, progress) = (&self.run, &self.progress);
        let cause = match progress.step {
            0 => "before any update (check the data and the starting checkpoint)".to_string(),
            s => format!(
                "after the update of step {s} at lr {:.2e}",
                self.schedule.lr(&self.inputs.spec, s - 1)
            ),
        };
        let saved: Option<Progress> = read_json(&run.last().join("state/progress.json")).ok();
        let state = match saved {
            Some(p) => format!(
                "the last saved state (step {}) is in {}",
                p.step,
                run.last().display()
            ),
            None => "no state was saved yet".to_string(),
        };
        Error::Diverged(format!(
            "{}: loss became {loss} in step {} ({cause}); stopped, {state}. Start a new run with a lower --lr or --max-grad-norm",
            run.path.display(),
            progress.step + 1
        ))
    }
}

/// The checkpoint, progress and optimizer state to start from: `last/` when resuming (refused
/// when the hyper-parameters or the data changed), else the input checkpoint at step 0.
fn resume_or_start(
    run: &RunDir,
    inputs: &LoopInputs,
    spec_hash: &str,
) -> Result<(Checkpoint, Progress, Option<TensorStore>)> {
    let resumed = if run.resuming { run.load_last()? } else { None };
    let Some((ckpt, progress, store)) = resumed else {
        let progress = Progress {
            step: 0,
            epoch: 0,
            batch_in_epoch: 0,
            rng: Rng::new(inputs.spec.seed),
            best_f1: None,
            best_step: None,
            spec_hash: spec_hash.to_string(),
        };
        return Ok((inputs.prepared.ckpt.clone(), progress, None));
    };
    if progress.spec_hash != spec_hash {
        return Err(Error::Spec(format!(
            "{}: the run was started with other hyper-parameters; resume with the same options or start a new run",
            run.path.display()
        )));
    }
    check_resumed_data(&run.path, &inputs.provenance)?;
    run.forget_metrics_after(progress.step)?;
    eprintln!("resuming {} at step {}", run.path.display(), progress.step);
    Ok((ckpt, progress, Some(store)))
}

/// The model's trainable tensors, sparse linears marked so that their pattern is kept.
fn model_params(arch: &Arch, params: &Params) -> Vec<OptParam> {
    let sparse = |key: Key| match key {
        Key::Linear { layer, slot, .. } => {
            matches!(arch.layers[layer].linear(slot), LinearKind::Sparse { .. })
        }
        _ => false,
    };
    params
        .vars()
        .map(|(k, v)| OptParam::model(*k, arch.layout, v.clone(), sparse(*k)))
        .collect()
}

/// AdamW over `vars`, its moments restored from `state` when resuming.
fn optimizer(
    vars: Vec<OptParam>,
    spec: &TrainSpec,
    kernels: Kernels,
    state: Option<&TensorStore>,
) -> Result<AdamW> {
    let adam = AdamWConfig {
        weight_decay: spec.weight_decay,
        ..Default::default()
    };
    let mut optimizer = AdamW::new(vars, adam, kernels)?;
    if let Some(store) = state {
        restore_optimizer(&mut optimizer, store)?;
    }
    Ok(optimizer)
}

/// Refuses a run the machine cannot hold before the model is built: memory for the weights,
/// gradients and AdamW moments (plus a floor for activations), and disk for best/ and last/
/// (weights and optimizer moments, each staged once while it is replaced; a resumed run already
/// holds most of it and needs only the staging).
pub fn require_resources(
    run: &RunDir,
    arch: &Arch,
    spec: &TrainSpec,
    device: &Device,
) -> Result<()> {
    let params = Budget::of_arch(arch).unique;
    let activations = (spec.batch_size * spec.max_len.min(arch.max_positions)) as u64
        * (arch.hidden * arch.num_layers().max(1)) as u64
        * 4
        * 8;
    let what = format!(
        "training {} parameters at batch size {}",
        crate::budget::group(params),
        spec.batch_size
    );
    let needed = params.saturating_mul(16).saturating_add(activations);
    match crate::kernels::device::free_memory(device)? {
        Some(free) if free < needed => {
            return Err(Error::Resources(format!(
                "{what} needs about {} of memory on {}, which has {} free; lower --batch-size or --max-len",
                crate::io::capacity::human_bytes(needed),
                device_name(device),
                crate::io::capacity::human_bytes(free)
            )))
        }
        Some(_) => {}
        None => crate::io::capacity::require_memory(&what, needed)?,
    }
    let per_param = if run.resuming { 16 } else { 32 };
    crate::io::capacity::require_disk(
        &run.path,
        "the run's checkpoints (best/, last/ with optimizer state)",
        params.saturating_mul(per_param),
    )
}

fn format_duration(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}
