//! Command-line options: every numeric option refuses zero, negative, NaN, infinite and huge
//! values where they make no sense, empty values and malformed counts are refused naming the
//! option, and sizes a model cannot take are errors, never clamps or panics.

use surgery::arch::Layout;

use crate::util::{
    assert_refused, conll, good, model, refused_cleanly, run_strings, s, save, short_training,
    surgery, tempdir, tiny_checkpoint, tiny_config,
};

#[test]
fn batch_size_zero_is_refused_by_forward_eval_and_predict() {
    let dir = tempdir();
    let m = model(dir.path());
    let data = conll(dir.path());
    let sentences = dir.path().join("s.txt");
    std::fs::write(&sentences, "John lives in Paris\n").unwrap();
    let out = dir.path().join("o.safetensors");
    for args in [
        vec!["forward", s(&m), "--input", s(&sentences), "--out", s(&out)],
        vec!["eval", s(&m), "--data", s(&data)],
        vec!["predict", s(&m), "--input", s(&sentences)],
    ] {
        let mut args = args.clone();
        args.extend(["--batch-size", "0"]);
        let r = surgery(&args);
        refused_cleanly(&r, "--batch-size");
    }
    assert!(!out.exists());
}

/// Every numeric option refuses the values outside its domain at parse time, naming itself.
#[test]
fn numeric_options_refuse_zero_negative_nan_inf_and_huge_values() {
    let dir = tempdir();
    let m = dir.path().join("missing");
    let out = dir.path().join("out");
    let (ms, os) = (s(&m), s(&out));
    let t = ["--train", "t", "--dev", "d", "--out", os];
    let finetune: Vec<&str> = [&["train", "finetune", ms][..], &t].concat();
    let distill: Vec<&str> = [&["train", "distill", ms, "--teacher", ms][..], &t].concat();
    let gates: Vec<&str> = [&["train", "gates", ms, "--l0", "1"][..], &t].concat();
    let sparsegpt = ["sparsegpt", ms, os, "--calib", "c", "--sparsity", "0.5"];
    let bad_everywhere = ["0", "-1", "NaN", "inf", "1e400"];
    let cases: Vec<(Vec<&str>, &str, &[&str])> = vec![
        (
            vec!["forward", ms, "--input", "i", "--out", os],
            "--batch-size",
            &["0", "-1", "NaN", "1e30"],
        ),
        (
            vec!["eval", ms, "--data", "d"],
            "--batch-size",
            &["0", "-1", "NaN", "1e30"],
        ),
        (
            vec!["eval", ms, "--data", "d"],
            "--max-len",
            &["0", "2", "-1", "NaN", "100000000"],
        ),
        (vec!["predict", ms], "--batch-size", &["0", "-1", "inf"]),
        (
            vec![
                "remove-heads",
                ms,
                os,
                "--keep",
                "1",
                "--by",
                "importance",
                "--calib",
                "d",
            ],
            "--calib-sentences",
            &["0", "-1", "NaN"],
        ),
        (
            sparsegpt.to_vec(),
            "--heldout-sentences",
            &["0", "-1", "NaN"],
        ),
        (sparsegpt.to_vec(), "--block", &["0", "-1", "NaN"]),
        (sparsegpt.to_vec(), "--damp", &bad_everywhere),
        (sparsegpt.to_vec(), "--calib-sentences", &["0", "-1"]),
        (
            vec!["sparsegpt", ms, os, "--calib", "c"],
            "--sparsity",
            &["0", "1", "-1", "NaN", "inf"],
        ),
        (
            vec!["magnitude", ms, os],
            "--sparsity",
            &["0", "1", "-1", "NaN", "inf"],
        ),
        (
            vec!["lowrank-layers", ms, os, "--rank", "2"],
            "--damp",
            &bad_everywhere,
        ),
        (
            vec!["lowrank-layers", ms, os],
            "--energy",
            &["0", "-1", "1.5", "NaN", "inf"],
        ),
        (
            vec!["lowrank-layers", ms, os],
            "--rank",
            &["0", "-1", "NaN"],
        ),
        (
            vec!["factorize-embeddings", ms, os],
            "--rank",
            &["0", "-1", "NaN"],
        ),
        (
            vec!["remove-heads", ms, os, "--gates", "g"],
            "--threshold",
            &["-1", "2", "NaN", "inf"],
        ),
        (finetune.clone(), "--weight-decay", &["-1", "NaN", "inf"]),
        (finetune.clone(), "--max-grad-norm", &["-1", "NaN", "inf"]),
        (finetune.clone(), "--lr", &bad_everywhere),
        (
            finetune.clone(),
            "--warmup-ratio",
            &["-1", "1", "NaN", "inf"],
        ),
        (
            finetune.clone(),
            "--label-smoothing",
            &["-1", "1", "NaN", "inf"],
        ),
        (finetune.clone(), "--epochs", &["0", "-1", "NaN"]),
        (finetune.clone(), "--batch-size", &["0", "-1", "NaN"]),
        (finetune.clone(), "--eval-batch-size", &["0", "-1"]),
        (finetune.clone(), "--grad-accum", &["0", "-1"]),
        (finetune.clone(), "--max-len", &["0", "-1", "100000000"]),
        (distill.clone(), "--hidden-weight", &["-1", "NaN", "inf"]),
        (distill.clone(), "--attention-weight", &["-1", "NaN", "inf"]),
        (distill.clone(), "--temperature", &bad_everywhere),
        (distill.clone(), "--alpha", &["-1", "2", "NaN", "inf"]),
        (distill.clone(), "--augment-ratio", &bad_everywhere),
        (gates.clone(), "--gate-lr", &bad_everywhere),
        (gates.clone(), "--lambda-lr", &bad_everywhere),
        (gates.clone(), "--gate-init", &["NaN", "inf", "-inf"]),
        (
            vec![
                "train", "gates", ms, "--train", "t", "--dev", "d", "--out", os,
            ],
            "--l0",
            &["-1", "NaN", "inf"],
        ),
        (
            vec!["assert-budget", ms],
            "--max",
            &["-1", "NaN", "inf", "1e30", "122.1205k"],
        ),
    ];
    for (base, option, values) in cases {
        for value in values {
            // `--opt=-1`: a negative number given as the option's value, not as another flag.
            let given = format!("{option}={value}");
            let mut args = base.clone();
            args.push(&given);
            let r = surgery(&args);
            assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
            assert!(
                r.stderr.contains(option) && !r.stderr.contains("missing"),
                "{args:?} not refused for its value: {}",
                r.stderr
            );
        }
    }
}

#[test]
fn eval_max_len_beyond_the_model_is_an_error_not_a_clamp() {
    let dir = tempdir();
    let m = model(dir.path());
    let data = conll(dir.path());
    // The tiny model has 32 positions.
    let r = surgery(&["eval", s(&m), "--data", s(&data), "--max-len", "64"]);
    assert_refused(&r, "the model has 32 positions");
    let r = surgery(&["eval", s(&m), "--data", s(&data), "--max-len", "32"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn eval_tag_names_must_be_distinct_tags() {
    let dir = tempdir();
    let m = model(dir.path());
    let data = dir.path().join("d.jsonl");
    std::fs::write(&data, "{\"tokens\": [\"John\"], \"ner_tags\": [1]}\n").unwrap();
    let r = surgery(&["eval", s(&m), "--data", s(&data), "--tag-names", "O,O,O"]);
    assert_refused(&r, "--tag-names: `O` is given twice");
    let r = surgery(&["eval", s(&m), "--data", s(&data), "--tag-names", "O,PER"]);
    assert_refused(&r, "--tag-names: tag `PER`");
}

#[test]
fn assert_budget_compares_the_exact_count() {
    let dir = tempdir();
    let m = model(dir.path());
    let r = surgery(&["inspect", s(&m), "--json"]);
    let json: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let unique = json["budget"]["unique"].as_u64().expect("unique count");
    // One parameter under the count, written with a k suffix: over budget (exit 3).
    let under = format!("{}k", (unique - 1) as f64 / 1000.0);
    assert_eq!(surgery(&["assert-budget", s(&m), "--max", &under]).code, 3);
    let exact = format!("{}k", unique as f64 / 1000.0);
    assert_eq!(surgery(&["assert-budget", s(&m), "--max", &exact]).code, 0);
    // Half a parameter below the count is not a count: refused, not rounded up.
    let half = format!("{}.5", unique - 1);
    assert_refused(
        &surgery(&["assert-budget", s(&m), "--max", &half]),
        "not a whole number",
    );
}

#[test]
fn sparsity_patterns_with_partial_or_oversized_groups_are_refused() {
    let dir = tempdir();
    let m = model(dir.path());
    let out = dir.path().join("out");
    // Hidden 16, intermediate 24: groups of 16 leave a partial group in the output linear.
    let r = surgery(&["magnitude", s(&m), s(&out), "--pattern", "2:16"]);
    assert_refused(&r, "partial");
    let r = surgery(&["magnitude", s(&m), s(&out), "--pattern", "2:1000"]);
    assert_refused(&r, "groups of at most 64");
    assert!(!out.exists());
    assert_eq!(
        surgery(&["magnitude", s(&m), s(&out), "--pattern", "2:8"]).code,
        0
    );
}

#[test]
fn lowrank_params_target_above_the_model_size_is_refused() {
    let dir = tempdir();
    let m = model(dir.path());
    let out = dir.path().join("out");
    let r = surgery(&["lowrank-layers", s(&m), s(&out), "--params-target", "1G"]);
    assert_refused(&r, "already has");
    assert!(!out.exists());
}

#[test]
fn train_max_len_beyond_a_model_is_an_error_naming_the_model_and_its_positions() {
    let dir = tempdir();
    let m = model(dir.path()); // 32 positions
    let mut short = tiny_config();
    short.max_position_embeddings = 16;
    let teacher = save(
        &tiny_checkpoint(short, Layout::Bare, 4),
        dir.path(),
        "teacher",
    );
    let data = conll(dir.path());
    let out = dir.path().join("run");
    let common = |command: &[&str]| short_training(command, s(&data), s(&out), "1");
    for (command, max_len, needle) in [
        (
            vec!["train", "finetune", s(&m)],
            "64",
            "the model has 32 positions",
        ),
        (
            vec!["train", "gates", s(&m), "--l0", "1"],
            "33",
            "the model has 32 positions",
        ),
        (
            vec!["train", "distill", s(&m), "--teacher", s(&teacher)],
            "24",
            "the teacher has 16 positions",
        ),
    ] {
        let mut args = common(&command);
        args.extend(["--max-len".to_string(), max_len.to_string()]);
        let r = run_strings(&args);
        refused_cleanly(&r, &format!("--max-len {max_len}"));
        assert!(r.stderr.contains(needle), "{}", r.stderr);
        assert!(!out.exists(), "a refused run leaves no folder");
    }
    // Within the limits (and the default, 128, lowered to the model's positions) it trains.
    for extra in [&["--max-len", "32"][..], &[][..]] {
        let mut args = common(&["train", "finetune", s(&m), "--force"]);
        args.extend(extra.iter().map(|x| x.to_string()));
        let r = run_strings(&args);
        assert_eq!(r.code, 0, "{extra:?}: {}", r.stderr);
    }
}

#[test]
fn empty_option_values_are_refused_by_every_command() {
    let dir = tempdir();
    let m = model(dir.path());
    let data = conll(dir.path());
    let sentences = dir.path().join("s.txt");
    std::fs::write(&sentences, "John lives in Paris\n").unwrap();
    let out = dir.path().join("out");
    let (m, d, o, st) = (s(&m), s(&data), s(&out), s(&sentences));
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["drop-layers", m, o, "--keep", ""], "--keep"),
        (vec!["tie-layers", m, o, "--groups", ""], "--groups"),
        (vec!["assert-budget", m, "--max", ""], "--max"),
        (vec!["eval", m, "--data", ""], "--data"),
        (
            vec!["eval", m, "--data", d, "--tag-names", ""],
            "--tag-names",
        ),
        (vec!["eval", m, "--data", d, "--device", ""], "--device"),
        (vec!["forward", m, "--input", st, "--out", ""], "--out"),
        (vec!["predict", m, "--input", ""], "--input"),
        (vec!["magnitude", m, o, "--pattern", ""], "--pattern"),
        (
            vec!["sparsegpt", m, o, "--pattern", "2:4", "--calib", ""],
            "--calib",
        ),
        (vec!["export", m, ""], "OUT"),
        (vec!["drop-layers", "", o, "--keep", "0"], "INPUT"),
        (vec!["prune-vocab", m, o, "--corpus", ""], "--corpus"),
        (
            vec![
                "train", "finetune", m, "--train", d, "--dev", d, "--out", "",
            ],
            "--out",
        ),
        (vec!["report", m, "--out", ""], "--out"),
        (
            vec![
                "train",
                "distill",
                m,
                "--teacher",
                m,
                "--train",
                d,
                "--dev",
                d,
                "--out",
                o,
                "--layer-map",
                "",
            ],
            "--layer-map",
        ),
    ];
    for (args, needle) in cases {
        let r = surgery(&args);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(
            r.stderr.contains(needle) && !r.stderr.contains("panicked"),
            "{args:?}: {}",
            r.stderr
        );
        assert!(!out.exists(), "{args:?} wrote {o}");
    }
}

#[test]
fn assert_budget_refuses_malformed_counts_and_reads_suffixes_exactly() {
    let dir = tempdir();
    let m = model(dir.path());
    for bad in [
        "20MM", "1.5.3M", "M", "20 M", "0x10", "-0", "+5", "١٢٣", "nan", "inf", "1e", "k20",
        "2^10", "1e-3",
    ] {
        let given = format!("--max={bad}");
        let r = surgery(&["assert-budget", s(&m), &given]);
        refused_cleanly(&r, "--max");
    }
    // Over (exit 3) or within (exit 0) budget: the count is read as written.
    for (value, code) in [
        ("0", 3),
        ("1e3", 3),
        ("1_000", 3),
        ("20m", 0),
        ("20G", 0),
        ("1,000,000", 0),
    ] {
        let r = surgery(&["assert-budget", s(&m), "--max", value]);
        assert_eq!(r.code, code, "{value}: {}", r.stderr);
    }
}

#[test]
fn small_models_odd_options_and_empty_indexes_get_answers_not_panics() {
    let dir = tempdir();
    let m = model(dir.path()); // a vocabulary of 177 pieces: no embedding rank of 256 fits
    let r = surgery(&["plan", s(&m), "--budget", "2M"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("shapes fit"), "{}", r.stdout);
    for budget in ["0", "1"] {
        let r = surgery(&["plan", s(&m), "--budget", budget]);
        refused_cleanly(&r, &format!("no student shape fits {budget} parameters"));
    }
    refused_cleanly(&surgery(&["inspect", s(&m), "--seq-len", "0"]), "--seq-len");
    // A shard index whose weight map names no tensor.
    std::fs::remove_file(m.join("model.safetensors")).unwrap();
    std::fs::write(
        m.join("model.safetensors.index.json"),
        "{\"weight_map\": {}}",
    )
    .unwrap();
    refused_cleanly(&surgery(&["inspect", s(&m)]), "names no tensor");
}

#[test]
fn an_absurd_thread_count_is_refused_at_once_naming_the_variable() {
    let dir = tempdir();
    let m = model(dir.path());
    let data = conll(dir.path());
    for value in ["100000", "many"] {
        let r = crate::util::surgery_with_env(
            &["eval", s(&m), "--data", s(&data)],
            &[("RAYON_NUM_THREADS", value)],
        );
        refused_cleanly(&r, "RAYON_NUM_THREADS");
        // At once: before the model is evaluated (no score is printed).
        assert!(
            !r.stdout.contains("F1") && !r.stderr.contains("tok/s"),
            "{}\n{}",
            r.stdout,
            r.stderr
        );
    }
}

#[test]
fn a_decimal_comma_in_a_count_is_refused_not_dropped() {
    let dir = tempdir();
    let m = model(dir.path());
    let data = conll(dir.path());
    let out = dir.path().join("out");
    let cases: Vec<Vec<&str>> = vec![
        vec!["assert-budget", s(&m), "--max", "0,1M"],
        vec!["inspect", s(&m), "--budget", "122,5k"],
        vec![
            "prune-structured",
            s(&m),
            s(&out),
            "--params",
            "0,1M",
            "--calib",
            s(&data),
        ],
    ];
    for args in cases {
        refused_cleanly(&surgery(&args), "groups of three digits");
    }
    assert!(!out.exists());
    // Groups of three are thousands.
    let r = surgery(&["assert-budget", s(&m), "--max", "1,000,000"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn numeric_options_of_the_cuts_refuse_values_outside_their_domain() {
    let dir = tempdir();
    let m = model(dir.path());
    let data = conll(dir.path());
    let out = dir.path().join("out");
    let (ms, os, ds) = (s(&m), s(&out), s(&data));
    let structured = ["prune-structured", ms, os, "--flops", "0.5", "--calib", ds];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        ([&structured[..], &["--damp", "NaN"]].concat(), "--damp"),
        ([&structured[..], &["--damp", "-1"]].concat(), "--damp"),
        ([&structured[..], &["--damp", "inf"]].concat(), "--damp"),
        (
            [&structured[..], &["--calib-sentences", "0"]].concat(),
            "--calib-sentences",
        ),
        (
            [&structured[..], &["--heldout-sentences", "0"]].concat(),
            "--heldout-sentences",
        ),
        (
            [&structured[..], &["--seq-len", "4611686018427387904"]].concat(),
            "--seq-len",
        ),
        (
            vec!["prune-structured", ms, os, "--flops", "NaN", "--calib", ds],
            "--flops",
        ),
        (
            vec![
                "prune-neurons",
                ms,
                os,
                "--keep-ratio",
                "-0.5",
                "--by",
                "magnitude",
            ],
            "--keep-ratio",
        ),
        (
            vec![
                "prune-neurons",
                ms,
                os,
                "--keep",
                "3",
                "--by",
                "fisher",
                "--calib",
                ds,
                "--calib-sentences",
                "0",
            ],
            "--calib-sentences",
        ),
        (
            vec!["inspect", ms, "--seq-len", "4611686018427387904"],
            "--seq-len",
        ),
        (vec!["check-device", "--steps", "0"], "--steps"),
        (
            vec![
                "train", "focal", ms, "--train", ds, "--dev", ds, "--out", os, "--gamma", "1e308",
            ],
            "--gamma",
        ),
        (
            vec![
                "train", "finetune", ms, "--train", ds, "--dev", ds, "--out", os, "--lr", "-1e-5",
            ],
            "--lr",
        ),
    ];
    for (args, needle) in cases {
        let r = surgery(&args);
        refused_cleanly(&r, needle);
        assert!(
            !r.stderr.contains("unexpected argument"),
            "{args:?}: {}",
            r.stderr
        );
    }
    assert!(!out.exists());
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
fn bad_budget_option_is_a_usage_error() {
    let dir = tempdir();
    let ckpt = good(dir.path());
    let r = surgery(&["inspect", ckpt.to_str().unwrap(), "--budget", "lots"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("not a parameter count"), "{}", r.stderr);
}
