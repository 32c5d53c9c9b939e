//! The fine-tuning trainer on tiny synthetic data: it learns, a seed makes it repeatable, an
//! interrupted run resumes to the same weights, a NaN loss stops it cleanly, and bad data or a
//! mismatching classifier are refused with clear errors; a resume checks its data and run record
//! and repeats no metric line.

use std::path::{Path, PathBuf};

use candle_core::Device;
use surgery::arch::{Key, Layout, NormPart};
use surgery::io::Checkpoint;
use surgery::train::run_dir::Resume;
use surgery::train::spec::RunOptions;

use crate::util::{
    assert_refused, conll, finetune_args, max_abs_diff, one_step_labels, overflowing_model,
    quick_spec, refused_cleanly, run, run_strings, s, save, setup, surgery, surgery_with_env,
    tempdir, tiny_checkpoint, tiny_config, trained, Setup,
};

fn weights(path: &Path) -> Checkpoint {
    Checkpoint::open(path).unwrap()
}

fn assert_same_weights(a: &Checkpoint, b: &Checkpoint) {
    for (key, _) in a.arch.expected_tensors() {
        let d = max_abs_diff(
            &a.tensor(key, &Device::Cpu).unwrap(),
            &b.tensor(key, &Device::Cpu).unwrap(),
        );
        assert_eq!(d, 0.0, "{key} differs by {d}");
    }
}

#[test]
fn finetuning_learns_and_writes_the_run_folder() {
    let s = setup(1000);
    let out = s.dir.path().join("run");
    let mut spec = quick_spec();
    spec.epochs = 3;
    let outcome = crate::util::finetune(
        &s.model,
        &crate::util::common(&s.data, &spec, &out, RunOptions::default()),
    )
    .unwrap();
    assert!(outcome.best_dev_f1 > 0.5, "dev F1 {}", outcome.best_dev_f1);
    assert!(outcome.test.unwrap().f1() > 0.4);
    for file in [
        "run.json",
        "metrics.jsonl",
        "test.json",
        "best/model.safetensors",
        "last/state/progress.json",
    ] {
        assert!(out.join(file).exists(), "{file}");
    }
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let losses: Vec<f64> = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter_map(|v| v["loss"].as_f64())
        .collect();
    assert!(losses.last().unwrap() < &(losses[0] * 0.5), "{losses:?}");
    let run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    assert_eq!(run["spec"]["lr"], 1e-3);
    assert!(run["provenance"]["files"]["train"]["fnv1a64"].is_string());
    // The best checkpoint carries the labels and the history.
    let best = weights(&out.join("best"));
    assert_eq!(best.config.labels().unwrap()[0], "O");
    assert_eq!(best.history().last().unwrap().op, "train finetune");
}

#[test]
fn a_seed_makes_training_repeatable() {
    let s = setup(96);
    let mut spec = quick_spec();
    spec.epochs = 1;
    let a = s.dir.path().join("a");
    let b = s.dir.path().join("b");
    crate::util::finetune(
        &s.model,
        &crate::util::common(&s.data, &spec, &a, RunOptions::default()),
    )
    .unwrap();
    crate::util::finetune(
        &s.model,
        &crate::util::common(&s.data, &spec, &b, RunOptions::default()),
    )
    .unwrap();
    assert_same_weights(
        &weights(&a.join("last/model")),
        &weights(&b.join("last/model")),
    );
    spec.seed += 1;
    let c = s.dir.path().join("c");
    crate::util::finetune(
        &s.model,
        &crate::util::common(&s.data, &spec, &c, RunOptions::default()),
    )
    .unwrap();
    let (x, y) = (
        weights(&a.join("last/model")),
        weights(&c.join("last/model")),
    );
    let key = Key::Classifier(NormPart::Weight);
    assert!(
        max_abs_diff(
            &x.tensor(key, &Device::Cpu).unwrap(),
            &y.tensor(key, &Device::Cpu).unwrap()
        ) > 0.0
    );
}

#[test]
fn an_interrupted_run_resumes_to_the_same_weights() {
    let s = setup(96);
    let spec = quick_spec(); // 2 epochs of 6 batches = 12 steps
    let full = s.dir.path().join("full");
    crate::util::finetune(
        &s.model,
        &crate::util::common(&s.data, &spec, &full, RunOptions::default()),
    )
    .unwrap();
    let cut = s.dir.path().join("cut");
    let stopped = RunOptions {
        stop_after: Some(7),
        ..Default::default()
    };
    let partial = crate::util::finetune(
        &s.model,
        &crate::util::common(&s.data, &spec, &cut, stopped),
    )
    .unwrap();
    assert_eq!(partial.steps, 7);
    let resumed = crate::util::finetune(
        &s.model,
        &crate::util::common(
            &s.data,
            &spec,
            &cut,
            RunOptions {
                resume: Resume::Required,
                ..Default::default()
            },
        ),
    )
    .unwrap();
    assert_eq!(resumed.steps, 12);
    assert_same_weights(
        &weights(&full.join("last/model")),
        &weights(&cut.join("last/model")),
    );
    // A different spec is refused on resume.
    let mut other = spec.clone();
    other.lr *= 2.0;
    let err = crate::util::finetune(
        &s.model,
        &crate::util::common(
            &s.data,
            &other,
            &cut,
            RunOptions {
                resume: Resume::Required,
                ..Default::default()
            },
        ),
    )
    .unwrap_err();
    assert!(err.to_string().contains("other hyper-parameters"), "{err}");
    // An existing run folder is not overwritten without --force.
    let err = crate::util::finetune(
        &s.model,
        &crate::util::common(&s.data, &spec, &cut, RunOptions::default()),
    )
    .unwrap_err();
    assert!(matches!(err, surgery::Error::OutputExists { .. }));
}

#[test]
fn a_nan_loss_stops_the_run_with_a_clear_message() {
    let s = setup(64);
    let ckpt = overflowing_model(&s);
    let broken = s.dir.path().join("broken");
    ckpt.save(&broken, false, vec![]).unwrap();
    let err = crate::util::finetune(
        &broken,
        &crate::util::common(
            &s.data,
            &quick_spec(),
            &s.dir.path().join("run"),
            RunOptions::default(),
        ),
    )
    .unwrap_err();
    let msg = err.to_string();
    // The first batch diverges before any update; the starting point was evaluated and saved.
    assert!(
        msg.contains("loss became NaN in step 1")
            && msg.contains("before any update")
            && msg.contains("last saved state (step 0)"),
        "{msg}"
    );
    assert!(matches!(err, surgery::Error::Diverged(_)), "{err:?}");
}

#[test]
fn a_classifier_with_other_labels_is_refused_unless_reinitialised() {
    let s = setup(64);
    let mut ckpt = Checkpoint::open(&s.model).unwrap();
    surgery::model::generate::attach_classifier(
        &mut ckpt,
        &["O".into(), "B-X".into(), "I-X".into()],
        0.02,
        1,
    )
    .unwrap();
    let other = s.dir.path().join("other");
    ckpt.save(&other, false, vec![]).unwrap();
    let mut spec = quick_spec();
    spec.max_steps = 2;
    let err = crate::util::finetune(
        &other,
        &crate::util::common(
            &s.data,
            &spec,
            &s.dir.path().join("r1"),
            RunOptions::default(),
        ),
    )
    .unwrap_err();
    assert!(err.to_string().contains("--reinit-classifier"), "{err}");
    let mut data = s.data.clone();
    data.reinit_classifier = true;
    crate::util::finetune(
        &other,
        &crate::util::common(
            &data,
            &spec,
            &s.dir.path().join("r2"),
            RunOptions::default(),
        ),
    )
    .unwrap();
    assert_eq!(
        weights(&s.dir.path().join("r2/best")).arch.num_labels,
        Some(9)
    );
}

#[test]
fn the_cli_trains_evaluates_scores_and_predicts() {
    let s = setup(64);
    let run = s.dir.path().join("run");
    let r = surgery(&[
        "train",
        "finetune",
        s.model.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--train",
        s.data.train.to_str().unwrap(),
        "--dev",
        s.data.dev.to_str().unwrap(),
        "--epochs",
        "1",
        "--lr",
        "1e-3",
        "--batch-size",
        "16",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("best dev F1"), "{}", r.stdout);
    let best = run.join("best");
    let predictions = s.dir.path().join("pred.txt");
    let r = surgery(&[
        "eval",
        best.to_str().unwrap(),
        "--data",
        s.data.test.as_ref().unwrap().to_str().unwrap(),
        "--json",
        "--write-predictions",
        predictions.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let eval: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    // `score` on the written predictions reproduces the F1 of `eval`.
    let r = surgery(&["score", predictions.to_str().unwrap(), "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let score: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(score["micro"]["f1"], eval["report"]["micro"]["f1"]);
    assert!(eval["tokens_per_s"].as_f64().unwrap() > 0.0);
    let text = s.dir.path().join("text.txt");
    std::fs::write(
        &text,
        "Anna Smith visited Paris on Monday.\n\nShares of Siemens rose.\n",
    )
    .unwrap();
    let r = surgery(&[
        "predict",
        best.to_str().unwrap(),
        "--input",
        text.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let lines: Vec<serde_json::Value> = r
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[1]["entities"].as_array().unwrap().len(), 0);
    for e in lines[0]["entities"].as_array().unwrap() {
        let (start, end) = (
            e["start"].as_u64().unwrap() as usize,
            e["end"].as_u64().unwrap() as usize,
        );
        assert_eq!(
            &lines[0]["text"].as_str().unwrap()[start..end],
            e["text"].as_str().unwrap()
        );
    }
}

#[test]
fn the_quickstart_runs_end_to_end() {
    let dir = tempdir();
    let out = dir.path().join("qs");
    let r = surgery(&["quickstart", "--out", out.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("micro avg") && r.stdout.contains("unique parameters"),
        "{}",
        r.stdout
    );
}

#[test]
fn run_json_records_the_binarys_own_commit_and_dependency_versions() {
    let s = setup(32);
    // Run from inside another git repository: its commit must not be the one recorded.
    let other = s.dir.path().join("other-repo");
    std::fs::create_dir(&other).unwrap();
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(&other)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let other_head = git(&["init", "-q"])
        .and_then(|_| {
            git(&[
                "-c",
                "user.email=a@b",
                "-c",
                "user.name=a",
                "commit",
                "-q",
                "--allow-empty",
                "-m",
                "x",
            ])
        })
        .and_then(|_| git(&["rev-parse", "HEAD"]));
    let out = s.dir.path().join("run");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_surgery"))
        .args([
            "train",
            "finetune",
            s.model.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .args([
            "--train",
            s.data.train.to_str().unwrap(),
            "--dev",
            s.data.dev.to_str().unwrap(),
        ])
        .args(["--max-steps", "1"])
        .current_dir(&other)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    assert_eq!(run["git_commit"], surgery::util::build_info::GIT_COMMIT);
    if let Some(head) = other_head {
        assert_ne!(run["git_commit"].as_str(), Some(head.as_str()));
    }
    let candle = run["dependencies"]["candle-core"].as_str().unwrap();
    assert!(candle.starts_with("0."), "{candle}");
}

#[test]
fn tensorboard_events_mirror_the_metric_lines() {
    let s = setup(48);
    let out = s.dir.path().join("run");
    let mut spec = quick_spec();
    spec.max_steps = 6;
    spec.log_every = 2;
    let options = RunOptions {
        tensorboard: true,
        ..Default::default()
    };
    crate::util::finetune(
        &s.model,
        &crate::util::common(&s.data, &spec, &out, options),
    )
    .unwrap();
    let files: Vec<_> = std::fs::read_dir(out.join("tensorboard"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let events = surgery::io::tensorboard::read_events(&files[0]).unwrap();
    let losses: Vec<(i64, f32)> = events
        .iter()
        .filter_map(|e| {
            let v = e
                .summary
                .as_ref()?
                .value
                .iter()
                .find(|v| v.tag == "train/loss")?;
            Some((e.step, v.simple_value?))
        })
        .collect();
    let metrics = surgery::io::artefacts::read_metrics(&out.join("metrics.jsonl")).unwrap();
    let expected: Vec<(i64, f32)> = metrics
        .iter()
        .filter_map(|l| match l {
            surgery::io::artefacts::MetricLine::Train(t) => Some((t.step as i64, t.loss as f32)),
            _ => None,
        })
        .collect();
    assert_eq!(losses, expected);
    assert!(events.iter().any(|e| e
        .summary
        .as_ref()
        .is_some_and(|s| s.value.iter().any(|v| v.tag == "dev/f1"))));
}

#[test]
fn label_smoothing_mixes_the_gold_and_the_uniform_cross_entropy() {
    use surgery::model::Mode;
    use surgery::train::label_smoothing::LabelSmoothing;
    use surgery::train::objective::Objective;
    let s = setup(16);
    let prepared = surgery::train::inputs::finetune_inputs(
        &s.model,
        &crate::util::common(
            &s.data,
            &quick_spec(),
            &s.dir.path().join("unused"),
            Default::default(),
        ),
    )
    .unwrap();
    let model = surgery::eval::infer::load_model(&prepared.ckpt, &Device::Cpu).unwrap();
    let examples: Vec<_> = prepared.train.examples.iter().take(4).collect();
    let batch =
        surgery::eval::collate(&examples, prepared.tokenizer.pad_id(), &Device::Cpu).unwrap();
    let loss = |eps: f64| {
        LabelSmoothing::new(eps)
            .unwrap()
            .loss(&model, &batch, &examples, &mut Mode::Eval)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64
    };
    // The same by hand from the logits: (1−ε)·(lse − z_gold) + ε·mean_c(lse − z_c).
    let out = model
        .forward(&batch.batch, &mut Mode::Eval, Default::default())
        .unwrap();
    let logits = out.logits.unwrap().to_vec3::<f32>().unwrap();
    let (mut gold, mut uniform, mut n) = (0.0, 0.0, 0.0);
    for (row, labels) in logits.iter().zip(&batch.labels) {
        for (z, &y) in row.iter().zip(labels) {
            if y < 0 {
                continue;
            }
            let lse = z.iter().map(|v| (*v as f64).exp()).sum::<f64>().ln();
            gold += lse - z[y as usize] as f64;
            uniform += z.iter().map(|v| lse - *v as f64).sum::<f64>() / z.len() as f64;
            n += 1.0;
        }
    }
    let eps = 0.1;
    let want = (1.0 - eps) * gold / n + eps * uniform / n;
    assert!((loss(eps) - want).abs() < 1e-4, "{} vs {want}", loss(eps));
    assert!((loss(0.0) - gold / n).abs() < 1e-4);
}

/// `--precision bf16` (autocast) learns as f32 does, on the kernels this CPU has and on the
/// portable paths that a CPU without AVX512-BF16 and AVX-512 takes (both forced here), and
/// `eval` runs it too.
#[test]
fn bf16_training_learns_on_the_detected_kernel_and_on_the_forced_fallback() {
    let s = setup(1000);
    let root = s.dir.path();
    let model = s.model.to_str().unwrap();
    let (train, dev) = (s.data.train.to_str().unwrap(), s.data.dev.to_str().unwrap());
    let test = s.data.test.as_ref().unwrap().to_str().unwrap();
    let mut finals = vec![];
    for (name, precision, forced) in [
        ("f32", "f32", false),
        ("bf16", "bf16", false),
        ("bf16-portable", "bf16", true),
    ] {
        let out = root.join(name);
        let env: &[(&str, &str)] = if forced {
            &[
                ("SURGERY_BF16_KERNEL", "portable"),
                ("SURGERY_SIMD", "portable"),
            ]
        } else {
            &[]
        };
        let args = [
            "train",
            "finetune",
            model,
            "--train",
            train,
            "--dev",
            dev,
            "--test",
            test,
            "--out",
            out.to_str().unwrap(),
            "--epochs",
            "3",
            "--batch-size",
            "16",
            "--lr",
            "1e-3",
            "--seed",
            "7",
            "--precision",
            precision,
        ];
        let r = surgery_with_env(&args, env);
        assert_eq!(r.code, 0, "{name}: {}", r.stderr);
        if forced {
            assert!(
                r.stderr.contains("bf16 linears (portable path"),
                "{}",
                r.stderr
            );
        }
        let test_json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("test.json")).unwrap()).unwrap();
        assert!(
            test_json["f1"].as_f64().unwrap() > 0.4,
            "{name}: {test_json}"
        );
        assert_eq!(
            test_json["matmul_precision"].as_str(),
            (precision == "bf16").then_some("bf16")
        );
        let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
        let last_loss = metrics
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64())
            .next_back()
            .unwrap();
        finals.push(last_loss);
        let eval = surgery_with_env(
            &[
                "eval",
                out.join("best").to_str().unwrap(),
                "--data",
                test,
                "--json",
                "--precision",
                precision,
            ],
            env,
        );
        assert_eq!(eval.code, 0, "{}", eval.stderr);
    }
    // Rounding the products' operands to bf16 changes the trajectory only a little.
    for (name, loss) in ["bf16", "bf16-portable"].iter().zip(&finals[1..]) {
        assert!(
            (loss - finals[0]).abs() < 0.25 * finals[0] + 0.02,
            "{name} final loss {loss} vs f32 {}",
            finals[0]
        );
    }
}

/// Every training command in the registry, run with its declared example options on the tiny
/// setup: the CLI offers it, it trains and records its name, a run stopped early continues where
/// it stopped (as the recipe runner resumes it), a recipe runs it through the CLI's parser, and
/// the report's seed grouping knows its flags.
#[test]
fn every_registered_training_command_trains_resumes_and_is_a_recipe_kind() {
    use clap::Parser;
    use surgery::train::registry::{TrainCommand, EXAMPLES, NAMES};

    #[derive(Parser)]
    struct Wrapper {
        #[command(subcommand)]
        command: TrainCommand,
    }
    let s = setup(48);
    let root = s.dir.path();
    let mut spec = quick_spec();
    spec.max_steps = 2;
    crate::util::finetune(
        &s.model,
        &crate::util::common(&s.data, &spec, &root.join("teacher"), Default::default()),
    )
    .unwrap();
    let teacher = root.join("teacher/best").display().to_string();
    let (train, dev) = (s.data.train.display(), s.data.dev.display());
    let help = surgery(&["train", "--help"]).stdout;
    assert_eq!(EXAMPLES.len(), NAMES.len());
    for (name, example) in EXAMPLES {
        let sub = name.strip_prefix("train ").expect("`train NAME`");
        let example: Vec<String> = example
            .iter()
            .map(|a| a.replace("{teacher}", &teacher))
            .collect();
        let out = root.join(sub);
        let argv = |extra: &[&str]| -> Vec<String> {
            let common = format!(
                "x {sub} {} --out {} --train {train} --dev {dev} --max-steps 4 --batch-size 8 \
                 --eval-every 2 --log-every 1 --lr 1e-3 --seed 3",
                s.model.display(),
                out.display()
            );
            let words = common.split(' ').map(String::from);
            words
                .chain(example.iter().cloned())
                .chain(extra.iter().map(|e| e.to_string()))
                .collect()
        };
        let parse = |argv: Vec<String>| {
            Wrapper::try_parse_from(argv)
                .unwrap_or_else(|e| panic!("{name}: {e}"))
                .command
        };
        let stopped = parse(argv(&["--stop-after", "2"]));
        assert_eq!(stopped.name(), *name);
        let outcome = stopped.train().unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(outcome.steps, 2, "{name}");
        let mut rest = parse(argv(&[]));
        rest.resume_if_present();
        let outcome = rest.train().unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(outcome.steps, 4, "{name}");
        let run: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
        assert_eq!(run["op"], *name);
        for (_, file) in rest.outputs() {
            assert!(out.join(file).is_file(), "{name}: {file}");
        }
        assert!(
            help.contains(&format!("  {sub} ")),
            "`surgery train --help` lists {sub}"
        );

        // The same command as a recipe step, checked by the CLI's own parser.
        let mut options: Vec<String> = example
            .chunks(2)
            .map(|kv| format!("{} = \"{}\"", kv[0].trim_start_matches("--"), kv[1]))
            .collect();
        options.extend([format!("train = \"{train}\""), format!("dev = \"{dev}\"")]);
        let recipe = root.join(format!("{sub}.toml"));
        let input = s.model.display();
        let step = format!("[[step]]\nkind = \"{name}\"\ninput = \"{input}\"\n");
        std::fs::write(&recipe, format!("{step}{}\n", options.join("\n"))).unwrap();
        let runs = root.join("runs").display().to_string();
        let r = surgery(&[
            "run",
            &recipe.display().to_string(),
            "--runs",
            &runs,
            "--dry-run",
        ]);
        assert_eq!(r.code, 0, "{name}: {}", r.stderr);

        // Flags without a value must be known to the report's seed grouping.
        for line in surgery(&["train", sub, "--help"]).stdout.lines() {
            if let [flag] = line.split_whitespace().collect::<Vec<_>>().as_slice() {
                if flag.starts_with("--") && *flag != "--help" {
                    assert!(
                        surgery::pipeline::seeds::FLAGS_WITHOUT_VALUE.contains(flag),
                        "{name}: add {flag} to FLAGS_WITHOUT_VALUE"
                    );
                }
            }
        }
    }
}

/// `train focal` learns on the tiny setup like fine-tuning does, and records γ with the
/// hyper-parameters (a resume with another γ is refused).
#[test]
fn focal_loss_training_learns_and_records_gamma() {
    let s = setup(1000);
    let out = s.dir.path().join("focal");
    let mut spec = quick_spec();
    spec.epochs = 3;
    let mut focal = surgery::train::focal::Focal::new(2.0).unwrap();
    let outcome = surgery::train::finetune::supervised(
        &s.model,
        &crate::util::common(&s.data, &spec, &out, RunOptions::default()),
        &mut focal,
    )
    .unwrap();
    assert!(outcome.best_dev_f1 > 0.5, "dev F1 {}", outcome.best_dev_f1);
    let run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    assert_eq!(run["op"], "train focal");
    assert_eq!(run["spec"]["objective"]["gamma"], 2.0);
    assert_eq!(
        weights(&out.join("best")).history().last().unwrap().op,
        "train focal"
    );
    let model = s.model.to_str().unwrap();
    let (train, dev) = (s.data.train.to_str().unwrap(), s.data.dev.to_str().unwrap());
    let r = surgery(&[
        "train",
        "focal",
        model,
        "--out",
        out.to_str().unwrap(),
        "--train",
        train,
        "--dev",
        dev,
        "--gamma",
        "1",
        "--resume",
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("other hyper-parameters"), "{}", r.stderr);
}

/// `train finetune` of the setup's model on `train` into `out`, batch 16, then `extra`.
fn finetune_on_data(s_: &Setup, train: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let base = [
        "train",
        "finetune",
        s(&s_.model),
        "--train",
        s(train),
        "--dev",
        s(&s_.data.dev),
        "--out",
        s(out),
        "--batch-size",
        "16",
    ];
    base.iter().chain(extra).map(|a| a.to_string()).collect()
}

#[test]
fn resume_with_other_data_is_refused_and_metrics_are_not_repeated() {
    let s_ = setup(48);
    let run_dir = s_.dir.path().join("run");
    let args = |train: &Path, extra: &[&str]| {
        let steps = ["--max-steps", "6", "--eval-every", "2", "--log-every", "1"];
        finetune_on_data(&s_, train, &run_dir, &[&steps[..], extra].concat())
    };
    let run = |a: Vec<String>| surgery(&a.iter().map(|x| x.as_str()).collect::<Vec<_>>());
    let r = run(args(&s_.data.train, &["--stop-after", "2"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    // A kill after step 3 was logged but before last/ was saved again.
    let metrics = run_dir.join("metrics.jsonl");
    let mut text = std::fs::read_to_string(&metrics).unwrap();
    text.push_str("{\"step\":3,\"epoch\":0,\"loss\":1.0,\"lr\":0.001,\"grad_norm\":1.0,\"tokens_per_s\":1.0}\n{\"step\":4,");
    std::fs::write(&metrics, text).unwrap();
    // Other training data: refused.
    let other = s_.dir.path().join("other.txt");
    let mut changed = std::fs::read_to_string(&s_.data.train).unwrap();
    changed.push_str("\nExtra O\n");
    std::fs::write(&other, changed).unwrap();
    let r = run(args(&other, &["--resume"]));
    assert_refused(&r, "differs");
    // The same data: resumes, and every training step is logged once.
    let r = run(args(&s_.data.train, &["--resume"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let steps: Vec<u64> = std::fs::read_to_string(&metrics)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("loss").is_some())
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, (1..=6).collect::<Vec<_>>());
}

#[test]
fn tensorboard_events_are_not_repeated_after_a_kill_and_resume() {
    use prost::Message;
    use surgery::io::tensorboard::{frame, read_events, Event, Summary, SummaryValue};
    let s_ = setup(48);
    let run_dir = s_.dir.path().join("run");
    let args = |extra: &[&str]| {
        let steps = ["--max-steps", "6", "--eval-every", "2", "--log-every", "1"];
        let options = [&steps[..], &["--tensorboard"], extra].concat();
        finetune_on_data(&s_, &s_.data.train, &run_dir, &options)
    };
    let r = run_strings(&args(&["--stop-after", "2"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let events_dir = run_dir.join("tensorboard");
    let files = || -> Vec<PathBuf> {
        let mut f: Vec<PathBuf> = std::fs::read_dir(&events_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        f.sort();
        f
    };
    // A kill after steps 3 and 4 were logged (the second write cut short) but before last/
    // was saved again.
    let first = files().pop().unwrap();
    let mut bytes = std::fs::read(&first).unwrap();
    for step in [3, 4] {
        let event = Event {
            wall_time: 0.0,
            step,
            file_version: None,
            summary: Some(Summary {
                value: vec![SummaryValue {
                    tag: "train/loss".into(),
                    simple_value: Some(1.0),
                }],
            }),
        };
        let record = frame(&event.encode_to_vec());
        let cut = if step == 4 {
            record.len() / 2
        } else {
            record.len()
        };
        bytes.extend(&record[..cut]);
    }
    std::fs::write(&first, bytes).unwrap();
    let r = run_strings(&args(&["--resume"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    // Every file reads cleanly, and every (tag, step) is there once.
    let mut seen = std::collections::BTreeSet::new();
    let mut loss_steps = vec![];
    assert!(
        files().len() >= 2,
        "the resumed run writes a file of its own"
    );
    for file in files() {
        for event in read_events(&file).unwrap() {
            for v in event.summary.iter().flat_map(|s| &s.value) {
                assert!(
                    seen.insert((v.tag.clone(), event.step)),
                    "{} at step {} twice",
                    v.tag,
                    event.step
                );
                if v.tag == "train/loss" {
                    loss_steps.push(event.step);
                }
            }
        }
    }
    loss_steps.sort();
    assert_eq!(loss_steps, (1..=6).collect::<Vec<i64>>());
}

#[test]
fn resume_refuses_a_damaged_run_record() {
    let s_ = setup(32);
    let run_dir = s_.dir.path().join("run");
    let args = |extra: &[&str]| {
        let options = [&["--max-steps", "3"][..], extra].concat();
        finetune_on_data(&s_, &s_.data.train, &run_dir, &options)
    };
    assert_eq!(run_strings(&args(&["--stop-after", "1"])).code, 0);
    let record = run_dir.join("run.json");
    let good = std::fs::read(&record).unwrap();
    for damaged in ["[]", "{", "", "null"] {
        std::fs::write(&record, damaged).unwrap();
        let r = run_strings(&args(&["--resume"]));
        refused_cleanly(&r, "run.json");
    }
    std::fs::write(&record, good).unwrap();
    // A step beyond the run's own steps.
    let progress = run_dir.join("last/state/progress.json");
    let text = std::fs::read_to_string(&progress).unwrap();
    let mut value: serde_json::Value = serde_json::from_str(&text).unwrap();
    value["step"] = 99_999.into();
    std::fs::write(&progress, value.to_string()).unwrap();
    refused_cleanly(&run_strings(&args(&["--resume"])), "progress.json");
    std::fs::write(&progress, text).unwrap();
    assert_eq!(run_strings(&args(&["--resume"])).code, 0);
}

#[test]
fn a_classifier_with_the_data_labels_in_another_order_is_kept_for_training() {
    let dir = tempdir();
    // The data's own order would be O, B-LOC, B-PER.
    let mut config = tiny_config();
    config.set_labels(&["O", "B-PER", "B-LOC"].map(String::from));
    let m = save(
        &tiny_checkpoint(config, Layout::Bare, 3),
        dir.path(),
        "model",
    );
    let data = conll(dir.path());
    let command = ["train", "finetune", s(&m)];
    let labels = one_step_labels(&command, &data, &dir.path().join("run"));
    assert_eq!(labels["1"], "B-PER");
    assert_eq!(labels["2"], "B-LOC");
}

#[test]
fn resume_without_a_run_to_resume_is_refused() {
    let s_ = setup(32);
    let missing = s_.dir.path().join("missing");
    let r = run(&finetune_args(&s_, &s_.model, &missing, &["--resume"]));
    assert_refused(&r, "nothing to resume");
    assert!(!missing.exists(), "nothing may be created");
}

#[test]
fn a_recovery_run_keeps_its_start_when_training_makes_it_worse() {
    let s_ = setup(48);
    let run_dir = trained(&s_);
    let start = run_dir.join("best");
    let out = s_.dir.path().join("worse");
    // An absurd learning rate wrecks the model; best/ must stay the starting point.
    let mut args = finetune_args(
        &s_,
        &start,
        &out,
        &["--max-steps", "4", "--warmup-ratio", "0"],
    );
    let lr = args.iter().position(|a| a == "--lr").unwrap();
    args[lr + 1] = "5".into();
    let r = run(&args);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let dev: Vec<(u64, f64)> = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["eval"] == "dev")
        .map(|v| (v["step"].as_u64().unwrap(), v["f1"].as_f64().unwrap()))
        .collect();
    assert_eq!(dev[0].0, 0, "the starting point is evaluated: {metrics}");
    let best = dev.iter().map(|d| d.1).fold(f64::MIN, f64::max);
    assert!(best >= dev[0].1);
    let best_eval = surgery(&[
        "eval",
        s(&out.join("best")),
        "--data",
        s(&s_.data.dev),
        "--json",
    ]);
    let f1 = serde_json::from_str::<serde_json::Value>(&best_eval.stdout).unwrap()["f1"]
        .as_f64()
        .unwrap();
    assert!(
        f1 >= dev[0].1 - 1e-9,
        "best/ {f1} is worse than the start {}",
        dev[0].1
    );
}
