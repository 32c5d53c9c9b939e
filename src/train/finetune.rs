//! `train finetune`: supervised fine-tuning with cross-entropy on the aligned labels. The loop
//! (batches, accumulation, schedule, clipping, evaluation, best/last checkpoints, resume, NaN
//! guard, logs) is shared with other losses through [`train_loop`].

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::arch::{HistoryEntry, Key, LinearKind};
use crate::budget::Budget;
use crate::data::labels::UnknownLabels;
use crate::data::tokenize::WordTokenizer;
use crate::data::{bucket_batches, read_dataset, Alignment, Example, LabelSet, ReadOptions};
use crate::error::{Error, Result};
use crate::eval::{collate, evaluate_model, BatchData, Prepared};
use crate::io::Checkpoint;
use crate::metrics::Mode as MetricMode;
use crate::model::loss::{cross_entropy, scored_positions};
use crate::model::{dropouts_of, Bert, ForwardOutput, Mode, Outputs, Params};
use crate::train::optim::{AdamW, AdamWConfig, OptParam};
use crate::train::run_dir::{restore_optimizer, Progress, Resume, RunDir};
use crate::train::schedule::{learning_rate, Decay};
use crate::util::build_info;
use crate::util::hash::fnv1a;
use crate::util::rng::Rng;

/// Hyper-parameters of a training run (also the option names of the CLI).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct TrainSpec {
    /// Passes over the training data.
    #[arg(long, default_value_t = 3)]
    pub epochs: usize,
    /// Sentences (windows) per batch.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 5e-5)]
    pub lr: f64,
    /// Decoupled weight decay (not applied to biases and LayerNorms).
    #[arg(long, default_value_t = 0.01)]
    pub weight_decay: f64,
    /// Fraction of the steps spent warming up linearly.
    #[arg(long, default_value_t = 0.1)]
    pub warmup_ratio: f64,
    /// Decay after warm-up.
    #[arg(long, value_enum, default_value_t = Decay::Linear)]
    pub decay: Decay,
    /// Global gradient-norm clipping (0 = off).
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    /// Batches per optimizer step.
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// Seed for initialisation, shuffling and dropout.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Evaluate on dev every N optimizer steps (0 = after every epoch).
    #[arg(long, default_value_t = 0)]
    pub eval_every: usize,
    /// Stop after N optimizer steps (0 = run all epochs).
    #[arg(long, default_value_t = 0)]
    pub max_steps: usize,
    /// Maximum tokens per window (longer sentences are split).
    #[arg(long, default_value_t = 128)]
    pub max_len: usize,
    /// Label every sub-token (continuations of B-X as I-X) instead of the first only.
    #[arg(long)]
    pub label_all_subtokens: bool,
    /// Log a metrics line every N optimizer steps.
    #[arg(long, default_value_t = 20)]
    pub log_every: usize,
    /// Batch size for evaluation.
    #[arg(long, default_value_t = 64)]
    pub eval_batch_size: usize,
    /// Use only the first N training sentences (quick experiments).
    #[arg(long)]
    pub max_train_sentences: Option<usize>,
}

impl TrainSpec {
    pub fn alignment(&self) -> Alignment {
        if self.label_all_subtokens {
            Alignment::AllSubtokens
        } else {
            Alignment::FirstSubtoken
        }
    }

    fn validate(&self) -> Result<()> {
        let positive = [
            ("--epochs", self.epochs),
            ("--batch-size", self.batch_size),
            ("--grad-accum", self.grad_accum),
            ("--eval-batch-size", self.eval_batch_size),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(Error::Spec(format!("{name} must be positive")));
            }
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(Error::Spec("--lr must be a positive number".into()));
        }
        if !(0.0..1.0).contains(&self.warmup_ratio) {
            return Err(Error::Spec("--warmup-ratio must be in [0, 1)".into()));
        }
        Ok(())
    }
}

/// The data of a training run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, clap::Args)]
pub struct DataSpec {
    /// Training file (CoNLL columns, or JSONL with tokens/ner_tags).
    #[arg(long)]
    pub train: PathBuf,
    /// Development file, for evaluation and model selection.
    #[arg(long)]
    pub dev: PathBuf,
    /// Test file, evaluated once with the best checkpoint at the end.
    #[arg(long)]
    pub test: Option<PathBuf>,
    /// Convert IOB1 tags to IOB2 while reading.
    #[arg(long)]
    pub iob1: bool,
    /// What to do with dev/test tags not seen in training: `error` or `o` (map to O).
    #[arg(long, value_parser = parse_unknown, default_value = "error")]
    #[serde(with = "unknown_serde")]
    pub unknown_labels: UnknownLabels,
    /// Replace a classifier whose labels disagree with the training data.
    #[arg(long)]
    pub reinit_classifier: bool,
    /// Label names for JSONL files whose `ner_tags` are integers, in id order (e.g. the
    /// dataset's `ClassLabel` names: O,B-PER,I-PER,…).
    #[arg(long, value_delimiter = ',')]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tag_names: Vec<String>,
}

impl DataSpec {
    /// The data files a run reads.
    pub fn paths(&self) -> Vec<&Path> {
        let mut paths = vec![self.train.as_path(), self.dev.as_path()];
        paths.extend(self.test.as_deref());
        paths
    }

    /// How the data files are read.
    pub fn read_options(&self) -> ReadOptions {
        ReadOptions {
            iob1_to_iob2: self.iob1,
            tag_names: (!self.tag_names.is_empty()).then(|| self.tag_names.clone()),
        }
    }
}

fn parse_unknown(s: &str) -> std::result::Result<UnknownLabels, String> {
    match s {
        "error" => Ok(UnknownLabels::Error),
        "o" | "O" => Ok(UnknownLabels::Outside),
        _ => Err(format!("`{s}`: expected `error` or `o`")),
    }
}

mod unknown_serde {
    use super::UnknownLabels;
    pub fn serialize<S: serde::Serializer>(v: &UnknownLabels, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match v {
            UnknownLabels::Error => "error",
            UnknownLabels::Outside => "o",
        })
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<UnknownLabels, D::Error> {
        let s: String = serde::Deserialize::deserialize(d)?;
        super::parse_unknown(&s).map_err(serde::de::Error::custom)
    }
}

/// How a run treats its folder, independent of the hyper-parameters (not part of the spec hash).
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Whether to continue from `out/last`.
    pub resume: Resume,
    /// Replace an existing run folder.
    pub force: bool,
    /// Stop (as if interrupted) after this many optimizer steps; `--resume` continues.
    pub stop_after: Option<usize>,
}

impl RunOptions {
    /// Opens and locks the run folder before any data is read or computed, so a refused output
    /// or a concurrent run fails at once. `inputs` are the files and folders the run reads.
    pub fn open(&self, out: &Path, inputs: &[&Path]) -> Result<RunDir> {
        RunDir::open(out, inputs, self.resume, self.force)
    }
}

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

/// The loss of one batch: the model, the batch, the examples it holds, and the run mode.
pub type LossFn<'a> =
    dyn FnMut(&Bert, &BatchData, &[&Example], &mut Mode) -> Result<(Tensor, ForwardOutput)> + 'a;

/// Everything the loop needs besides the loss.
pub struct LoopInputs<'a> {
    pub ckpt: Checkpoint,
    pub labels: LabelSet,
    pub tokenizer: &'a WordTokenizer,
    pub train: Prepared,
    pub dev: Prepared,
    pub test: Option<Prepared>,
    pub spec: TrainSpec,
    pub op: &'static str,
    /// Extra provenance for run.json (command line, data hashes, teacher, ...).
    pub provenance: serde_json::Value,
    /// Trainable tensors outside the model (e.g. distillation projections): optimized and
    /// resumed with the run, never saved into the checkpoint.
    pub extra_params: Vec<OptParam>,
    /// Trainable head gates attached to the model (`train gates`).
    pub head_gates: Option<crate::model::gates::HeadGates>,
}

/// Checks the checkpoint's classifier against the training labels; attaches a new one if it has
/// none (or if asked to replace a mismatching one).
pub fn ensure_classifier(
    ckpt: &mut Checkpoint,
    labels: &LabelSet,
    reinit: bool,
    seed: u64,
) -> Result<()> {
    match ckpt.classifier_labels() {
        Some(l) if l == labels.labels() => Ok(()),
        Some(l) if !reinit => Err(Error::Spec(format!(
            "{}: the classifier has labels [{}] but the training data has [{}]; pass --reinit-classifier to replace it",
            ckpt.source().display(),
            l.join(", "),
            labels.labels().join(", ")
        ))),
        _ => crate::model::generate::attach_classifier(ckpt, labels.labels(), 0.02, seed),
    }
}

/// A checkpoint and data ready for supervised training.
pub struct PreparedRun {
    pub ckpt: Checkpoint,
    pub labels: LabelSet,
    pub tokenizer: WordTokenizer,
    pub train: Prepared,
    pub dev: Prepared,
    pub test: Option<Prepared>,
    /// Data files with their hashes, for run.json.
    pub files: serde_json::Value,
}

/// Reads the data (labels from the training file), opens the checkpoint (adding a classifier if
/// needed) and tokenises every split.
pub fn finetune_inputs(input: &Path, data: &DataSpec, spec: &TrainSpec) -> Result<PreparedRun> {
    spec.validate()?;
    let read_options = data.read_options();
    let mut train_data = read_dataset(&data.train, &read_options)?;
    if let Some(n) = spec.max_train_sentences {
        train_data.sentences.truncate(n);
    }
    let labels = LabelSet::discover(&train_data)?;
    let mut ckpt = Checkpoint::open(input)?;
    ensure_classifier(&mut ckpt, &labels, data.reinit_classifier, spec.seed)?;
    let tokenizer = WordTokenizer::from_checkpoint(&ckpt)?;
    let max_len = spec.max_len.min(ckpt.arch.max_positions);
    let prepare = |path: &Path| -> Result<Prepared> {
        let d = read_dataset(path, &read_options)?;
        Prepared::new(
            &tokenizer,
            d,
            &labels,
            data.unknown_labels,
            spec.alignment(),
            max_len,
        )
    };
    let train = Prepared::new(
        &tokenizer,
        train_data,
        &labels,
        UnknownLabels::Error,
        spec.alignment(),
        max_len,
    )?;
    let dev = prepare(&data.dev)?;
    let test = data.test.as_deref().map(prepare).transpose()?;
    let mut files = serde_json::Map::new();
    for (role, path) in [
        ("train", Some(&data.train)),
        ("dev", Some(&data.dev)),
        ("test", data.test.as_ref()),
    ] {
        if let Some(p) = path {
            let bytes = std::fs::read(p).map_err(|e| Error::io(p, e))?;
            files.insert(
                role.into(),
                serde_json::json!({"path": p, "fnv1a64": fnv1a(&bytes)}),
            );
        }
    }
    Ok(PreparedRun {
        ckpt,
        labels,
        tokenizer,
        train,
        dev,
        test,
        files: files.into(),
    })
}

/// `train finetune`: reads data, prepares the checkpoint and runs the loop with cross-entropy.
pub fn finetune(
    input: &Path,
    data: &DataSpec,
    spec: &TrainSpec,
    out: &Path,
    options: RunOptions,
) -> Result<TrainOutcome> {
    let mut read = data.paths();
    read.push(input);
    let run = options.open(out, &read)?;
    let prepared = finetune_inputs(input, data, spec)?;
    let provenance = serde_json::json!({
        "input": input,
        "data": data,
        "files": prepared.files,
    });
    let inputs = LoopInputs {
        ckpt: prepared.ckpt,
        labels: prepared.labels,
        tokenizer: &prepared.tokenizer,
        train: prepared.train,
        dev: prepared.dev,
        test: prepared.test,
        spec: spec.clone(),
        op: "train finetune",
        provenance,
        extra_params: vec![],
        head_gates: None,
    };
    let mut loss = |model: &Bert, batch: &BatchData, _: &[&Example], mode: &mut Mode| {
        let out = model.forward(&batch.batch, mode, Outputs::default())?;
        let (pos, tgt) = scored_positions(&batch.labels);
        let device = Device::Cpu;
        let pos = Tensor::from_vec(pos.clone(), pos.len(), &device)?;
        let tgt = Tensor::from_vec(tgt.clone(), tgt.len(), &device)?;
        let logits = out
            .logits
            .as_ref()
            .ok_or_else(|| Error::Spec("the model has no classifier".into()))?;
        Ok((cross_entropy(logits, &pos, &tgt)?, out))
    };
    train_loop(inputs, run, options.stop_after, &mut loss)
}

/// The training loop shared by every loss.
pub fn train_loop(
    inputs: LoopInputs,
    run: RunDir,
    stop_after: Option<usize>,
    loss_fn: &mut LossFn,
) -> Result<TrainOutcome> {
    let started = Instant::now();
    let spec = &inputs.spec;
    let device = Device::Cpu;
    let spec_json = serde_json::to_value(spec).expect("spec serialises");
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
    if optimizer_state.is_some() && history_before.last().is_some_and(|h| h.op == inputs.op) {
        // The resumed weights already record this run; it is recorded again when saving.
        history_before.pop();
    }
    let params_count = Budget::of_arch(&ckpt.arch).unique;
    let params = Params::from_checkpoint(&ckpt, &device)?;
    let mut model = Bert::new(&ckpt.arch, &params, dropouts_of(&ckpt.config));
    if let Some(g) = &inputs.head_gates {
        model = model.with_gates(g.clone());
    }
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
    vars.extend(inputs.extra_params.iter().map(|p| OptParam {
        var: p.var.clone(),
        name: p.name.clone(),
        ..*p
    }));
    let adam = AdamWConfig {
        weight_decay: spec.weight_decay,
        ..Default::default()
    };
    let mut optimizer = AdamW::new(vars, adam)?;
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
    let warmup = (spec.warmup_ratio * total_steps as f64).round() as usize;
    let pad_id = inputs.tokenizer.pad_id();
    let padding =
        bucket_batches(&lengths, spec.batch_size, Some(&mut Rng::new(spec.seed))).padding_ratio;

    require_resources(&run, &ckpt, spec, params_count)?;
    let history = |ckpt: &Checkpoint| {
        let mut h = history_before.clone();
        h.push(HistoryEntry {
            op: inputs.op.to_string(),
            args: spec_json.clone(),
            params_before: params_count,
            params_after: Budget::of_arch(&ckpt.arch).unique,
        });
        h
    };
    run.write_run_json(&serde_json::json!({
        "op": inputs.op,
        "spec": spec,
        "spec_hash": spec_hash,
        "labels": inputs.labels.labels(),
        "surgery_version": build_info::VERSION,
        "dependencies": build_info::dependencies(),
        "git_commit": build_info::GIT_COMMIT,
        "command": std::env::args().collect::<Vec<_>>(),
        "unique_parameters": params_count,
        "train_examples": lengths.len(),
        "train_tokens": inputs.train.num_tokens(),
        "padding_ratio": padding,
        "steps": total_steps,
        "provenance": inputs.provenance,
    }))?;
    eprintln!(
        "training {} unique parameters: {} examples, {} steps ({} per epoch), padding {:.1}%",
        params_count,
        lengths.len(),
        total_steps,
        steps_per_epoch,
        padding * 100.0
    );

    let evaluate = |model: &Bert, prepared: &Prepared| {
        evaluate_model(
            model,
            prepared,
            &inputs.labels,
            pad_id,
            spec.eval_batch_size,
            MetricMode::Default,
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
            let (loss, _) = loss_fn(
                &model,
                &data,
                &examples,
                &mut Mode::Train(&mut progress.rng),
            )?;
            let loss_value = loss.to_scalar::<f32>()? as f64;
            if !loss_value.is_finite() {
                return Err(diverged(&run, &progress, loss_value, |step| {
                    learning_rate(spec.lr, step, warmup, total_steps, spec.decay)
                }));
            }
            let grads = loss.backward()?;
            optimizer.accumulate(&grads)?;
            drop(grads);
            accumulated += 1;
            window_loss += loss_value;
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
                let secs = window_start.elapsed().as_secs_f64();
                let tps = window_tokens as f64 / secs.max(1e-9);
                let avg = window_loss / window_batches.max(1) as f64;
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
                let mut record = serde_json::json!({
                    "step": progress.step, "epoch": progress.epoch, "loss": avg, "lr": lr,
                    "grad_norm": grad_norm, "tokens_per_s": tps,
                });
                if let Some(g) = model.gates() {
                    record["gates"] = serde_json::to_value(g.values()?).expect("json");
                    record["expected_open_heads"] =
                        (g.expected_open()?.to_scalar::<f32>()? as f64).into();
                }
                run.log(&record)?;
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
    if model.gates().is_some() {
        crate::train::gates::write_gates_file(&run.path.join("gates.json"), &model)?;
        let metrics = std::fs::read_to_string(run.path.join("metrics.jsonl")).unwrap_or_default();
        if let Some(svg) = crate::train::gates::gates_svg(&metrics) {
            let path = run.path.join("gates.svg");
            std::fs::write(&path, svg).map_err(|e| Error::io(&path, e))?;
        }
    }
    let best_f1 = progress.best_f1.unwrap_or(0.0);
    let test = match &inputs.test {
        Some(test) => {
            let best = Checkpoint::open(&run.best())?;
            let best_model = crate::eval::infer::load_model(&best, &device)?;
            let e = evaluate(&best_model, test)?;
            std::fs::write(
                run.path.join("test.json"),
                serde_json::to_string_pretty(
                    &serde_json::json!({"report": e.report, "tokens_per_s": e.tokens_per_second}),
                )
                .expect("json"),
            )
            .map_err(|err| Error::io(run.path.join("test.json"), err))?;
            run.log(
                &serde_json::json!({"step": progress.step, "eval": "test", "f1": e.report.f1()}),
            )?;
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
    run.log(&serde_json::json!({
        "step": progress.step, "epoch": progress.epoch, "eval": "dev", "f1": f1,
        "precision": e.report.micro.precision, "recall": e.report.micro.recall,
        "eval_tokens_per_s": e.tokens_per_second,
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
    let saved = std::fs::read_to_string(run.last().join("state/progress.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Progress>(&t).ok());
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

/// Refuses a run the machine cannot hold before any compute: memory for the weights, gradients
/// and AdamW moments (plus a floor for activations), and disk for best/ and last/ (weights and
/// optimizer moments, each also staged once while it is replaced).
fn require_resources(run: &RunDir, ckpt: &Checkpoint, spec: &TrainSpec, params: u64) -> Result<()> {
    let arch = &ckpt.arch;
    let activations = (spec.batch_size * spec.max_len.min(arch.max_positions)) as u64
        * (arch.hidden * arch.num_layers().max(1)) as u64
        * 4
        * 8;
    crate::io::capacity::require_memory(
        &format!(
            "training {} parameters at batch size {}",
            crate::budget::group(params),
            spec.batch_size
        ),
        params.saturating_mul(16).saturating_add(activations),
    )?;
    crate::io::capacity::require_disk(
        &run.path,
        "the run's checkpoints (best/, last/ with optimizer state)",
        params.saturating_mul(32),
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
