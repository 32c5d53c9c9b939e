//! The hostile-user cases: `--force` and `--out` never delete what the user owns (files stay byte
//! for byte), runs are locked against concurrent writers, `--resume` needs something to resume,
//! absurd sizes and bad tags are refused up front, stale temporaries are cleaned, an interrupted
//! recipe step continues from its `last/`, and a recovery run never ends worse than its start.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use surgery::arch::Layout;
use surgery::io::lock::FolderLock;

use crate::train::{setup, Setup};
use crate::util::{save, surgery, tempdir, tiny_checkpoint, tiny_config};

pub(crate) fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Every file under `dir` with its bytes, for "nothing changed" checks.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = vec![];
    if dir.is_file() {
        return vec![(dir.to_path_buf(), std::fs::read(dir).unwrap())];
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push((e.path(), std::fs::read(e.path()).unwrap()));
            }
        }
    }
    out.sort();
    out
}

pub(crate) fn assert_refused(r: &crate::util::Output, needle: &str) {
    assert_eq!(r.code, 2, "stdout: {}\nstderr: {}", r.stdout, r.stderr);
    assert!(r.stderr.contains(needle), "`{needle}` not in: {}", r.stderr);
}

pub(crate) fn model(dir: &Path) -> PathBuf {
    save(
        &tiny_checkpoint(tiny_config(), Layout::Bare, 3),
        dir,
        "model",
    )
}

/// A finished tiny training run (`run/best`, `run/last`).
fn trained(s_: &Setup) -> PathBuf {
    let run_dir = s_.dir.path().join("run");
    let r = run(&finetune_args(
        s_,
        &s_.model,
        &run_dir,
        &["--max-steps", "4"],
    ));
    assert_eq!(r.code, 0, "{}", r.stderr);
    run_dir
}

fn finetune_args(s_: &Setup, input: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "train",
        "finetune",
        s(input),
        "--train",
        s(&s_.data.train),
        "--dev",
        s(&s_.data.dev),
        "--out",
        s(out),
        "--batch-size",
        "16",
        "--lr",
        "1e-3",
        "--eval-every",
        "2",
    ]
    .map(String::from)
    .to_vec();
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

/// A one-step recipe named `name` that evaluates `run_dir/best` on the dev file.
fn eval_recipe(s_: &Setup, name: &str, run_dir: &Path) -> PathBuf {
    let recipe = s_.dir.path().join(format!("{name}.toml"));
    let text = format!(
        "[recipe]\nname = \"{name}\"\n[[step]]\nkind = \"eval\"\ninput = \"{}\"\ndata = \"{}\"\n",
        run_dir.join("best").display(),
        s_.data.dev.display()
    );
    std::fs::write(&recipe, text).unwrap();
    recipe
}

fn run(args: &[String]) -> crate::util::Output {
    surgery(&args.iter().map(|a| a.as_str()).collect::<Vec<_>>())
}

#[test]
fn force_never_replaces_a_folder_of_user_files_or_a_data_file() {
    let dir = tempdir();
    let m = model(dir.path());
    let user = dir.path().join("v");
    std::fs::create_dir(&user).unwrap();
    std::fs::write(user.join("notes.txt"), "keep").unwrap();
    let data = dir.path().join("train.txt");
    std::fs::write(&data, "EU B-ORG\n").unwrap();
    for target in [&user, &data] {
        let before = snapshot(target);
        let r = surgery(&["drop-layers", s(&m), s(target), "--keep", "0", "--force"]);
        assert_refused(&r, "not written by surgery");
        assert_eq!(snapshot(target), before);
    }
    // What surgery wrote may be replaced.
    let out = dir.path().join("cut");
    assert_eq!(
        surgery(&["drop-layers", s(&m), s(&out), "--keep", "0"]).code,
        0
    );
    let r = surgery(&["drop-layers", s(&m), s(&out), "--keep", "0,1", "--force"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn an_output_that_holds_or_lies_inside_the_input_is_refused_even_with_force() {
    let s_ = setup(48);
    let run_dir = trained(&s_);
    let best = run_dir.join("best");
    let before = snapshot(&run_dir);
    // The run folder that holds the input.
    let r = surgery(&[
        "drop-layers",
        s(&best),
        s(&run_dir),
        "--keep",
        "0",
        "--force",
    ]);
    assert_refused(&r, "lies inside the input");
    // A folder inside the input.
    let inner = best.join("sub");
    let r = surgery(&["drop-layers", s(&best), s(&inner), "--keep", "0"]);
    assert_refused(&r, "lies inside the input");
    // train --out equal to the input checkpoint, or to the run folder that holds it.
    for out in [&best, &run_dir] {
        let r = run(&finetune_args(&s_, &best, out, &["--force"]));
        assert_refused(&r, "lies inside the input");
    }
    // train --out equal to a data file.
    let train = s_.data.train.clone();
    let data_before = snapshot(&train);
    let r = run(&finetune_args(&s_, &best, &train, &["--force"]));
    assert_refused(&r, "lies inside the input");
    assert_eq!(snapshot(&train), data_before);
    assert_eq!(snapshot(&run_dir), before);
}

#[test]
fn train_out_over_user_files_is_refused() {
    let s_ = setup(32);
    let user = s_.dir.path().join("mine");
    std::fs::create_dir(&user).unwrap();
    std::fs::write(user.join("notes.txt"), "keep").unwrap();
    let before = snapshot(&user);
    for extra in [&["--force"][..], &["--resume"][..]] {
        let r = run(&finetune_args(&s_, &s_.model, &user, extra));
        assert_eq!(r.code, 2, "{}", r.stderr);
        assert_eq!(snapshot(&user), before, "with {extra:?}");
    }
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
fn a_locked_run_folder_or_recipe_is_refused_naming_the_holder() {
    let s_ = setup(32);
    let run_dir = trained(&s_);
    let lock = FolderLock::acquire(&run_dir).unwrap();
    let r = run(&finetune_args(&s_, &s_.model, &run_dir, &["--force"]));
    assert_refused(&r, &format!("in use by process {}", std::process::id()));
    drop(lock);

    let recipe = eval_recipe(&s_, "locked", &run_dir);
    let runs = s_.dir.path().join("runs");
    let root = runs.join("locked");
    std::fs::create_dir_all(&root).unwrap();
    let lock = FolderLock::acquire(&root).unwrap();
    let r = surgery(&["run", s(&recipe), "--runs", s(&runs)]);
    assert_refused(&r, "in use by process");
    drop(lock);
    let r = surgery(&["run", s(&recipe), "--runs", s(&runs)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn recipe_runs_and_reports_never_write_over_user_folders_or_inputs() {
    let s_ = setup(32);
    let run_dir = trained(&s_);
    let recipe = eval_recipe(&s_, "rr", &run_dir);
    // --runs inside the input checkpoint.
    let r = surgery(&["run", s(&recipe), "--runs", s(&run_dir.join("best"))]);
    assert_refused(&r, "lies inside the input");
    // A recipe folder that holds user files.
    let runs = s_.dir.path().join("runs");
    std::fs::create_dir_all(runs.join("rr")).unwrap();
    std::fs::write(runs.join("rr/notes.txt"), "keep").unwrap();
    let r = surgery(&["run", s(&recipe), "--runs", s(&runs)]);
    assert_refused(&r, "not written by surgery");
    assert_eq!(
        std::fs::read_to_string(runs.join("rr/notes.txt")).unwrap(),
        "keep"
    );
    // report --out over user files, and inside a run it reads.
    let user = s_.dir.path().join("mine");
    std::fs::create_dir(&user).unwrap();
    std::fs::write(user.join("README.md"), "mine").unwrap();
    let r = surgery(&["report", s(&run_dir), "--out", s(&user)]);
    assert_refused(&r, "not written by surgery");
    assert_eq!(
        std::fs::read_to_string(user.join("README.md")).unwrap(),
        "mine"
    );
    let r = surgery(&["report", s(&run_dir), "--out", s(&run_dir.join("report"))]);
    assert_refused(&r, "lies inside the input");
    // A report folder it wrote is rewritten.
    let out = s_.dir.path().join("report");
    assert_eq!(surgery(&["report", s(&run_dir), "--out", s(&out)]).code, 0);
    let r = surgery(&["report", s(&run_dir), "--out", s(&out)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn eval_outputs_never_replace_user_files() {
    let s_ = setup(32);
    let run_dir = trained(&s_);
    let best = run_dir.join("best");
    let mine = s_.dir.path().join("mine.json");
    std::fs::write(&mine, "{\"mine\": 1}").unwrap();
    for flag in ["--save-json", "--write-predictions"] {
        for extra in [&[][..], &["--force"][..]] {
            let mut args = vec!["eval", s(&best), "--data", s(&s_.data.dev), flag, s(&mine)];
            args.extend(extra);
            assert_eq!(surgery(&args).code, 2);
            assert_eq!(std::fs::read_to_string(&mine).unwrap(), "{\"mine\": 1}");
        }
    }
    // --write-predictions onto the data it reads.
    let before = snapshot(&s_.data.dev);
    let r = surgery(&[
        "eval",
        s(&best),
        "--data",
        s(&s_.data.dev),
        "--write-predictions",
        s(&s_.data.dev),
        "--force",
    ]);
    assert_refused(&r, "lies inside the input");
    assert_eq!(snapshot(&s_.data.dev), before);
    // Its own outputs are replaced under --force.
    let json = s_.dir.path().join("e.json");
    let preds = s_.dir.path().join("p.txt");
    let args = [
        "eval",
        s(&best),
        "--data",
        s(&s_.data.dev),
        "--save-json",
        s(&json),
        "--write-predictions",
        s(&preds),
    ];
    assert_eq!(surgery(&args).code, 0);
    assert_eq!(surgery(&args).code, 2);
    let mut forced = args.to_vec();
    forced.push("--force");
    let r = surgery(&forced);
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn typeless_tags_are_refused_with_file_and_line() {
    let s_ = setup(32);
    let bad = s_.dir.path().join("bad.txt");
    for tag in ["B", "I-", "PER"] {
        std::fs::write(&bad, format!("Peter B-PER\nlives O\nhere {tag}\n")).unwrap();
        let out = s_.dir.path().join(format!("run-{tag}"));
        let mut args = finetune_args(&s_, &s_.model, &out, &[]);
        let i = args.iter().position(|a| a == "--train").unwrap();
        args[i + 1] = s(&bad).to_string();
        let r = run(&args);
        assert_refused(&r, "bad.txt:3");
        assert!(r.stderr.contains(&format!("`{tag}`")), "{}", r.stderr);
    }
    let scored = s_.dir.path().join("score.txt");
    std::fs::write(&scored, "Paris B-LOC B-LOC\nEU B-ORG\n").unwrap();
    let r = surgery(&["score", s(&scored)]);
    assert_refused(&r, "score.txt:2");
}

#[test]
fn integer_jsonl_tags_take_tag_names() {
    let s_ = setup(32);
    let jsonl = s_.dir.path().join("dev.jsonl");
    std::fs::write(
        &jsonl,
        "{\"tokens\": [\"Peter\", \"runs\"], \"ner_tags\": [1, 0]}\n",
    )
    .unwrap();
    let run_dir = trained(&s_);
    let best = run_dir.join("best");
    let r = surgery(&["eval", s(&best), "--data", s(&jsonl)]);
    assert_refused(&r, "--tag-names");
    let labels = "O,B-PER,I-PER";
    let r = surgery(&["eval", s(&best), "--data", s(&jsonl), "--tag-names", labels]);
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn zero_width_and_whitespace_lines_are_sentence_breaks() {
    let dir = tempdir();
    let path = dir.path().join("d.txt");
    std::fs::write(
        &path,
        "\u{feff}Peter B-PER\nruns O\n\u{200b}\nParis B-LOC\n \t \nBerlin B-LOC\n\u{feff}\n",
    )
    .unwrap();
    let d = surgery::data::read_dataset(&path, &Default::default()).unwrap();
    let words: Vec<Vec<String>> = d.sentences.iter().map(|s| s.words.clone()).collect();
    assert_eq!(
        words,
        vec![vec!["Peter", "runs"], vec!["Paris"], vec!["Berlin"]]
    );
}

#[test]
fn absurd_sizes_are_refused_before_any_work() {
    let dir = tempdir();
    let m = model(dir.path());
    let config = m.join("config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("\"num_hidden_layers\": 3", "\"num_hidden_layers\": 1000000"),
    )
    .unwrap();
    let r = surgery(&["inspect", s(&m)]);
    assert_refused(&r, "num_hidden_layers");
    std::fs::write(&config, &text).unwrap();
    let out = dir.path().join("student");
    let r = surgery(&[
        "init-student",
        s(&out),
        "--like",
        s(&m),
        "--layers",
        "2",
        "--hidden",
        "1000000000",
        "--heads",
        "4",
        "--intermediate",
        "64",
    ]);
    assert_refused(&r, "hidden_size");
    // Within the config bounds but far beyond this machine's memory.
    let r = surgery(&[
        "init-student",
        s(&out),
        "--like",
        s(&m),
        "--layers",
        "1024",
        "--hidden",
        "65536",
        "--heads",
        "64",
        "--intermediate",
        "262144",
    ]);
    assert_refused(&r, "of memory but only");
    assert!(!out.exists());
}

#[test]
fn a_full_disk_is_found_before_training() {
    let s_ = setup(32);
    let mount = s_.dir.path().join("small");
    std::fs::create_dir(&mount).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs", s(&mount)])
        .output()
        .is_ok_and(|o| o.status.success());
    if !mounted {
        eprintln!("skipped: cannot mount a small tmpfs here (needs root)");
        return;
    }
    let r = run(&finetune_args(&s_, &s_.model, &mount.join("run"), &[]));
    let _ = std::process::Command::new("umount").arg(&mount).status();
    assert_refused(&r, "of disk space but only");
}

#[test]
fn stale_temporaries_of_dead_processes_are_removed() {
    let dir = tempdir();
    let m = model(dir.path());
    // A pid above the kernel's maximum is never alive.
    let stale = dir.path().join(".cut.tmp-4194305");
    std::fs::create_dir(&stale).unwrap();
    std::fs::write(stale.join("model.safetensors"), "half").unwrap();
    let live = dir.path().join(format!(".cut.tmp-{}", std::process::id()));
    std::fs::create_dir(&live).unwrap();
    let r = surgery(&[
        "drop-layers",
        s(&m),
        s(&dir.path().join("cut")),
        "--keep",
        "0",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!stale.exists(), "the dead process's temporary is removed");
    assert!(live.exists(), "a live process's temporary is left alone");
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
    let t0 = Instant::now();
    let step_of = |p: &Path| -> u64 {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["step"].as_u64())
            .unwrap_or(0)
    };
    while step_of(&progress) < 6 {
        assert!(t0.elapsed() < Duration::from_secs(120), "no progress");
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

#[test]
fn a_path_through_a_missing_folder_and_dotdot_names_its_parent() {
    let s_ = setup(32);
    let user = s_.dir.path().join("mine");
    std::fs::create_dir(&user).unwrap();
    std::fs::write(user.join("notes.txt"), "keep").unwrap();
    let before = snapshot(&user);
    let sneaky = user.join("new").join("..");
    let r = run(&finetune_args(&s_, &s_.model, &sneaky, &["--force"]));
    assert_refused(&r, "not written by surgery");
    let run_dir = trained(&s_);
    let r = surgery(&["report", s(&run_dir), "--out", s(&sneaky)]);
    assert_refused(&r, "not written by surgery");
    std::fs::remove_dir_all(user.join("new")).ok();
    assert_eq!(snapshot(&user), before);
}

#[test]
fn a_file_a_surgery_reads_cannot_be_inside_its_output() {
    let dir = tempdir();
    let m = model(dir.path());
    let out = dir.path().join("cut");
    assert_eq!(
        surgery(&["drop-layers", s(&m), s(&out), "--keep", "0"]).code,
        0
    );
    let calib = out.join("calib.txt");
    std::fs::write(&calib, "Peter B-PER\n").unwrap();
    let r = surgery(&[
        "sparsegpt",
        s(&m),
        s(&out),
        "--sparsity",
        "0.5",
        "--calib",
        s(&calib),
        "--force",
    ]);
    assert_refused(&r, "lies inside the input");
    assert_eq!(std::fs::read_to_string(&calib).unwrap(), "Peter B-PER\n");
}

#[test]
fn a_previous_output_left_by_a_kill_mid_replacement_is_put_back() {
    let dir = tempdir();
    let m = model(dir.path());
    let out = dir.path().join("cut");
    assert_eq!(
        surgery(&["drop-layers", s(&m), s(&out), "--keep", "0"]).code,
        0
    );
    // A kill between the two renames: the old version moved aside, the new one not in place.
    let aside = dir.path().join(".cut.tmp-4194305.old");
    std::fs::rename(&out, &aside).unwrap();
    let r = surgery(&["drop-layers", s(&m), s(&out), "--keep", "0,1"]);
    assert_refused(&r, "already exists");
    assert!(
        out.join("model.safetensors").is_file(),
        "the previous output is back"
    );
    assert!(!aside.exists());
}
