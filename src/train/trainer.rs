//! The training loop every objective shares: resume, AdamW, the learning-rate schedule,
//! accumulation and clipping, the logging window, evaluation with best/ and last/ checkpoints,
//! the NaN guard and the final test evaluation. An [`Objective`] supplies the loss and whatever
//! it adds (parameters, log fields, output files).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use candle_core::Device;

use serde::Serialize;

use crate::arch::{Arch, HistoryEntry, Key, LinearKind};
use crate::budget::Budget;
use crate::data::tokenize::WordTokenizer;
use crate::data::{bucket_batches, Example, LabelSet};
use crate::error::{Error, Result};
use crate::eval::{collate, evaluate_model, Prepared};
use crate::io::artefacts::{read_json, write_json, EvalLine, MetricLine, RunRecord, TrainLine};
use crate::io::Checkpoint;
use crate::kernels::device::{name as device_name, seed_step};
use crate::kernels::Kernels;
use crate::metrics::Matching;
use crate::model::{dropouts_of, Bert, Mode, Params};
use crate::train::objective::Objective;
use crate::train::optim::{AdamW, AdamWConfig, OptParam, StatePlacement};
use crate::train::run_dir::{restore_optimizer, Progress, RunDir};
use crate::train::schedule::learning_rate;
use crate::train::spec::TrainSpec;
use crate::util::build_info;
use crate::util::hash::fnv1a;
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
pub struct LoopInputs<'a> {
    pub ckpt: Checkpoint,
    pub labels: LabelSet,
    pub tokenizer: &'a WordTokenizer,
    pub train: Prepared,
    pub dev: Prepared,
    pub test: Option<Prepared>,
    pub spec: TrainSpec,
    /// Where the model trains and which kernels run it (not part of the spec: a run may
    /// resume on another device).
    pub device: Device,
    pub kernels: Kernels,
    /// Extra provenance for run.json (command line, data hashes, teacher, ...).
    pub provenance: serde_json::Value,
}

/// Trains with `objective` until the spec's steps are done (or `stop_after` steps, as if
/// interrupted); the run folder is already open and locked.
pub fn fit(
    inputs: LoopInputs,
    objective: &mut dyn Objective,
    run: RunDir,
    stop_after: Option<usize>,
) -> Result<TrainOutcome> {
    let started = Instant::now();
    let spec = &inputs.spec;
    let device = inputs.device.clone();
    let kernels = inputs.kernels;
    let mut spec_json = serde_json::to_value(spec).expect("spec serialises");
    let settings = objective.settings();
    if !settings.is_null() {
        spec_json["objective"] = settings;
    }
    let spec_hash = fnv1a(spec_json.to_string().as_bytes());
    let out = run.path.clone();
    let resumed = if run.resuming { run.load_last()? } else { None };
    let (mut ckpt, mut progress, optimizer_state) = match resumed {
        Some((ckpt, progress, store)) => {
            if progress.spec_hash != spec_hash {
                return Err(Error::Spec(format!(
                    "{}: the run was started with other hyper-parameters; resume with the same options or start a new run",
                    out.display()
                )));
            }
            crate::train::run_dir::check_resumed_data(&out, &inputs.provenance)?;
            run.forget_metrics_after(progress.step)?;
            eprintln!("resuming {} at step {}", out.display(), progress.step);
            (ckpt, progress, Some(store))
        }
        None => (
            inputs.ckpt.clone(),
            Progress {
                step: 0,
                epoch: 0,
                batch_in_epoch: 0,
                rng: Rng::new(spec.seed),
                best_f1: None,
                best_step: None,
                spec_hash: spec_hash.clone(),
            },
            None,
        ),
    };
    let mut history_before = ckpt.history();
    let op = objective.op();
    if optimizer_state.is_some() && history_before.last().is_some_and(|h| h.op == op) {
        // The resumed weights already record this run; it is recorded again when saving.
        history_before.pop();
    }
    let params_count = Budget::of_arch(&ckpt.arch).unique;
    require_resources(&run, &ckpt.arch, spec, &device)?;
    let params = Params::from_checkpoint(&ckpt, &device)?;
    let model = objective.prepare(
        Bert::new(&ckpt.arch, &params, dropouts_of(&ckpt.config))
            .with_precision(spec.precision)
            .with_kernels(kernels),
    );
    let arch = ckpt.arch.clone();
    let sparse = |key: Key| match key {
        Key::Linear { layer, slot, .. } => {
            matches!(arch.layers[layer].linear(slot), LinearKind::Sparse { .. })
        }
        _ => false,
    };
    let mut vars: Vec<OptParam> = params
        .vars()
        .map(|(k, v)| OptParam::model(*k, arch.layout, v.clone(), sparse(*k)))
        .collect();
    vars.extend(objective.extra_params());
    let adam = AdamWConfig {
        weight_decay: spec.weight_decay,
        ..Default::default()
    };
    // The fused kernels keep the optimizer's state in RAM and update it in place; the generic
    // ones keep it on the parameters' device.
    let placement = match kernels {
        Kernels::Fused => StatePlacement::Host,
        Kernels::Generic => StatePlacement::Device,
    };
    let mut optimizer = AdamW::new(vars, adam, placement)?;
    if let Some(store) = &optimizer_state {
        restore_optimizer(&mut optimizer, store)?;
    }

    let lengths = inputs.train.lengths();
    let batches_per_epoch = lengths.len().div_ceil(spec.batch_size);
    let steps_per_epoch = batches_per_epoch.div_ceil(spec.grad_accum);
    let mut total_steps = steps_per_epoch * spec.epochs;
    if spec.max_steps > 0 {
        total_steps = total_steps.min(spec.max_steps);
    }
    if progress.step > total_steps {
        return Err(Error::Input {
            path: run.last().join("state/progress.json"),
            line: 1,
            msg: format!("step {} is beyond the run's {total_steps} steps: the state is damaged; start the run again with --force", progress.step),
        });
    }
    let warmup = (spec.warmup_ratio * total_steps as f64).round() as usize;
    let pad_id = inputs.tokenizer.pad_id();
    let padding =
        bucket_batches(&lengths, spec.batch_size, Some(&mut Rng::new(spec.seed))).padding_ratio;

    let history = |ckpt: &Checkpoint| {
        let mut h = history_before.clone();
        h.push(HistoryEntry {
            op: op.to_string(),
            args: spec_json.clone(),
            params_before: params_count,
            params_after: Budget::of_arch(&ckpt.arch).unique,
        });
        h
    };
    run.write_run_json(&RunRecord {
        op: op.to_string(),
        spec: spec_json.clone(),
        spec_hash: spec_hash.clone(),
        labels: inputs.labels.labels().to_vec(),
        surgery_version: build_info::VERSION.to_string(),
        dependencies: build_info::dependencies(),
        git_commit: build_info::GIT_COMMIT.to_string(),
        command: std::env::args().collect(),
        unique_parameters: params_count,
        train_examples: lengths.len(),
        train_tokens: inputs.train.num_tokens(),
        padding_ratio: padding,
        steps: total_steps,
        device: device_name(&device),
        kernels: format!("{kernels:?}").to_lowercase(),
        provenance: inputs.provenance.clone(),
    })?;
    eprintln!(
        "training {} unique parameters: {} examples, {} steps ({} per epoch), padding {:.1}%, {}",
        params_count,
        lengths.len(),
        total_steps,
        steps_per_epoch,
        padding * 100.0,
        crate::kernels::describe(kernels, spec.precision, &device)
    );

    let evaluate = |model: &Bert, prepared: &Prepared| {
        evaluate_model(
            model,
            prepared,
            &inputs.labels,
            pad_id,
            spec.eval_batch_size,
            Matching::Default,
            &device,
        )
    };
    // Evaluate on dev, keep best/ and write last/.
    let checkpoint = |ckpt: &mut Checkpoint, progress: &mut Progress, optimizer: &AdamW| {
        eval_and_checkpoint(
            &run,
            &model,
            &params,
            ckpt,
            &history,
            optimizer,
            progress,
            &evaluate,
            &inputs.dev,
        )
    };
    let interactive = std::io::stderr().is_terminal();
    let (mut window_loss, mut window_batches, mut window_tokens) = (0f64, 0usize, 0usize);
    let mut window_loss_on_device: Option<candle_core::Tensor> = None;
    let mut window_start = Instant::now();
    let (mut all_tokens, mut train_seconds) = (0usize, 0f64);
    let mut accumulated = 0usize;
    let mut last_eval_step = usize::MAX;
    if !run.resuming {
        // The starting point is evaluated and kept as best/, so a recovery run never ends
        // with a best/ worse on dev than the model it started from.
        checkpoint(&mut ckpt, &mut progress, &optimizer)?;
        last_eval_step = 0;
    }
    'epochs: while progress.step < total_steps {
        let mut plan_rng = Rng::new(spec.seed ^ (0x5151 + progress.epoch as u64 * 7919));
        let plan = bucket_batches(&lengths, spec.batch_size, Some(&mut plan_rng));
        for (b, batch) in plan
            .batches
            .iter()
            .enumerate()
            .skip(progress.batch_in_epoch)
        {
            let examples: Vec<&Example> =
                batch.iter().map(|&i| &inputs.train.examples[i]).collect();
            let data = collate(&examples, pad_id, &device)?;
            let t0 = Instant::now();
            if !device.is_cpu() {
                seed_step(&device, progress.rng.next_u64())?;
            }
            let loss = objective.loss(
                &model,
                &data,
                &examples,
                &mut Mode::Train(&mut progress.rng),
            )?;
            // In RAM the loss is read every step, so the guard stops at the step that
            // diverged; on a device it is summed there and read in the logging window only.
            if device.is_cpu() {
                let loss_value = loss.to_scalar::<f32>()? as f64;
                if !loss_value.is_finite() {
                    return Err(diverged(&run, &progress, loss_value, |step| {
                        learning_rate(spec.lr, step, warmup, total_steps, spec.decay)
                    }));
                }
                window_loss += loss_value;
            } else {
                let detached = loss.detach();
                window_loss_on_device = Some(match window_loss_on_device.take() {
                    Some(sum) => (sum + detached)?,
                    None => detached,
                });
            }
            let grads = loss.backward()?;
            optimizer.accumulate(&grads)?;
            drop(grads);
            accumulated += 1;
            window_batches += 1;
            window_tokens += data.real_tokens;
            all_tokens += data.real_tokens;
            progress.batch_in_epoch = b + 1;
            let end_of_epoch = b + 1 == plan.batches.len();
            if accumulated < spec.grad_accum && !end_of_epoch {
                train_seconds += t0.elapsed().as_secs_f64();
                continue;
            }
            let lr = learning_rate(spec.lr, progress.step, warmup, total_steps, spec.decay);
            let grad_norm = optimizer.step(lr, accumulated as f64, spec.max_grad_norm)?;
            accumulated = 0;
            progress.step += 1;
            train_seconds += t0.elapsed().as_secs_f64();
            if progress.step % spec.log_every.max(1) == 0 || progress.step == total_steps {
                if let Some(sum) = window_loss_on_device.take() {
                    window_loss += sum.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
                }
                let secs = window_start.elapsed().as_secs_f64();
                let tps = window_tokens as f64 / secs.max(1e-9);
                let avg = window_loss / window_batches.max(1) as f64;
                if !avg.is_finite() {
                    return Err(diverged(&run, &progress, avg, |step| {
                        learning_rate(spec.lr, step, warmup, total_steps, spec.decay)
                    }));
                }
                let grad_norm = grad_norm.value()?;
                let remaining =
                    (total_steps - progress.step) as f64 * secs / spec.log_every.max(1) as f64;
                let line = format!(
                    "step {}/{} epoch {} loss {avg:.4} lr {lr:.2e} grad-norm {grad_norm:.3} {tps:.0} tok/s ETA {}",
                    progress.step,
                    total_steps,
                    progress.epoch + 1,
                    format_duration(remaining)
                );
                if interactive {
                    eprint!("\r{line}   ");
                } else {
                    eprintln!("{line}");
                }
                run.log(MetricLine::Train(TrainLine {
                    step: progress.step,
                    epoch: progress.epoch,
                    loss: avg,
                    lr,
                    grad_norm,
                    tokens_per_s: tps,
                    extra: objective.log_fields(&model)?,
                }))?;
                (window_loss, window_batches, window_tokens) = (0.0, 0, 0);
                window_start = Instant::now();
            }
            let eval_now = if spec.eval_every > 0 {
                progress.step % spec.eval_every == 0
            } else {
                end_of_epoch
            } || progress.step == total_steps;
            if end_of_epoch {
                progress.epoch += 1;
                progress.batch_in_epoch = 0;
            }
            if eval_now {
                if interactive {
                    eprintln!();
                }
                checkpoint(&mut ckpt, &mut progress, &optimizer)?;
                last_eval_step = progress.step;
            }
            if progress.step >= total_steps {
                break 'epochs;
            }
            if stop_after.is_some_and(|n| progress.step >= n) {
                if last_eval_step != progress.step {
                    params.store_into(&mut ckpt)?;
                    run.save_last(&ckpt, history(&ckpt), &optimizer, &progress)?;
                }
                eprintln!(
                    "stopped after step {} as asked; continue with --resume",
                    progress.step
                );
                return Ok(TrainOutcome {
                    run_dir: run.path.clone(),
                    best_dev_f1: progress.best_f1.unwrap_or(0.0),
                    best_step: progress.best_step.unwrap_or(0),
                    steps: progress.step,
                    train_tokens_per_second: all_tokens as f64 / train_seconds.max(1e-9),
                    padding_ratio: padding,
                    test: None,
                    seconds: started.elapsed().as_secs_f64(),
                });
            }
        }
    }
    if last_eval_step != progress.step && progress.best_f1.is_none() {
        checkpoint(&mut ckpt, &mut progress, &optimizer)?;
    }
    objective.finish(&run, &model)?;
    let best_f1 = progress.best_f1.unwrap_or(0.0);
    let test = match &inputs.test {
        Some(test) => {
            let best = Checkpoint::open(&run.best())?;
            let best_model = Bert::load(&best, &device)?
                .with_precision(spec.precision)
                .with_kernels(kernels);
            let e = evaluate(&best_model, test)?;
            write_json(
                &run.path.join("test.json"),
                &e.record(&run.best(), &test.data.path),
            )?;
            run.log(MetricLine::Eval(EvalLine {
                step: progress.step,
                epoch: None,
                eval: "test".into(),
                f1: e.report.f1(),
                precision: None,
                recall: None,
                eval_tokens_per_s: None,
            }))?;
            Some(e.report)
        }
        None => None,
    };
    Ok(TrainOutcome {
        run_dir: run.path.clone(),
        best_dev_f1: best_f1,
        best_step: progress.best_step.unwrap_or(0),
        steps: progress.step,
        train_tokens_per_second: all_tokens as f64 / train_seconds.max(1e-9),
        padding_ratio: padding,
        test,
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[allow(clippy::too_many_arguments)]
fn eval_and_checkpoint(
    run: &RunDir,
    model: &Bert,
    params: &Params,
    ckpt: &mut Checkpoint,
    history: &dyn Fn(&Checkpoint) -> Vec<HistoryEntry>,
    optimizer: &AdamW,
    progress: &mut Progress,
    evaluate: &dyn Fn(&Bert, &Prepared) -> Result<crate::eval::Evaluation>,
    dev: &Prepared,
) -> Result<()> {
    let e = evaluate(model, dev)?;
    let f1 = e.report.f1();
    eprintln!(
        "eval step {}: dev F1 {:.4} (P {:.4} R {:.4}), {:.0} tok/s",
        progress.step, f1, e.report.micro.precision, e.report.micro.recall, e.tokens_per_second
    );
    run.log(MetricLine::Eval(EvalLine {
        step: progress.step,
        epoch: Some(progress.epoch),
        eval: "dev".into(),
        f1,
        precision: Some(e.report.micro.precision),
        recall: Some(e.report.micro.recall),
        eval_tokens_per_s: Some(e.tokens_per_second),
    }))?;
    params.store_into(ckpt)?;
    let improved = progress.best_f1.is_none_or(|b| f1 > b);
    if improved {
        progress.best_f1 = Some(f1);
        progress.best_step = Some(progress.step);
        ckpt.save(&run.best(), true, history(ckpt))?;
    }
    run.save_last(ckpt, history(ckpt), optimizer, progress)
}

/// The error of a run whose loss became NaN or infinite: which step, the learning rate of the
/// update that led there, and what was saved.
fn diverged(
    run: &RunDir,
    progress: &Progress,
    loss: f64,
    lr_of_step: impl Fn(usize) -> f64,
) -> Error {
    let cause = match progress.step {
        0 => "before any update (check the data and the starting checkpoint)".to_string(),
        s => format!(
            "after the update of step {s} at lr {:.2e}",
            lr_of_step(s - 1)
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
