//! `surgery compress` on a tiny fine-tuned teacher: the model meets the target, compress.json
//! records every candidate, the written recipe reproduces the model bit for bit, a killed search
//! resumes, the dry run's sizes are the finished model's, and bad targets are refused.

use std::path::{Path, PathBuf};

use surgery::budget::Budget;
use surgery::io::Checkpoint;
use surgery::pipeline::compress::CompressRecord;
use surgery::train::spec::RunOptions;

use crate::util::{quick_spec, setup, surgery, surgery_with_env, Setup};

/// A fine-tuned tiny teacher (2 layers, hidden 32) with its data.
fn teacher() -> (Setup, PathBuf) {
    let s = setup(200);
    let run = s.dir.path().join("teacher-run");
    let mut spec = quick_spec();
    spec.epochs = 3;
    crate::util::finetune(
        &s.model,
        &crate::util::common(&s.data, &spec, &run, RunOptions::default()),
    )
    .unwrap();
    let teacher = run.join("best");
    (s, teacher)
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The compress command line for a target, with small training settings.
fn command<'a>(s: &'a Setup, teacher: &'a Path, out: &'a Path, target: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "compress",
        path(teacher),
        "--train",
        path(&s.data.train),
        "--dev",
        path(&s.data.dev),
        "--test",
        path(s.data.test.as_ref().unwrap()),
        "--out",
        path(out),
        "--hours",
        "1",
        "--batch-size",
        "16",
        "--max-len",
        "64",
        "--max-epochs",
        "2",
    ];
    args.extend_from_slice(target);
    args
}

fn record(out: &Path) -> CompressRecord {
    let text = std::fs::read_to_string(out.join("compress.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn weights(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("model.safetensors")).unwrap()
}

#[test]
fn compress_meets_a_parameter_budget_records_every_candidate_and_its_recipe_reproduces_it() {
    let (s, teacher) = teacher();
    let teacher_params = Budget::of_checkpoint(&Checkpoint::open(&teacher).unwrap())
        .unwrap()
        .unique;
    let budget = (teacher_params / 2).to_string();
    let out = s.dir.path().join("compressed");

    let plan = surgery(&command(
        &s,
        &teacher,
        &out,
        &["--params", &budget, "--dry-run"],
    ));
    assert_eq!(plan.code, 0, "{}", plan.stderr);
    assert!(!out.exists(), "--dry-run writes nothing");

    let run = surgery(&command(&s, &teacher, &out, &["--params", &budget]));
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("short distillation, round 1"),
        "{}",
        run.stdout
    );

    // The model meets the target.
    let model = Checkpoint::open(&out.join("model")).unwrap();
    let params = Budget::of_checkpoint(&model).unwrap().unique;
    assert!(
        params <= budget.parse::<u64>().unwrap(),
        "{params} > {budget}"
    );

    // Every candidate with every field; each one cut, and all but the winner dropped with why.
    let r = record(&out);
    assert!(r.candidates.len() >= 3, "{} candidates", r.candidates.len());
    let winner = r.winner.as_ref().expect("a winner");
    for c in &r.candidates {
        assert!(
            c.cut_params.is_some() && c.cut_flops.is_some(),
            "{}",
            c.candidate.name
        );
        assert_eq!(c.fidelities[0].stage, "cut");
        assert!(c
            .fidelities
            .iter()
            .all(|f| f.dev_f1.is_finite() && f.seconds >= 0.0));
        if c.candidate.name == winner.candidate {
            assert!(c.dropped.is_none());
            assert_eq!(c.fidelities.last().unwrap().stage, "final");
        } else {
            assert!(
                c.dropped.is_some(),
                "{} neither won nor was dropped",
                c.candidate.name
            );
        }
    }
    assert!(r.stages.iter().any(|s| s.stage == "short distillation"));
    // The final recovery was planned with hidden-state matching timed on the winner.
    let cost = r.decisions["hidden_matching_cost"];
    assert!(cost >= 1.0 && cost.is_finite(), "{cost}");
    assert!(
        run.stdout.contains("timing hidden-state matching"),
        "{}",
        run.stdout
    );
    assert!(winner.test_f1.is_some_and(|f| f > 0.0));
    assert_eq!(winner.params, params);
    for file in ["report/compress.md", "report/candidates.svg", "recipe.toml"] {
        assert!(out.join(file).is_file(), "{file}");
    }

    // The dry run's exact sizes are the cut models' sizes.
    for c in &r.candidates {
        if let Some(planned) = c.candidate.params {
            assert_eq!(Some(planned), c.cut_params, "{}", c.candidate.name);
            let line = plan
                .stdout
                .lines()
                .find(|l| l.starts_with(&format!("{} ", c.candidate.name)))
                .unwrap_or_else(|| {
                    panic!("{} not in the dry run:\n{}", c.candidate.name, plan.stdout)
                });
            assert!(line.contains(&surgery::budget::group(planned)), "{line}");
        }
    }

    // The written recipe reproduces the model bit for bit.
    let runs = s.dir.path().join("reproduced");
    let rerun = surgery(&["run", path(&out.join("recipe.toml")), "--runs", path(&runs)]);
    assert_eq!(rerun.code, 0, "{}", rerun.stderr);
    let recipe_dir = std::fs::read_dir(&runs)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let recovered = std::fs::read_dir(&recipe_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with("-recover"))
        .unwrap();
    assert!(weights(&recovered.join("best")) == weights(&out.join("model")));

    // Run again: everything is found done, and the model is the same.
    let again = surgery(&command(&s, &teacher, &out, &["--params", &budget]));
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(again.stdout.contains("resuming"), "{}", again.stdout);
    assert!(weights(&out.join("model")) == weights(&recovered.join("best")));
}

#[test]
fn a_killed_compress_resumes_to_the_same_model() {
    let (s, teacher) = teacher();
    let whole = s.dir.path().join("whole");
    let killed = s.dir.path().join("killed");
    let run = surgery(&command(&s, &teacher, &whole, &["--flops", "0.4"]));
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);

    // Killed once the first candidate is cut, then run again with the same options.
    let args = command(&s, &teacher, &killed, &["--flops", "0.4"]);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_surgery"))
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let cut_once = || {
        std::fs::read_to_string(killed.join("compress.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<CompressRecord>(&t).ok())
            .is_some_and(|r| r.candidates.iter().any(|c| !c.fidelities.is_empty()))
    };
    while !cut_once() {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().ok();
    child.wait().unwrap();
    let resumed = surgery(&args);
    assert_eq!(resumed.code, 0, "{}\n{}", resumed.stdout, resumed.stderr);
    assert!(resumed.stdout.contains("resuming"), "{}", resumed.stdout);
    assert!(weights(&killed.join("model")) == weights(&whole.join("model")));
    let teacher_flops = record(&whole).teacher_flops as f64;
    let flops = record(&killed).winner.unwrap().flops as f64;
    assert!(
        flops <= 0.4 * teacher_flops,
        "{flops} > 0.4 × {teacher_flops}"
    );
}

#[test]
fn targets_compress_cannot_use_are_refused_and_write_nothing() {
    let (s, teacher) = teacher();
    let out = s.dir.path().join("out");
    // Below what any chain reaches: exit 3, naming the smallest reachable.
    let r = surgery(&command(&s, &teacher, &out, &["--params", "100"]));
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(
        r.stderr.contains("the smallest reachable is"),
        "{}",
        r.stderr
    );
    assert!(!out.exists());
    // Met by the teacher already.
    let r = surgery(&command(&s, &teacher, &out, &["--params", "10M"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("nothing to do"), "{}", r.stdout);
    assert!(!out.exists());
    // No time for even one candidate: says how much is needed, and leaves nothing.
    let mut args = command(&s, &teacher, &out, &["--flops", "0.5"]);
    let hours = args.iter().position(|a| *a == "--hours").unwrap();
    args[hours + 1] = "0.000001";
    let r = surgery(&args);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("or more"), "{}", r.stderr);
    assert!(!out.exists());
    // A teacher without a token-classification head.
    let r = surgery(&command(&s, &s.model, &out, &["--flops", "0.5"]));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("no classifier"), "{}", r.stderr);
    // No target, or two.
    let r = surgery(&command(&s, &teacher, &out, &[]));
    assert_eq!(r.code, 2, "{}", r.stderr);
    let r = surgery(&command(
        &s,
        &teacher,
        &out,
        &["--flops", "0.5", "--params", "1k"],
    ));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(!out.exists());
}

#[test]
fn a_speed_target_is_searched_at_the_share_its_latency_table_predicts_and_measured_at_the_end() {
    let (s, teacher) = teacher();
    let out = s.dir.path().join("fast");
    // A speed-up any cut reaches: what is checked is the search's bookkeeping, not this
    // machine's timing.
    let run = surgery(&command(&s, &teacher, &out, &["--speedup", "1.05"]));
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let r = record(&out);
    assert_eq!(r.speed_table.len(), 9);
    assert!(r
        .speed_table
        .iter()
        .all(|&(share, ratio)| share > 0.0 && share < 1.0 && ratio > 0.0));
    let share = r.decisions["speed_share"];
    let winner = r.winner.as_ref().unwrap();
    assert!(winner.flops as f64 <= share * r.teacher_flops as f64 * (1.0 + 1e-9));
    assert!(winner.measured_speedup.is_some_and(|x| x > 0.0));
    assert!(r.candidates.iter().all(|c| c.predicted_speedup.is_some()));
    // Every cut model was timed against the teacher; one measured below the target was
    // dropped, unless the plan was corrected by those measurements and made again.
    let corrected = r.decisions.contains_key("speed_correction");
    for c in &r.candidates {
        let measured = c.measured_speedup.expect("every candidate timed once cut");
        if measured < 1.05 && !c.candidate.name.ends_with("-corrected") {
            assert!(
                c.dropped.is_some(),
                "{} ran at {measured}",
                c.candidate.name
            );
        }
    }
    assert_eq!(
        corrected,
        r.candidates
            .iter()
            .any(|c| c.candidate.name.ends_with("-corrected"))
    );
    // A chain planned again is one that measured below the target, at its own corrected share.
    for c in &r.candidates {
        let Some(base) = c.candidate.name.strip_suffix("-corrected") else {
            continue;
        };
        let first = r.candidates.iter().find(|b| b.candidate.name == base);
        assert!(first.is_some_and(|b| b.measured_speedup.unwrap() < 1.05));
        let own = r.decisions[&format!("speed_share:{}", c.candidate.name)];
        assert!(own < share);
        let flops = c.cut_flops.expect("cut");
        assert!(flops as f64 <= own * r.teacher_flops as f64 * (1.0 + 1e-9));
    }
    // The same search timed in ONNX Runtime (its Python package), the models exported with
    // int8 linears; the exports it timed are gone after.
    if crate::export::onnxruntime_available() {
        let int8 = s.dir.path().join("int8");
        let run = surgery(&command(
            &s,
            &teacher,
            &int8,
            &["--speedup", "1.05", "--runtime", "onnx-int8"],
        ));
        assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
        let r = record(&int8);
        assert!(r.command.contains("--runtime onnx-int8"), "{}", r.command);
        assert_eq!(r.speed_table.len(), 9);
        assert!(r.speed_table.iter().all(|&(_, ratio)| ratio > 0.0));
        let winner = r.winner.as_ref().unwrap();
        assert!(winner.measured_speedup.is_some_and(|x| x > 0.0));
        assert!(!int8.join("speed").exists());
    }
    // With no python3 to run ONNX Runtime: refused, saying what to install, before anything
    // is written.
    let other = s.dir.path().join("onnx");
    let r = surgery_with_env(
        &command(
            &s,
            &teacher,
            &other,
            &["--speedup", "2", "--runtime", "onnx"],
        ),
        &[("PATH", "/nonexistent")],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("pip install onnxruntime"), "{}", r.stderr);
    assert!(!other.exists());
}
