//! Helpers shared by the integration tests: tiny generated checkpoints, running the binary,
//! locating optional data in ../shared.

mod cli;
mod setup;

pub use cli::*;
pub use setup::*;

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{Device, Tensor};
use surgery::arch::{BertConfig, Layout};
use surgery::io::Checkpoint;
use surgery::model::generate::random_checkpoint;

/// A tiny BERT config: 3 layers, hidden 16, 4 heads, intermediate 24, 5 labels, and the
/// vocabulary of the committed tiny tokenizer (fixtures/tiny-bert-tc, 177 pieces).
pub fn tiny_config() -> BertConfig {
    let mut config = BertConfig::from_json(
        r#"{"hidden_size": 16, "num_hidden_layers": 3, "num_attention_heads": 4,
            "intermediate_size": 24, "vocab_size": 177, "max_position_embeddings": 32,
            "model_type": "bert"}"#,
    )
    .unwrap();
    config.set_labels(&["O", "B-PER", "I-PER", "B-LOC", "I-LOC"].map(String::from));
    config
}

/// A random tiny checkpoint with a classifier; weights have std 0.3 so every layer matters, and
/// LayerNorm parameters are perturbed so their gradients and values are non-trivial.
pub fn tiny_checkpoint(config: BertConfig, layout: Layout, seed: u64) -> Checkpoint {
    let mut ckpt = random_checkpoint(config, layout, false, true, 0.3, seed).unwrap();
    perturb_norms(&mut ckpt, seed);
    let tokenizer = std::fs::read(repo().join("fixtures/tiny-bert-tc/tokenizer.json")).unwrap();
    ckpt.tokenizer_files
        .insert("tokenizer.json".into(), tokenizer);
    ckpt
}

fn perturb_norms(ckpt: &mut Checkpoint, seed: u64) {
    let mut rng = surgery::util::rng::Rng::new(seed + 1000);
    for (key, shape) in ckpt.arch.expected_tensors() {
        let is_norm = matches!(
            key,
            surgery::arch::Key::LayerNorm { .. } | surgery::arch::Key::EmbeddingNorm(_)
        );
        if is_norm {
            let t = ckpt.tensor(key, &Device::Cpu).unwrap();
            let noise: Vec<f32> = (0..shape[0]).map(|_| 0.1 * rng.normal()).collect();
            let noise = Tensor::from_vec(noise, shape.as_slice(), &Device::Cpu).unwrap();
            ckpt.set_tensor(key, (t + noise).unwrap());
        }
    }
}

/// Saves a checkpoint into `dir/name` and returns the folder.
pub fn save(ckpt: &Checkpoint, dir: &Path, name: &str) -> PathBuf {
    let out = dir.join(name);
    ckpt.save(&out, false, ckpt.history()).unwrap();
    out
}

pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the `surgery` binary.
pub fn surgery(args: &[&str]) -> Output {
    surgery_with_env(args, &[])
}

/// Runs the `surgery` binary with extra environment variables.
pub fn surgery_with_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_surgery"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run surgery");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The MiniLM checkpoint in ../shared, or None (with a message) when absent.
pub fn minilm() -> Option<PathBuf> {
    let dir = repo().join("../shared/models/minilm-l6-h384-uncased");
    if dir.join("model.safetensors").is_file() {
        Some(dir)
    } else {
        eprintln!("skipped: {} not found", dir.display());
        None
    }
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    max_abs(&(a - b).unwrap())
}

/// The largest absolute value in an f32 tensor.
pub fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// A random normal tensor (std 1) on the CPU.
pub fn random_tensor(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = surgery::util::rng::Rng::new(seed);
    let v: Vec<f32> = (0..shape.iter().product()).map(|_| rng.normal()).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// True when `python3 ARGS…` succeeds (a Python package the test needs imports); when it does
/// not, skips with a message, or panics when CI sets `required_by` to require the package.
pub fn python_check(args: &[&str], required_by: &str, what: &str) -> bool {
    let ok = Command::new("python3")
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var(required_by).is_err(),
            "{required_by} is set but python3 cannot import {what}"
        );
        eprintln!("skipped: python3 cannot import {what} (pip install {what})");
    }
    ok
}

/// The common options of a training command: data, hyper-parameters, run folder and the run
/// options a test sets (resume, stop, device).
pub fn common(
    data: &surgery::train::spec::DataSpec,
    spec: &surgery::train::spec::TrainSpec,
    out: &Path,
    options: surgery::train::spec::RunOptions,
) -> surgery::train::command::CommonArgs {
    use surgery::train::run_dir::Resume;
    let mut common = surgery::train::command::CommonArgs::new(out, data.clone(), spec.clone());
    let run = &mut common.run;
    run.resume = options.resume == Resume::Required;
    run.resume_if_present = options.resume == Resume::IfPresent;
    run.force = options.force;
    run.stop_after = options.stop_after;
    run.tensorboard = options.tensorboard;
    run.compute = options.compute;
    common
}

/// `train finetune` of `model` with `common`.
pub fn finetune(
    model: &Path,
    common: &surgery::train::command::CommonArgs,
) -> surgery::Result<surgery::train::trainer::TrainOutcome> {
    use surgery::train::command::TrainingCommand;
    surgery::train::finetune::FinetuneArgs::new(model).train(common)
}

/// `train distill` of `student` from `teacher` with `common`.
pub fn distill(
    student: &Path,
    teacher: &Path,
    spec: &surgery::train::distill::DistillSpec,
    common: &surgery::train::command::CommonArgs,
) -> surgery::Result<surgery::train::trainer::TrainOutcome> {
    use surgery::train::command::TrainingCommand;
    let args = surgery::train::distill::DistillArgs {
        student: student.to_path_buf(),
        teacher: teacher.to_path_buf(),
        distill: spec.clone(),
    };
    args.train(common)
}

/// `train gates` of `model` with `common`.
pub fn gates(
    model: &Path,
    spec: &surgery::train::gates::GateSpec,
    common: &surgery::train::command::CommonArgs,
) -> surgery::Result<surgery::train::trainer::TrainOutcome> {
    use surgery::train::command::TrainingCommand;
    let args = surgery::train::gates::GatesArgs {
        checkpoint: model.to_path_buf(),
        gates: spec.clone(),
    };
    args.train(common)
}
