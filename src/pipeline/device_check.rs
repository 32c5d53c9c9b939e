//! `check-device`: whether a device and its kernels compute what the CPU's fused kernels
//! compute, on tiny random models of every structure the toolkit makes (dense, factorized
//! embeddings, low-rank linears, shared layers, per-layer heads down to none, sparse linears):
//! the logits, every parameter's gradient, and a short fine-tuning loss curve. Dropout is off in
//! these models, so the two sides draw no masks and the curves are comparable step by step.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use clap::Parser;
use serde::Serialize;

use crate::arch::{BertConfig, Layout};
use crate::cuts::registry::SurgeryCommand;
use crate::data::labels::UnknownLabels;
use crate::data::tokenize::WordTokenizer;
use crate::data::{read_dataset, Alignment, LabelSet, ReadOptions};
use crate::error::{Error, Result};
use crate::eval::{collate, Prepared};
use crate::io::Checkpoint;
use crate::kernels::{device, Compute, Kernels};
use crate::model::generate::{attach_classifier, random_checkpoint};
use crate::model::loss::batch_cross_entropy;
use crate::model::{dropouts_of, Bert, Mode, Outputs, Params};
use crate::train::command::{CommonArgs, TrainingCommand};
use crate::train::finetune::FinetuneArgs;
use crate::train::schedule::Decay;
use crate::train::spec::{DataSpec, TrainSpec};

/// The largest relative differences accepted (of the reference's largest magnitude).
pub const LOGITS_TOLERANCE: f64 = 1e-4;
pub const GRADIENT_TOLERANCE: f64 = 1e-3;
pub const LOSS_TOLERANCE: f64 = 1e-3;

/// The structures checked: a name and the surgery (CLI words after IN OUT) that makes it from
/// a dense 2-layer model with 4 heads per layer.
pub const STRUCTURES: [(&str, &[&str]); 6] = [
    ("dense", &[]),
    ("factorized", &["factorize-embeddings", "--rank", "8"]),
    ("low-rank", &["lowrank-layers", "--rank", "4"]),
    ("shared", &["tie-layers", "--groups", "0-1"]),
    ("heads", &["remove-heads", "--heads", "0:0,1,2,3;1:1"]),
    ("sparse", &["magnitude", "--sparsity", "0.5"]),
];

/// One structure's largest differences against the CPU's fused kernels.
#[derive(Debug, Clone, Serialize)]
pub struct StructureCheck {
    pub structure: String,
    /// max |Δ| / max |reference| over the logits of an eval-mode forward pass.
    pub logits: f64,
    /// The same over each parameter's gradient (at least a thousandth of the largest gradient
    /// in the denominator), the worst parameter's.
    pub gradients: f64,
    pub worst_gradient: String,
    /// max over steps of |Δloss| / |loss| of the fine-tuning curve.
    pub losses: f64,
    pub steps: usize,
    pub ok: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeviceCheck {
    pub device: String,
    pub kernels: Kernels,
    pub structures: Vec<StructureCheck>,
    pub ok: bool,
}

/// Runs every check of `compute` against the CPU's fused kernels, fine-tuning `steps` steps.
pub fn check(compute: Compute, steps: usize) -> Result<DeviceCheck> {
    let (device, kernels) = compute.open()?;
    let work = Workspace::new()?;
    let data = work.write_data()?;
    let base = work.base_model(&data)?;
    let mut structures = vec![];
    for (name, cut) in STRUCTURES {
        let model = cut_model(&base, cut, &work.path.join(name))?;
        let ckpt = Checkpoint::open(&model)?;
        let (logits, gradients, worst_gradient) =
            forward_and_backward(&ckpt, &data, &device, kernels)?;
        let reference = fine_tune(
            &model,
            &data,
            steps,
            Compute::default(),
            &work.path.join(format!("{name}-cpu")),
        )?;
        // The same option the command got: it resolves to the same kernels again.
        let curve = fine_tune(
            &model,
            &data,
            steps,
            compute,
            &work.path.join(format!("{name}-target")),
        )?;
        let losses = reference
            .iter()
            .zip(&curve)
            .map(|(a, b)| (a - b).abs() / a.abs().max(1e-12))
            .fold(
                if reference.len() == curve.len() {
                    0.0
                } else {
                    f64::INFINITY
                },
                f64::max,
            );
        structures.push(StructureCheck {
            structure: name.into(),
            ok: logits <= LOGITS_TOLERANCE
                && gradients <= GRADIENT_TOLERANCE
                && losses <= LOSS_TOLERANCE,
            logits,
            gradients,
            worst_gradient,
            losses,
            steps: curve.len(),
        });
    }
    Ok(DeviceCheck {
        device: device::name(&device),
        kernels,
        ok: structures.iter().all(|s| s.ok),
        structures,
    })
}

/// A temporary folder, removed when dropped.
struct Workspace {
    path: PathBuf,
}

/// The synthetic corpus and tokenizer of the check.
struct CheckData {
    spec: DataSpec,
    tokenizer_json: String,
    vocab: usize,
    labels: LabelSet,
}

impl Workspace {
    fn new() -> Result<Self> {
        let path =
            std::env::temp_dir().join(format!("surgery-check-device-{}", std::process::id()));
        if path.exists() {
            std::fs::remove_dir_all(&path).map_err(|e| Error::io(&path, e))?;
        }
        std::fs::create_dir_all(&path).map_err(|e| Error::io(&path, e))?;
        Ok(Workspace { path })
    }

    fn write_data(&self) -> Result<CheckData> {
        let mut datasets = vec![];
        for (name, n, seed) in [("train", 96, 1), ("dev", 24, 2)] {
            let path = self.path.join(format!("{name}.txt"));
            let sentences = crate::data::synthetic::sentences(n, seed, name != "train");
            crate::data::synthetic::write_conll(&path, &sentences)?;
            datasets.push(read_dataset(&path, &ReadOptions::default())?);
        }
        let (tokenizer_json, vocab) =
            crate::data::synthetic::wordpiece_tokenizer_json(&datasets.iter().collect::<Vec<_>>());
        Ok(CheckData {
            spec: DataSpec {
                train: self.path.join("train.txt"),
                dev: self.path.join("dev.txt"),
                test: None,
                iob1: false,
                unknown_labels: UnknownLabels::Error,
                reinit_classifier: false,
                tag_names: vec![],
            },
            tokenizer_json,
            vocab,
            labels: LabelSet::discover(&datasets[0])?,
        })
    }

    /// A dense 2-layer model with a classifier and no dropout.
    fn base_model(&self, data: &CheckData) -> Result<PathBuf> {
        let config = BertConfig::from_json(&format!(
            r#"{{"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                "intermediate_size": 64, "vocab_size": {}, "max_position_embeddings": 64,
                "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}}"#,
            data.vocab
        ))
        .map_err(|e| Error::Internal(format!("the check model's config: {e}")))?;
        let mut ckpt = random_checkpoint(config, Layout::Bare, false, false, 0.02, 1)?;
        attach_classifier(&mut ckpt, data.labels.labels(), 0.02, 2)?;
        ckpt.tokenizer_files.insert(
            "tokenizer.json".into(),
            data.tokenizer_json.clone().into_bytes(),
        );
        let path = self.path.join("dense");
        ckpt.save(&path, false, vec![])?;
        Ok(path)
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The base model cut by one surgery (its CLI words), saved at `out`.
fn cut_model(base: &Path, cut: &[&str], out: &Path) -> Result<PathBuf> {
    if cut.is_empty() {
        return Ok(base.to_path_buf());
    }
    #[derive(Parser)]
    struct One {
        #[command(subcommand)]
        cut: SurgeryCommand,
    }
    let (input, output) = (base.display().to_string(), out.display().to_string());
    let argv = ["surgery", cut[0], &input, &output]
        .into_iter()
        .chain(cut[1..].iter().copied());
    let one = One::try_parse_from(argv).map_err(|e| Error::Internal(e.to_string()))?;
    let outcome = one.cut.apply(&Checkpoint::open(base)?)?;
    outcome.checkpoint.save(out, false, vec![])?;
    Ok(out.to_path_buf())
}

/// Logits and gradients of a cross-entropy loss on the CPU's fused kernels and on the target:
/// (logits difference, worst gradient difference, its parameter).
fn forward_and_backward(
    ckpt: &Checkpoint,
    data: &CheckData,
    device: &Device,
    kernels: Kernels,
) -> Result<(f64, f64, String)> {
    let tokenizer = WordTokenizer::from_checkpoint(ckpt)?;
    let prepared = Prepared::new(
        &tokenizer,
        read_dataset(&data.spec.train, &ReadOptions::default())?,
        &data.labels,
        UnknownLabels::Error,
        Alignment::FirstSubtoken,
        64,
    )?;
    // Sentences of different lengths, so the batch has padding.
    let examples: Vec<_> = prepared.examples.iter().take(8).collect();
    let run = |device: &Device, kernels: Kernels| -> Result<(Tensor, Vec<(String, Tensor)>)> {
        let params = Params::from_checkpoint(ckpt, device)?;
        let model = Bert::new(&ckpt.arch, &params, dropouts_of(&ckpt.config)).with_kernels(kernels);
        let batch = collate(&examples, tokenizer.pad_id(), device)?;
        let out = model.forward(&batch.batch, &mut Mode::Eval, Outputs::default())?;
        let loss = batch_cross_entropy(&out, &batch.labels)?;
        let grads = loss.backward()?;
        let mut per_param = vec![];
        for (key, var) in params.vars() {
            if let Some(g) = grads.get(var) {
                per_param.push((key.name(ckpt.arch.layout), g.to_device(&Device::Cpu)?));
            }
        }
        let logits = out
            .logits
            .ok_or_else(|| Error::Internal("no classifier".into()))?;
        Ok((logits.to_device(&Device::Cpu)?, per_param))
    };
    let (ref_logits, ref_grads) = run(&Device::Cpu, Kernels::Fused)?;
    let (logits, grads) = run(device, kernels)?;
    if ref_grads.len() != grads.len() {
        return Err(Error::Internal(format!(
            "{} parameters got a gradient on the CPU, {} on {}",
            ref_grads.len(),
            grads.len(),
            device::name(device)
        )));
    }
    // A gradient that is zero in exact arithmetic (a key bias: softmax ignores it) is rounding
    // noise on both sides; each gradient is compared at least at a thousandth of the largest.
    let mut largest = 0f64;
    for (_, a) in &ref_grads {
        largest = largest.max(max_abs(a)?);
    }
    let mut worst = (0.0, String::new());
    for ((name, a), (_, b)) in ref_grads.iter().zip(&grads) {
        let d = max_abs(&(a - b)?)? / max_abs(a)?.max(1e-3 * largest).max(1e-30);
        if d >= worst.0 {
            worst = (d, name.clone());
        }
    }
    Ok((relative_difference(&ref_logits, &logits)?, worst.0, worst.1))
}

/// max |t| (0 for an empty tensor).
fn max_abs(t: &Tensor) -> Result<f64> {
    if t.elem_count() == 0 {
        return Ok(0.0);
    }
    Ok(t.abs()?
        .flatten_all()?
        .max(0)?
        .to_dtype(candle_core::DType::F64)?
        .to_scalar::<f64>()?)
}

/// max |a − b| / max |a|.
fn relative_difference(a: &Tensor, b: &Tensor) -> Result<f64> {
    Ok(max_abs(&(a - b)?)? / max_abs(a)?.max(1e-30))
}

/// The logged losses of a `steps`-step fine-tune (every step logged).
fn fine_tune(
    model: &Path,
    data: &CheckData,
    steps: usize,
    compute: Compute,
    out: &Path,
) -> Result<Vec<f64>> {
    let spec = TrainSpec {
        epochs: 100,
        batch_size: 16,
        lr: 1e-3,
        weight_decay: 0.01,
        warmup_ratio: 0.1,
        decay: Decay::Linear,
        max_grad_norm: 1.0,
        grad_accum: 1,
        seed: 7,
        eval_every: steps,
        max_steps: steps,
        max_len: 64,
        label_all_subtokens: false,
        log_every: 1,
        eval_batch_size: 64,
        max_train_sentences: None,
        precision: Default::default(),
    };
    let mut common = CommonArgs::new(out, data.spec.clone(), spec);
    common.run.compute = compute;
    FinetuneArgs::new(model).train(&common)?;
    let metrics = crate::io::artefacts::read_metrics(&out.join("metrics.jsonl"))?;
    Ok(metrics
        .iter()
        .filter_map(|m| match m {
            crate::io::artefacts::MetricLine::Train(t) => Some(t.loss),
            _ => None,
        })
        .collect())
}
