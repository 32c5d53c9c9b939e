//! The generic kernels (standard candle ops, which run on any device) against the fused CPU
//! ones: the same training, step by step, on every structure and every objective. The
//! optimizer follows the kernels (in place in RAM for fused, tensors on the device for
//! generic), so these runs also compare the two optimizers.

use std::path::{Path, PathBuf};

use surgery::io::Checkpoint;
use surgery::kernels::{Compute, KernelChoice};
use surgery::train::distill::DistillSpec;
use surgery::train::gates::GateSpec;
use surgery::train::label_smoothing::LabelSmoothing;
use surgery::train::spec::{RunOptions, TrainSpec};

use crate::util::{max_abs_diff, quick_spec, setup, surgery, Setup};

const CPU: candle_core::Device = candle_core::Device::Cpu;

const KERNELS: [KernelChoice; 2] = [KernelChoice::Fused, KernelChoice::Generic];

fn options(kernels: KernelChoice) -> RunOptions {
    RunOptions {
        compute: Compute {
            kernels,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// 30 steps, each logged.
fn spec() -> TrainSpec {
    let mut spec = quick_spec();
    spec.epochs = 10;
    spec.max_steps = 30;
    spec.log_every = 1;
    spec.eval_every = 30;
    spec
}

/// The logged training losses of a run, in step order.
fn losses(run: &Path) -> Vec<f64> {
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    metrics
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.get("eval").is_none().then(|| v["loss"].as_f64().unwrap())
        })
        .collect()
}

fn assert_same_curve(fused: &[f64], generic: &[f64], what: &str) {
    assert_eq!(fused.len(), 30, "{what}: logged steps");
    assert_eq!(fused.len(), generic.len(), "{what}: logged steps");
    for (step, (a, b)) in fused.iter().zip(generic).enumerate() {
        let rel = (a - b).abs() / a.abs().max(1e-12);
        assert!(
            rel <= 1e-3,
            "{what}: step {}: fused {a} vs generic {b}",
            step + 1
        );
    }
}

/// `setup`'s model cut by one surgery (CLI arguments after IN OUT), or as it is.
fn cut(s: &Setup, name: &str, args: &[&str]) -> PathBuf {
    if args.is_empty() {
        return s.model.clone();
    }
    let out = s.dir.path().join(name);
    let (input, output) = (s.model.display().to_string(), out.display().to_string());
    let mut argv = vec![args[0], input.as_str(), output.as_str()];
    argv.extend(&args[1..]);
    let run = surgery(&argv);
    assert_eq!(run.code, 0, "{name}: {}", run.stderr);
    out
}

#[test]
fn generic_kernels_fine_tune_like_fused_on_every_structure() {
    let s = setup(64);
    for (name, args) in surgery::pipeline::device_check::STRUCTURES {
        let model = cut(&s, name, args);
        let curves: Vec<Vec<f64>> = KERNELS
            .iter()
            .map(|&k| {
                let out = s.dir.path().join(format!("{name}-{k:?}"));
                crate::util::finetune(
                    &model,
                    &crate::util::common(&s.data, &spec(), &out, options(k)),
                )
                .unwrap();
                losses(&out)
            })
            .collect();
        assert_same_curve(&curves[0], &curves[1], name);
    }
}

#[test]
fn generic_kernels_train_like_fused_with_every_objective() {
    let s = setup(64);
    let teacher_run = s.dir.path().join("teacher");
    crate::util::finetune(
        &s.model,
        &crate::util::common(&s.data, &spec(), &teacher_run, RunOptions::default()),
    )
    .unwrap();
    let teacher = teacher_run.join("best");
    let objectives = ["label smoothing", "gates", "distillation"];
    for objective in objectives {
        let curves: Vec<Vec<f64>> = KERNELS
            .iter()
            .map(|&k| {
                let out = s.dir.path().join(format!("{objective}-{k:?}"));
                match objective {
                    "label smoothing" => {
                        let mut ls = LabelSmoothing::new(0.1).unwrap();
                        surgery::train::finetune::supervised(
                            &s.model,
                            &crate::util::common(&s.data, &spec(), &out, options(k)),
                            &mut ls,
                        )
                        .map(|_| ())
                    }
                    "gates" => {
                        let gates = GateSpec {
                            l0: None,
                            target_heads: Some(5),
                            lambda_lr: 1e-2,
                            gate_lr: 0.1,
                            gate_init: 3.0,
                        };
                        crate::util::gates(
                            &teacher,
                            &gates,
                            &crate::util::common(&s.data, &spec(), &out, options(k)),
                        )
                        .map(|_| ())
                    }
                    _ => {
                        let kd = DistillSpec {
                            temperature: 2.0,
                            alpha: 0.5,
                            hidden_weight: 1.0,
                            attention_weight: 1.0,
                            layer_map: None,
                            cache_teacher: None,
                            augment: vec![],
                            augment_ratio: 1.0,
                            augment_seed: None,
                        };
                        crate::util::distill(
                            &s.model,
                            &teacher,
                            &kd,
                            &crate::util::common(&s.data, &spec(), &out, options(k)),
                        )
                        .map(|_| ())
                    }
                }
                .unwrap();
                losses(&out)
            })
            .collect();
        assert_same_curve(&curves[0], &curves[1], objective);
    }
}

/// A resumed run on the generic path (optimizer state on the device) continues exactly where
/// the uninterrupted one would be.
#[test]
fn generic_kernels_resume_exactly() {
    let s = setup(64);
    let full = s.dir.path().join("full");
    crate::util::finetune(
        &s.model,
        &crate::util::common(&s.data, &spec(), &full, options(KernelChoice::Generic)),
    )
    .unwrap();
    let cut = s.dir.path().join("cut");
    let stopped = RunOptions {
        stop_after: Some(13),
        ..options(KernelChoice::Generic)
    };
    crate::util::finetune(
        &s.model,
        &crate::util::common(&s.data, &spec(), &cut, stopped),
    )
    .unwrap();
    let resumed = RunOptions {
        resume: surgery::train::run_dir::Resume::Required,
        ..options(KernelChoice::Generic)
    };
    crate::util::finetune(
        &s.model,
        &crate::util::common(&s.data, &spec(), &cut, resumed),
    )
    .unwrap();
    assert_eq!(losses(&full), losses(&cut));
    let (a, b) = (
        Checkpoint::open(&full.join("last/model")).unwrap(),
        Checkpoint::open(&cut.join("last/model")).unwrap(),
    );
    for (key, _) in a.arch.expected_tensors() {
        let (x, y) = (a.tensor(key, &CPU).unwrap(), b.tensor(key, &CPU).unwrap());
        assert_eq!(max_abs_diff(&x, &y), 0.0, "{key} differs after resuming");
    }
}

#[test]
fn cuda_without_the_feature_and_fused_off_the_cpu_are_user_errors() {
    let s = setup(16);
    let out = s.dir.path().join("run");
    let (model, out_s) = (s.model.display().to_string(), out.display().to_string());
    let train = s.data.train.display().to_string();
    let dev = s.data.dev.display().to_string();
    for (device, want) in [
        (
            "cuda",
            "this build has no CUDA support: rebuild with `--features cuda`",
        ),
        ("cuda:7", "this build has no CUDA support"),
        ("gpu", "expected cpu, cuda or cuda:N"),
    ] {
        let run = surgery(&[
            "train", "finetune", &model, "--train", &train, "--dev", &dev, "--out", &out_s,
            "--device", device,
        ]);
        assert_eq!(run.code, 2, "{device}: {}", run.stderr);
        assert!(run.stderr.contains(want), "{device}: {}", run.stderr);
    }
    assert!(!out.join("run.json").exists());
}

/// `check-device` on the CPU's generic kernels passes every structure's logits, gradients and
/// loss curve against the fused ones, and says so in its JSON.
#[test]
fn check_device_passes_the_generic_kernels_on_the_cpu() {
    let run = surgery(&[
        "check-device",
        "--kernels",
        "generic",
        "--steps",
        "10",
        "--json",
    ]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let structures = report["structures"].as_array().unwrap();
    assert_eq!(structures.len(), 6);
    for s in structures {
        assert_eq!(s["ok"], true, "{s}");
        assert_eq!(s["steps"], 10, "{s}");
    }
}
