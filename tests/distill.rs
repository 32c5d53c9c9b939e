//! Distillation, students and plans on tiny synthetic data; a teacher's non-finite logits and
//! labels in another order are told apart from bad input.

use std::path::Path;

use surgery::data::augment::AugmentKind;
use surgery::io::Checkpoint;
use surgery::model::student::{init_student, plan, Shape};
use surgery::train::distill::DistillSpec;
use surgery::train::spec::RunOptions;

use crate::util::{
    conll, kd, model, one_step_labels, overflowing_model, quick_spec, s, save, setup, surgery,
    tempdir, Setup,
};

/// A fine-tuned tiny teacher and a smaller random student in the setup folder.
fn teacher_and_student(
    s: &Setup,
    student_shape: Shape,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let run = s.dir.path().join("teacher-run");
    let mut spec = quick_spec();
    spec.epochs = 3;
    crate::util::finetune(
        &s.model,
        &crate::util::common(&s.data, &spec, &run, RunOptions::default()),
    )
    .unwrap();
    let teacher = run.join("best");
    let student = init_student(
        &Checkpoint::open(&teacher).unwrap(),
        &student_shape,
        None,
        3,
    )
    .unwrap();
    let path = s.dir.path().join("student");
    // Recorded as the `init-student` command records it.
    let made = surgery::arch::HistoryEntry {
        op: "init-student".into(),
        args: serde_json::Value::Null,
        params_before: 0,
        params_after: 0,
    };
    student.save(&path, false, vec![made]).unwrap();
    (teacher, path)
}

fn small() -> Shape {
    Shape {
        layers: 1,
        hidden: 16,
        heads: 2,
        intermediate: 32,
        embedding_rank: Some(8),
    }
}

#[test]
fn a_student_learns_from_the_teacher_and_the_cache_is_reused() {
    let s = setup(1000);
    let shape = Shape {
        layers: 2,
        hidden: 32,
        heads: 2,
        intermediate: 64,
        embedding_rank: Some(16),
    };
    let (teacher, student) = teacher_and_student(&s, shape);
    let mut spec = quick_spec();
    spec.epochs = 3;
    let mut d = kd();
    d.cache_teacher = Some(s.dir.path().join("cache"));
    let a = s.dir.path().join("a");
    let outcome = crate::util::distill(
        &student,
        &teacher,
        &d,
        &crate::util::common(&s.data, &spec, &a, RunOptions::default()),
    )
    .unwrap();
    assert!(outcome.best_dev_f1 > 0.3, "dev F1 {}", outcome.best_dev_f1);
    let run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("run.json")).unwrap()).unwrap();
    assert_eq!(run["provenance"]["teacher_cache_hit"], false);
    // The student's history goes with the run, for copies kept without checkpoints.
    let student_ops: Vec<String> = Checkpoint::open(&student)
        .unwrap()
        .history()
        .into_iter()
        .map(|h| h.op)
        .collect();
    assert_eq!(student_ops, ["init-student"]);
    assert_eq!(run["input_history"], serde_json::json!(student_ops));
    assert_eq!(
        std::fs::read_dir(s.dir.path().join("cache"))
            .unwrap()
            .count(),
        1
    );
    let b = s.dir.path().join("b");
    crate::util::distill(
        &student,
        &teacher,
        &d,
        &crate::util::common(&s.data, &spec, &b, RunOptions::default()),
    )
    .unwrap();
    let run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(b.join("run.json")).unwrap()).unwrap();
    assert_eq!(run["provenance"]["teacher_cache_hit"], true);
    let (x, y) = (
        Checkpoint::open(&a.join("last/model")).unwrap(),
        Checkpoint::open(&b.join("last/model")).unwrap(),
    );
    let key = surgery::arch::Key::Classifier(surgery::arch::NormPart::Weight);
    let cpu = candle_core::Device::Cpu;
    assert_eq!(
        crate::util::max_abs_diff(&x.tensor(key, &cpu).unwrap(), &y.tensor(key, &cpu).unwrap()),
        0.0
    );
    assert_eq!(
        Checkpoint::open(&a.join("best"))
            .unwrap()
            .history()
            .last()
            .unwrap()
            .op,
        "train distill"
    );

    // Augmented sentences: the teacher labels them (a new cache entry), and they are recorded.
    d.augment = vec![AugmentKind::Mention, AugmentKind::Token];
    d.augment_ratio = 0.5;
    let c = s.dir.path().join("c");
    crate::util::distill(
        &student,
        &teacher,
        &d,
        &crate::util::common(&s.data, &spec, &c, RunOptions::default()),
    )
    .unwrap();
    let run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(c.join("run.json")).unwrap()).unwrap();
    assert_eq!(run["provenance"]["teacher_cache_hit"], false);
    let sentences = surgery::data::read_dataset(&s.data.train, &Default::default())
        .unwrap()
        .sentences
        .len();
    assert_eq!(
        run["provenance"]["augmented_sentences"],
        (sentences as f64 * 0.5).round() as u64
    );
    assert_eq!(
        std::fs::read_dir(s.dir.path().join("cache"))
            .unwrap()
            .count(),
        2
    );
    d.augment_ratio = 0.0;
    let err = crate::util::distill(
        &student,
        &teacher,
        &d,
        &crate::util::common(
            &s.data,
            &spec,
            &s.dir.path().join("d"),
            RunOptions::default(),
        ),
    );
    assert!(err.unwrap_err().to_string().contains("--augment-ratio"));
}

#[test]
fn intermediate_matching_trains_a_projection_that_is_not_saved() {
    let s = setup(200);
    let shape = Shape {
        layers: 1,
        hidden: 24,
        heads: 4,
        intermediate: 32,
        embedding_rank: None,
    };
    let (teacher, student) = teacher_and_student(&s, shape);
    let mut spec = quick_spec();
    spec.epochs = 1;
    let mut d = kd();
    d.hidden_weight = 1.0;
    d.attention_weight = 1.0;
    let out = s.dir.path().join("inter");
    crate::util::distill(
        &student,
        &teacher,
        &d,
        &crate::util::common(&s.data, &spec, &out, RunOptions::default()),
    )
    .unwrap();
    let store = surgery::io::TensorStore::open_dir(&out.join("best")).unwrap();
    assert!(
        store.names().all(|n| !n.contains("distill")),
        "projection must not be saved"
    );
    let optimizer =
        surgery::io::TensorStore::open_files(&[out.join("last/state/optimizer.safetensors")])
            .unwrap();
    assert_eq!(
        optimizer
            .info("value.distill.hidden_projection")
            .unwrap()
            .shape,
        vec![32, 24]
    );
    // A layer map naming a missing layer, and attention matching with other head counts, are refused.
    let mut bad = d.clone();
    bad.layer_map = Some("0:5".into());
    let err = crate::util::distill(
        &student,
        &teacher,
        &bad,
        &crate::util::common(
            &s.data,
            &spec,
            &s.dir.path().join("x"),
            RunOptions::default(),
        ),
    )
    .unwrap_err();
    assert!(err.to_string().contains("the teacher 0..1"), "{err}");
    let other = s.dir.path().join("other-heads");
    let t = Checkpoint::open(&teacher).unwrap();
    init_student(&t, &Shape { heads: 2, ..shape }, None, 1)
        .unwrap()
        .save(&other, false, vec![])
        .unwrap();
    let err = crate::util::distill(
        &other,
        &teacher,
        &d,
        &crate::util::common(
            &s.data,
            &spec,
            &s.dir.path().join("y"),
            RunOptions::default(),
        ),
    )
    .unwrap_err();
    assert!(err.to_string().contains("equal head counts"), "{err}");
}

#[test]
fn students_with_other_labels_are_refused_naming_both() {
    let s = setup(100);
    let (teacher, _) = teacher_and_student(&s, small());
    let mut other = Checkpoint::open(&s.model).unwrap();
    surgery::model::generate::attach_classifier(&mut other, &["O".into(), "B-X".into()], 0.02, 1)
        .unwrap();
    let path = s.dir.path().join("other");
    other.save(&path, false, vec![]).unwrap();
    let err = crate::util::distill(
        &path,
        &teacher,
        &kd(),
        &crate::util::common(
            &s.data,
            &quick_spec(),
            &s.dir.path().join("r"),
            RunOptions::default(),
        ),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("other") && msg.contains("best") && msg.contains("B-X"),
        "{msg}"
    );
}

#[test]
fn plans_fit_the_budget_or_say_the_smallest_possible() {
    let s = setup(20);
    let teacher = Checkpoint::open(&s.model).unwrap();
    let shapes = plan(&teacher, 400_000).unwrap();
    assert!(!shapes.is_empty() && shapes.iter().all(|c| c.unique_parameters <= 400_000));
    assert!(shapes
        .windows(2)
        .all(|w| w[0].mflops_per_token >= w[1].mflops_per_token));
    let err = plan(&teacher, 1_000).unwrap_err().to_string();
    assert!(err.contains("smallest considered has"), "{err}");
    let r = surgery(&["plan", s.model.to_str().unwrap(), "--budget", "400k"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let out = s.dir.path().join("st");
    let r = surgery(&[
        "init-student",
        out.to_str().unwrap(),
        "--like",
        s.model.to_str().unwrap(),
        "--layers",
        "2",
        "--hidden",
        "32",
        "--heads",
        "2",
        "--intermediate",
        "48",
        "--embedding-rank",
        "8",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let st = Checkpoint::open(&out).unwrap();
    assert_eq!(st.arch.num_layers(), 2);
    assert_eq!(st.tokenizer_files, teacher.tokenizer_files);
}

/// A student with another tokenizer (the teacher with a pruned vocabulary) learns hidden states
/// word by word: the term changes what it learns; attention matching is refused.
#[test]
fn hidden_matching_works_across_tokenizers_word_by_word() {
    let s = setup(200);
    let (teacher, _) = teacher_and_student(&s, small());
    let pruned = surgery::cuts::prune_vocab::apply(
        &Checkpoint::open(&teacher).unwrap(),
        &surgery::cuts::prune_vocab::Spec {
            corpus: vec![s.data.train.clone()],
            coverage: vec![],
        },
    )
    .unwrap();
    let student = s.dir.path().join("pruned");
    pruned.save(&student, false).unwrap();
    let mut spec = quick_spec();
    spec.epochs = 1;
    spec.max_steps = 4;
    let run = |d: &DistillSpec, name: &str| {
        let out = s.dir.path().join(name);
        crate::util::distill(
            &student,
            &teacher,
            d,
            &crate::util::common(&s.data, &spec, &out, RunOptions::default()),
        )
        .map(|_| {
            let last = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
            let losses: Vec<f64> = last
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter_map(|v| v["loss"].as_f64())
                .collect();
            (Checkpoint::open(&out.join("best")).unwrap(), losses)
        })
    };
    let (plain, plain_loss) = run(&kd(), "plain").unwrap();
    let mut hidden = kd();
    hidden.hidden_weight = 10.0;
    let (matched, matched_loss) = run(&hidden, "hidden").unwrap();
    assert!(
        matched_loss[0] > plain_loss[0],
        "the hidden term adds to the loss: {matched_loss:?} vs {plain_loss:?}"
    );
    let key = surgery::arch::Key::Linear {
        layer: 0,
        slot: surgery::arch::LinearSlot::Query,
        part: surgery::arch::LinearPart::Weight,
    };
    let dev = candle_core::Device::Cpu;
    let diff = crate::util::max_abs_diff(
        &plain.tensor(key, &dev).unwrap(),
        &matched.tensor(key, &dev).unwrap(),
    );
    assert!(diff > 1e-6, "the hidden term must change the weights");
    let mut attention = kd();
    attention.attention_weight = 1.0;
    let Err(err) = run(&attention, "attention") else {
        panic!("attention matching across tokenizers must be refused")
    };
    assert!(
        err.to_string().contains("needs the teacher's tokenizer"),
        "{err}"
    );
}

/// A cached teacher-logits file that was tampered with (a NaN among the logits) is refused,
/// naming the file, instead of training on it.
#[test]
fn a_damaged_teacher_cache_is_refused_naming_the_file() {
    let s = setup(48);
    let mut spec = quick_spec();
    spec.max_steps = 2;
    let teacher_run = s.dir.path().join("teacher");
    crate::util::finetune(
        &s.model,
        &crate::util::common(&s.data, &spec, &teacher_run, RunOptions::default()),
    )
    .unwrap();
    let teacher = teacher_run.join("best");
    let mut d = kd();
    d.cache_teacher = Some(s.dir.path().join("cache"));
    let run = |name: &str| {
        let out = s.dir.path().join(name);
        crate::util::distill(
            &s.model,
            &teacher,
            &d,
            &crate::util::common(&s.data, &spec, &out, Default::default()),
        )
    };
    run("first").unwrap();
    let file = std::fs::read_dir(s.dir.path().join("cache"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    // The first logit (just after the header) becomes a NaN.
    let mut bytes = std::fs::read(&file).unwrap();
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    bytes[8 + header..12 + header].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&file, bytes).unwrap();
    let err = run("second").unwrap_err().to_string();
    assert!(err.contains(&file.display().to_string()), "{err}");
    assert!(err.contains("damaged"), "{err}");
}

#[test]
fn a_teacher_with_non_finite_logits_is_not_blamed_on_its_tokenizer() {
    let s_ = setup(48);
    let teacher = overflowing_model(&s_);
    let teacher_dir = s_.dir.path().join("teacher");
    teacher.save(&teacher_dir, false, vec![]).unwrap();
    let err = crate::util::distill(
        &teacher_dir,
        &teacher_dir,
        &kd(),
        &crate::util::common(
            &s_.data,
            &quick_spec(),
            &s_.dir.path().join("run"),
            Default::default(),
        ),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("logits are not finite"), "{err}");
    assert!(!err.contains("tokenizer"), "{err}");
}

#[test]
fn a_student_with_the_teachers_labels_in_another_order_is_reordered_not_refused() {
    let dir = tempdir();
    let teacher = model(dir.path());
    let data = conll(dir.path());
    // The same model with its classifier rows and labels in another order: the same function.
    let mut ckpt = surgery::io::Checkpoint::open(&teacher).unwrap();
    let order = ["I-LOC", "O", "B-LOC", "I-PER", "B-PER"].map(String::from);
    surgery::model::generate::reorder_classifier(&mut ckpt, &order).unwrap();
    let student = save(&ckpt, dir.path(), "student");
    let f1 = |m: &Path| {
        let r = surgery(&["eval", s(m), "--data", s(&data), "--json"]);
        serde_json::from_str::<serde_json::Value>(&r.stdout).unwrap()["f1"].clone()
    };
    assert!(f1(&teacher).is_f64());
    assert_eq!(f1(&teacher), f1(&student));
    let command = ["train", "distill", s(&student), "--teacher", s(&teacher)];
    let labels = one_step_labels(&command, &data, &dir.path().join("run"));
    assert_eq!(labels["0"], "O");
    assert_eq!(labels["4"], "I-LOC");
}
