//! What commands write: never over the user's files or an input (not even with `--force`, which
//! replaces only an output of the same kind), run folders locked against concurrent writers,
//! stale temporaries cleaned, a full disk found before training, and a replacement interrupted
//! by a kill put back.

use std::path::{Path, PathBuf};

use surgery::io::lock::FolderLock;

use crate::util::{
    assert_refused, assert_rejected, conll, finetune_args, good, model, run, s, setup, surgery,
    tempdir, trained, Setup,
};

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

#[test]
fn force_replaces_only_an_output_of_the_same_kind() {
    let dir = tempdir();
    let m = model(dir.path());
    let other = model(&dir.path().join("o"));
    let data = conll(dir.path());
    let sentences = dir.path().join("s.txt");
    std::fs::write(&sentences, "John lives in Paris\n").unwrap();
    let export = dir.path().join("onnx");
    assert_eq!(surgery(&["export", s(&m), s(&export)]).code, 0);
    let weights = other.join("model.safetensors");
    let labels = export.join("labels.json");
    let before = [
        std::fs::read(&weights).unwrap(),
        std::fs::read(&labels).unwrap(),
    ];
    let eval = |extra: &[&str]| {
        let mut args = vec!["eval", s(&m), "--data", s(&data), "--force"];
        args.extend(extra);
        surgery(&args)
    };
    let forward = |out: &Path| {
        surgery(&[
            "forward",
            s(&m),
            "--input",
            s(&sentences),
            "--out",
            s(out),
            "--force",
        ])
    };
    assert_refused(
        &eval(&["--write-predictions", s(&weights)]),
        "is not a predictions file",
    );
    assert_refused(&forward(&weights), "is not an output of `surgery forward`");
    assert_refused(
        &eval(&["--save-json", s(&labels)]),
        "is not an evaluation record",
    );
    assert_refused(
        &eval(&["--save-json", s(&weights)]),
        "is not an evaluation record",
    );
    assert_eq!(std::fs::read(&weights).unwrap(), before[0]);
    assert_eq!(std::fs::read(&labels).unwrap(), before[1]);
    // Each kind may replace itself.
    let (p, j, f) = (
        dir.path().join("p.txt"),
        dir.path().join("e.json"),
        dir.path().join("f.safetensors"),
    );
    for _ in 0..2 {
        let r = eval(&["--write-predictions", s(&p), "--save-json", s(&j)]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert_eq!(forward(&f).code, 0);
    }
    // ...but not one another.
    assert_refused(
        &eval(&["--save-json", s(&p)]),
        "is not an evaluation record",
    );
    assert_refused(&forward(&j), "is not an output of `surgery forward`");
}

#[test]
fn cache_teacher_inside_an_input_folder_is_refused() {
    let s_ = setup(32);
    let teacher = s_.model.clone();
    let before = std::fs::read_dir(&teacher).unwrap().count();
    for cache in [teacher.clone(), teacher.join("cache")] {
        let r = surgery(&[
            "train",
            "distill",
            s(&s_.model),
            "--teacher",
            s(&teacher),
            "--cache-teacher",
            s(&cache),
            "--train",
            s(&s_.data.train),
            "--dev",
            s(&s_.data.dev),
            "--out",
            s(&s_.dir.path().join("run")),
        ]);
        assert_refused(&r, "lies inside the input");
    }
    assert_eq!(std::fs::read_dir(&teacher).unwrap().count(), before);
}

#[test]
fn an_output_over_an_input_is_refused_by_every_command_and_the_input_is_unchanged() {
    let dir = tempdir();
    let m = model(dir.path());
    let data = conll(dir.path());
    let sentences = dir.path().join("s.txt");
    std::fs::write(&sentences, "John lives in Paris\n").unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&m, &link).unwrap();
    let data_link = dir.path().join("data-link.txt");
    std::os::unix::fs::symlink(&data, &data_link).unwrap();
    let (ms, d, st, l) = (s(&m), s(&data), s(&sentences), s(&link));
    let inside = m.join("sub");
    let weights = m.join("model.safetensors");
    let config = m.join("config.json");
    let under_link = link.join("out");
    let read_all = || {
        [
            &m.join("model.safetensors"),
            &m.join("config.json"),
            &data,
            &sentences,
        ]
        .map(|p| std::fs::read(p).unwrap())
    };
    let before = read_all();
    let cases: Vec<Vec<&str>> = vec![
        vec!["drop-layers", ms, ms, "--keep", "0", "--force"],
        vec!["drop-layers", ms, l, "--keep", "0", "--force"],
        vec!["drop-layers", ms, s(&under_link), "--keep", "0"],
        vec!["tie-layers", ms, ms, "--share-all", "--force"],
        vec![
            "sparsegpt",
            ms,
            s(&inside),
            "--sparsity",
            "0.5",
            "--calib",
            d,
        ],
        vec!["prune-vocab", ms, ms, "--corpus", d, "--force"],
        vec!["export", ms, ms, "--force"],
        vec!["export", ms, l, "--force"],
        vec!["forward", ms, "--input", st, "--out", st, "--force"],
        vec![
            "forward",
            ms,
            "--input",
            st,
            "--out",
            s(&weights),
            "--force",
        ],
        vec!["eval", ms, "--data", d, "--write-predictions", d, "--force"],
        vec![
            "eval",
            ms,
            "--data",
            s(&data_link),
            "--write-predictions",
            d,
            "--force",
        ],
        vec![
            "eval",
            ms,
            "--data",
            d,
            "--save-json",
            s(&config),
            "--force",
        ],
        vec![
            "train", "finetune", ms, "--train", d, "--dev", d, "--out", ms, "--force",
        ],
        vec![
            "train", "finetune", ms, "--train", d, "--dev", d, "--out", l, "--force",
        ],
        vec![
            "train", "finetune", ms, "--train", d, "--dev", d, "--out", d, "--force",
        ],
        vec![
            "init-student",
            ms,
            "--like",
            ms,
            "--layers",
            "1",
            "--hidden",
            "16",
            "--heads",
            "4",
            "--intermediate",
            "8",
            "--force",
        ],
        vec!["report", ms, "--out", ms],
    ];
    for args in cases {
        let r = surgery(&args);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(!r.stderr.contains("panicked"), "{args:?}: {}", r.stderr);
        assert!(read_all() == before, "{args:?} changed an input");
    }
    assert!(!inside.exists());
}

#[test]
fn model_safetensors_gets_the_same_permissions_as_other_files() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempdir();
    let m = model(dir.path());
    let out = dir.path().join("cut");
    assert_eq!(
        surgery(&["drop-layers", s(&m), s(&out), "--keep", "0"]).code,
        0
    );
    let mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode(out.join("model.safetensors")),
        mode(out.join("config.json"))
    );
    assert_ne!(mode(out.join("model.safetensors")), 0o600);
}

#[test]
fn input_that_is_a_file_instead_of_a_folder() {
    let dir = tempdir();
    let file = dir.path().join("config.json");
    std::fs::write(&file, "{}").unwrap();
    assert_rejected(
        &file,
        dir.path(),
        &["config.json", "not a checkpoint folder"],
    );
}

#[test]
fn output_path_that_exists() {
    let dir = tempdir();
    let ckpt = good(dir.path());
    let input = dir.path().join("sentences.txt");
    std::fs::write(&input, "a b c\n").unwrap();
    let out = dir.path().join("out.safetensors");
    std::fs::write(&out, "keep me").unwrap();
    let args = [
        "forward",
        ckpt.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    let r = surgery(&args);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("out.safetensors") && r.stderr.contains("already exists"),
        "{}",
        r.stderr
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "keep me");
    // --force never replaces a file surgery did not write ...
    let mut forced = args.to_vec();
    forced.push("--force");
    let r = surgery(&forced);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("refusing to replace it"), "{}", r.stderr);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "keep me");
    // ... but does replace its own output.
    std::fs::remove_file(&out).unwrap();
    assert_eq!(surgery(&args).code, 0);
    assert_eq!(surgery(&forced).code, 0);
}
