//! Recipes whose inputs changed and recipes written wrongly: a step whose output was deleted, or
//! whose calibration data, training data or weights were edited in place, runs again; a step
//! killed mid-training continues from its `last/`; a malformed recipe is refused naming the
//! problem.

use std::path::{Path, PathBuf};
use std::time::Duration;

use surgery::arch::Layout;

use crate::util::{
    assert_refused, conll, model, recipe, refused_cleanly, s, save, setup, surgery, tempdir,
    tiny_checkpoint, tiny_config, Output,
};

// ------------------------------------------------------------------------------------------
// Resumed recipes check the files their steps read and wrote, not only their options.
/// Writes `dir/resume.toml` with `steps` (MODEL and DATA replaced) and returns its path.
fn resume_recipe(dir: &Path, m: &Path, data: &Path, steps: &str) -> PathBuf {
    let path = dir.join("resume.toml");
    let text = steps.replace("MODEL", s(m)).replace("DATA", s(data));
    std::fs::write(&path, format!("[recipe]\nname = \"resume\"\n{text}")).unwrap();
    path
}

fn run_recipe(recipe: &Path, runs: &Path) -> Output {
    let r = surgery(&["run", s(recipe), "--runs", s(runs)]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    r
}

/// The same length, other bytes: a tag corrected in place.
fn correct_in_place(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    let fixed = text.replacen("Paris B-LOC", "Paris B-PER", 1);
    assert_ne!(text, fixed);
    assert_eq!(text.len(), fixed.len());
    std::fs::write(path, fixed).unwrap();
}

// ------------------------------------------------------------------------------------------
// Recipe values: negative numbers, flags and missing options.
/// A one-step recipe of `kind` on the tiny model with `options`, dry-run.
fn recipe_step(dir: &Path, m: &Path, kind: &str, options: &str) -> Output {
    let path = dir.join("values.toml");
    std::fs::write(
        &path,
        format!(
            "[[step]]\nname = \"s\"\nkind = \"{kind}\"\ninput = \"{}\"\n{options}\n",
            s(m)
        ),
    )
    .unwrap();
    let runs = dir.join("runs");
    surgery(&["run", s(&path), "--runs", s(&runs), "--dry-run"])
}

#[test]
fn a_recipe_variable_holding_nul_is_reported_not_a_panic() {
    let dir = tempdir();
    let m = model(dir.path());
    let recipe = recipe(
        dir.path(),
        &m,
        "[vars]\nmodel = \"MODEL\"\nx = \"\\u0000\"\n",
        "${model}${x}",
    );
    let runs = dir.path().join("runs");
    for extra in [&["--dry-run"][..], &[][..]] {
        let mut args = vec!["run", s(&recipe), "--runs", s(&runs)];
        args.extend(extra);
        let r = surgery(&args);
        refused_cleanly(&r, "NUL character");
    }
}

#[test]
fn a_recipe_step_whose_output_was_deleted_runs_again() {
    let dir = tempdir();
    let m = model(dir.path());
    let recipe = recipe(dir.path(), &m, "[recipe]\nname = \"r\"\n", "MODEL");
    let runs = dir.path().join("runs");
    let go = || surgery(&["run", s(&recipe), "--runs", s(&runs)]);
    assert_eq!(go().code, 0);
    let weights = runs.join("r/01-ev/model.safetensors");
    std::fs::remove_file(&weights).unwrap();
    let plan = surgery(&["run", s(&recipe), "--runs", s(&runs), "--dry-run"]);
    assert!(!plan.stdout.contains("skipped"), "{}", plan.stdout);
    let r = go();
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(weights.is_file());
}

#[test]
fn run_set_of_an_unknown_variable_and_from_beyond_the_last_step_are_errors() {
    let dir = tempdir();
    let m = model(dir.path());
    let recipe = recipe(dir.path(), &m, "[vars]\nmodel = \"MODEL\"\n", "${model}");
    let runs = dir.path().join("runs");
    let r = surgery(&[
        "run",
        s(&recipe),
        "--runs",
        s(&runs),
        "--dry-run",
        "--set",
        "modle=x",
    ]);
    assert_refused(&r, "did you mean `model`?");
    let r = surgery(&[
        "run",
        s(&recipe),
        "--runs",
        s(&runs),
        "--dry-run",
        "--from",
        "99",
    ]);
    assert_refused(&r, "the recipe has 1 step(s)");
    assert!(!r.stderr.contains("did you mean"), "{}", r.stderr);
}

#[test]
fn recipe_step_names_must_be_non_empty_strings_and_runs_must_be_a_folder() {
    let dir = tempdir();
    let m = model(dir.path());
    let runs = dir.path().join("runs");
    for (name, needle) in [("\"\"", "name ``"), ("5", "`name` must be a string")] {
        let path = dir.path().join("r.toml");
        std::fs::write(
            &path,
            format!(
                "[[step]]\nname = {name}\nkind = \"drop-layers\"\ninput = \"{}\"\nkeep = \"0\"\n",
                m.display()
            ),
        )
        .unwrap();
        for extra in [&["--dry-run"][..], &[][..]] {
            let mut args = vec!["run", s(&path), "--runs", s(&runs)];
            args.extend(extra);
            refused_cleanly(&surgery(&args), needle);
        }
    }
    assert!(!runs.exists());
    // `--runs` naming a regular file: a user error (exit 2), not an internal one.
    let path = recipe(dir.path(), &m, "", "MODEL");
    let file = conll(dir.path());
    let before = std::fs::read(&file).unwrap();
    refused_cleanly(&surgery(&["run", s(&path), "--runs", s(&file)]), s(&file));
    assert_eq!(std::fs::read(&file).unwrap(), before);
}

#[test]
fn a_recipe_step_whose_calibration_file_was_corrected_in_place_runs_again() {
    let dir = tempdir();
    let m = model(dir.path());
    let data = conll(dir.path());
    let recipe = resume_recipe(
        dir.path(),
        &m,
        &data,
        "[[step]]\nname = \"cut\"\nkind = \"prune-neurons\"\ninput = \"MODEL\"\n\
         by = \"fisher\"\ncalib = \"DATA\"\nkeep-ratio = 0.5\n",
    );
    let runs = dir.path().join("runs");
    run_recipe(&recipe, &runs);
    assert!(run_recipe(&recipe, &runs).stdout.contains("done, skipped"));
    correct_in_place(&data);
    let plan = surgery(&["run", s(&recipe), "--runs", s(&runs), "--dry-run"]);
    assert!(
        plan.stdout.contains("will run again: its input") && plan.stdout.contains("data.txt"),
        "{}",
        plan.stdout
    );
    let r = run_recipe(&recipe, &runs);
    assert!(
        r.stdout.contains("running it again") && r.stdout.contains("data.txt"),
        "{}",
        r.stdout
    );
    // Recorded again: the next run skips it.
    assert!(run_recipe(&recipe, &runs).stdout.contains("done, skipped"));
}

#[test]
fn a_recipe_training_step_whose_training_file_was_corrected_in_place_runs_again() {
    let dir = tempdir();
    let m = model(dir.path());
    let data = conll(dir.path());
    let recipe = resume_recipe(
        dir.path(),
        &m,
        &data,
        "[[step]]\nname = \"tune\"\nkind = \"train finetune\"\ninput = \"MODEL\"\n\
         train = \"DATA\"\ndev = \"DATA\"\nmax-steps = 1\nbatch-size = 2\n\
         reinit-classifier = true\n",
    );
    let runs = dir.path().join("runs");
    run_recipe(&recipe, &runs);
    correct_in_place(&data);
    let r = run_recipe(&recipe, &runs);
    assert!(
        r.stdout.contains("its input") && r.stdout.contains("running it again"),
        "{}",
        r.stdout
    );
}

#[test]
fn a_recipe_step_whose_weights_were_truncated_or_edited_runs_again() {
    let dir = tempdir();
    let m = model(dir.path());
    let data = conll(dir.path());
    let recipe = resume_recipe(
        dir.path(),
        &m,
        &data,
        "[[step]]\nname = \"cut\"\nkind = \"drop-layers\"\ninput = \"MODEL\"\nkeep = \"0,1\"\n\
         [[step]]\nname = \"score\"\nkind = \"eval\"\ndata = \"DATA\"\n",
    );
    let runs = dir.path().join("runs");
    run_recipe(&recipe, &runs);
    let weights = runs.join("resume/01-cut/model.safetensors");
    let whole = std::fs::read(&weights).unwrap();

    // Truncated: the cut runs again (its output is no longer what it wrote).
    std::fs::write(&weights, &whole[..whole.len() / 2]).unwrap();
    let r = run_recipe(&recipe, &runs);
    assert!(
        r.stdout.contains("changed size") && r.stdout.contains("model.safetensors"),
        "{}",
        r.stdout
    );
    assert_eq!(
        std::fs::metadata(&weights).unwrap().len(),
        whole.len() as u64
    );

    // Weights edited by hand, same size: found by the checksum.
    let mut edited = whole.clone();
    let n = edited.len();
    for b in &mut edited[n - 64..] {
        *b ^= 0x55;
    }
    std::fs::write(&weights, &edited).unwrap();
    let r = run_recipe(&recipe, &runs);
    assert!(r.stdout.contains("changed content"), "{}", r.stdout);

    // Labels of the evaluated model edited by hand: the evaluation runs again, so eval.json
    // scores the model as it is.
    let config = runs.join("resume/01-cut/config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replacen("\"O\"", "\"O\" ", 1)).unwrap();
    let r = run_recipe(&recipe, &runs);
    assert!(
        r.stdout.matches("running it again").count() >= 1 && r.stdout.contains("config.json"),
        "{}",
        r.stdout
    );
    assert!(
        run_recipe(&recipe, &runs)
            .stdout
            .matches("done, skipped")
            .count()
            == 2
    );
}

#[test]
fn a_recipe_eval_of_a_model_edited_by_hand_runs_again() {
    let dir = tempdir();
    let m = model(dir.path());
    let data = conll(dir.path());
    let recipe = resume_recipe(
        dir.path(),
        &m,
        &data,
        "[[step]]\nname = \"score\"\nkind = \"eval\"\ninput = \"MODEL\"\ndata = \"DATA\"\n",
    );
    let runs = dir.path().join("runs");
    run_recipe(&recipe, &runs);
    // Another model's weights (the same structure) under the same name.
    let other = save(
        &tiny_checkpoint(tiny_config(), Layout::Bare, 99),
        dir.path(),
        "other",
    );
    std::fs::copy(other.join("model.safetensors"), m.join("model.safetensors")).unwrap();
    let r = run_recipe(&recipe, &runs);
    assert!(
        r.stdout.contains("running it again") && r.stdout.contains("model.safetensors"),
        "{}",
        r.stdout
    );
    let recorded: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(runs.join("resume/01-score/eval.json")).unwrap(),
    )
    .unwrap();
    let direct = surgery(&["eval", s(&m), "--data", s(&data), "--json"]);
    let direct: serde_json::Value = serde_json::from_str(&direct.stdout).unwrap();
    assert!(direct["f1"].is_f64());
    assert_eq!(recorded["f1"], direct["f1"]);
}

#[test]
fn negative_numbers_in_recipes_reach_the_options_own_check() {
    let dir = tempdir();
    let m = model(dir.path());
    let data = conll(dir.path());
    let ds = s(&data);
    let train = format!("train = \"{ds}\"\ndev = \"{ds}\"\n");
    let cases = [
        ("train finetune", format!("{train}lr = -1e-5"), "--lr"),
        ("train focal", format!("{train}gamma = -1"), "--gamma"),
        (
            "prune-neurons",
            "by = \"magnitude\"\nkeep = -1".into(),
            "--keep",
        ),
        (
            "prune-structured",
            format!("flops = 0.5\ncalib = \"{ds}\"\ndamp = -1"),
            "--damp",
        ),
        (
            "prune-structured",
            format!("flops = 0.5\ncalib = \"{ds}\"\nseq-len = -1"),
            "--seq-len",
        ),
    ];
    for (kind, options, needle) in cases {
        let r = recipe_step(dir.path(), &m, kind, &options);
        refused_cleanly(&r, needle);
        assert!(
            !r.stderr.contains("unknown option `-"),
            "{kind}: {}",
            r.stderr
        );
    }
}

#[test]
fn recipe_steps_missing_an_option_or_giving_a_flag_a_value_name_the_option() {
    let dir = tempdir();
    let m = model(dir.path());
    let r = recipe_step(dir.path(), &m, "prune-neurons", "keep = 3");
    refused_cleanly(&r, "`by`");
    let r = recipe_step(
        dir.path(),
        &m,
        "prune-neurons",
        "by = \"magnitude\"\nkeep = true",
    );
    refused_cleanly(&r, "option `keep` takes a value");
    let r = recipe_step(
        dir.path(),
        &m,
        "prune-neurons",
        "by = \"magnitude\"\nkeep = 3\nuniform = \"yes\"",
    );
    refused_cleanly(&r, "option `uniform` is a switch");
}

#[test]
fn a_recipe_step_name_in_non_ascii_letters_is_accepted() {
    let dir = tempdir();
    let m = model(dir.path());
    let path = dir.path().join("names.toml");
    std::fs::write(
        &path,
        format!(
            "[[step]]\nname = \"größe_カット\"\nkind = \"drop-layers\"\ninput = \"{}\"\nkeep = \"0\"\n",
            s(&m)
        ),
    )
    .unwrap();
    let runs = dir.path().join("runs");
    let r = surgery(&["run", s(&path), "--runs", s(&runs)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(runs
        .join("names/01-größe_カット/model.safetensors")
        .is_file());
    // Punctuation is still refused.
    std::fs::write(
        &path,
        format!(
            "[[step]]\nname = \"a/b\"\nkind = \"drop-layers\"\ninput = \"{}\"\nkeep = \"0\"\n",
            s(&m)
        ),
    )
    .unwrap();
    refused_cleanly(
        &surgery(&["run", s(&path), "--runs", s(&runs)]),
        "may use only",
    );
}

#[test]
fn a_recipe_killed_inside_a_training_step_continues_from_last() {
    let s_ = setup(64);
    let recipe = s_.dir.path().join("k.toml");
    std::fs::write(
        &recipe,
        format!(
            "[recipe]\nname = \"k\"\n[[step]]\nname = \"ft\"\nkind = \"train finetune\"\ninput = \"{}\"\ntrain = \"{}\"\ndev = \"{}\"\nepochs = 40\nbatch-size = 8\neval-every = 3\nlr = 1e-3\n",
            s_.model.display(),
            s_.data.train.display(),
            s_.data.dev.display()
        ),
    )
    .unwrap();
    let runs = s_.dir.path().join("runs");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_surgery"))
        .args(["run", s(&recipe), "--runs", s(&runs)])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let progress = runs.join("k/01-ft/last/state/progress.json");
    let step_of = |p: &Path| -> u64 {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["step"].as_u64())
            .unwrap_or(0)
    };
    while step_of(&progress) < 6 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it was killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let r = surgery(&["run", s(&recipe), "--runs", s(&runs)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("continuing the interrupted run"),
        "{}",
        r.stdout
    );
    assert!(r.stderr.contains("resuming"), "{}", r.stderr);
    assert!(!runs.join("k/01-ft/.step-pending.json").exists());
}
