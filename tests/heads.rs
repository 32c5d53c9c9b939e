//! remove-heads: exact removal, importance ranking, gates files, and refusals.

use candle_core::Device;
use surgery::arch::{Key, Layout, LinearPart, LinearSlot};
use surgery::cuts::remove_heads::{apply, Ranking, Spec};
use surgery::io::Checkpoint;
use surgery::model::gates::GatesFile;

use crate::util::{max_abs_diff, tempdir, tiny_checkpoint, tiny_config};

fn spec() -> Spec {
    Spec {
        heads: None,
        gates: None,
        threshold: 0.5,
        keep: None,
        by: Ranking::Importance,
        allow_empty: false,
        calibration: surgery::cuts::shared::calibrate::CalibOptions::new(None, 512),
    }
}

fn logits(ckpt: &Checkpoint, gates: Option<&[candle_core::Tensor]>) -> candle_core::Tensor {
    let ids = vec![vec![2, 10, 20, 30, 40, 50, 3], vec![2, 11, 21, 3, 0, 0, 0]];
    let mask = vec![vec![1; 7], vec![1, 1, 1, 1, 0, 0, 0]];
    let batch = surgery::eval::infer::make_batch(&ids, &mask, &Device::Cpu).unwrap();
    let model = surgery::eval::infer::load_model(ckpt, &Device::Cpu).unwrap();
    model
        .forward_gated(
            &batch,
            &mut surgery::model::Mode::Eval,
            Default::default(),
            gates,
        )
        .unwrap()
        .logits
        .unwrap()
}

#[test]
fn removing_heads_equals_gating_them_to_zero_and_removing_none_changes_nothing() {
    let ckpt = tiny_checkpoint(tiny_config(), Layout::BertPrefixed, 71);
    let out = apply(
        &ckpt,
        &Spec {
            heads: Some("0:1,3;2:0,1,2,3".into()),
            ..spec()
        },
    )
    .unwrap();
    assert_eq!(out.report["heads_per_layer"], serde_json::json!([2, 4, 0]));
    let gates = [[1.0f32, 0.0, 1.0, 0.0], [1.0; 4], [0.0; 4]]
        .map(|g| candle_core::Tensor::new(&g, &Device::Cpu).unwrap());
    let d = max_abs_diff(&logits(&ckpt, Some(&gates)), &logits(&out.checkpoint, None));
    assert!(d < 1e-5, "{d}");
    let per_head = 3 * (16 * 4 + 4) + 16 * 4;
    assert_eq!(
        out.entry.params_before - out.entry.params_after,
        6 * per_head as u64
    );
    let none = apply(
        &ckpt,
        &Spec {
            heads: Some("".into()),
            ..spec()
        },
    )
    .unwrap();
    assert_eq!(
        max_abs_diff(&logits(&ckpt, None), &logits(&none.checkpoint, None)),
        0.0
    );
}

#[test]
fn bad_heads_and_empty_models_are_refused() {
    let ckpt = tiny_checkpoint(tiny_config(), Layout::Bare, 72);
    let err = apply(
        &ckpt,
        &Spec {
            heads: Some("1:4".into()),
            ..spec()
        },
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("head 4 does not exist"), "{err}");
    let all = "0:0,1,2,3;1:0,1,2,3;2:0,1,2,3";
    let err = apply(
        &ckpt,
        &Spec {
            heads: Some(all.into()),
            ..spec()
        },
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("--allow-empty"), "{err}");
    let empty = apply(
        &ckpt,
        &Spec {
            heads: Some(all.into()),
            allow_empty: true,
            ..spec()
        },
    )
    .unwrap();
    assert_eq!(empty.report["heads_left"], 0);
    logits(&empty.checkpoint, None);
}

#[test]
fn gates_files_must_match_the_model() {
    let dir = tempdir();
    let ckpt = tiny_checkpoint(tiny_config(), Layout::Bare, 73);
    let file = GatesFile {
        heads_per_layer: vec![4, 4, 4],
        hidden_size: 16,
        gates: vec![vec![0.9, 0.1, 0.7, 0.0], vec![1.0; 4], vec![0.2; 4]],
    };
    let path = dir.path().join("gates.json");
    std::fs::write(&path, serde_json::to_string(&file).unwrap()).unwrap();
    let out = apply(
        &ckpt,
        &Spec {
            gates: Some(path.clone()),
            ..spec()
        },
    )
    .unwrap();
    assert_eq!(out.report["heads_per_layer"], serde_json::json!([2, 4, 0]));
    let other = GatesFile {
        heads_per_layer: vec![12; 6],
        hidden_size: 384,
        gates: vec![vec![1.0; 12]; 6],
    };
    std::fs::write(&path, serde_json::to_string(&other).unwrap()).unwrap();
    let err = apply(
        &ckpt,
        &Spec {
            gates: Some(path),
            ..spec()
        },
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("different model"), "{err}");
}

#[test]
fn importance_keeps_the_requested_number_of_heads() {
    let s = crate::util::setup(200);
    let run = s.dir.path().join("run");
    let mut train = crate::util::quick_spec();
    train.epochs = 1;
    crate::util::finetune(
        &s.model,
        &crate::util::common(&s.data, &train, &run, Default::default()),
    )
    .unwrap();
    let ckpt = Checkpoint::open(&run.join("best")).unwrap();
    let out = apply(
        &ckpt,
        &Spec {
            keep: Some(5),
            calibration: surgery::cuts::shared::calibrate::CalibOptions::new(
                Some(s.data.dev.clone()),
                512,
            ),
            ..spec()
        },
    )
    .unwrap();
    assert_eq!(out.report["heads_left"], 5);
    let scores = &out.report["ranking"]["scores"];
    assert_eq!(scores.as_array().unwrap().len(), 2);
}

#[test]
fn gate_training_closes_gates_and_writes_a_usable_gates_file() {
    use surgery::train::gates::GateSpec;
    let s = crate::util::setup(300);
    let run = s.dir.path().join("base");
    let mut train = crate::util::quick_spec();
    train.epochs = 1;
    crate::util::finetune(
        &s.model,
        &crate::util::common(&s.data, &train, &run, Default::default()),
    )
    .unwrap();
    let base = run.join("best");
    let gates_run = s.dir.path().join("gates");
    let mut spec = crate::util::quick_spec();
    spec.epochs = 2;
    let g = GateSpec {
        l0: Some(0.5),
        target_heads: None,
        lambda_lr: 1e-4,
        gate_lr: 0.1,
        gate_init: 3.0,
    };
    crate::util::gates(
        &base,
        &g,
        &crate::util::common(&s.data, &spec, &gates_run, Default::default()),
    )
    .unwrap();
    let metrics = std::fs::read_to_string(gates_run.join("metrics.jsonl")).unwrap();
    let open: Vec<f64> = metrics
        .lines()
        .filter_map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["expected_open_heads"].as_f64()
        })
        .collect();
    assert!(
        open.len() > 2 && open.last().unwrap() < &(open[0] - 0.5),
        "{open:?}"
    );
    let svg = std::fs::read_to_string(gates_run.join("gates.svg")).unwrap();
    assert!(svg.contains("<polyline") && svg.contains("layer 1"));
    // The cut keeps exactly the heads whose learned gate reaches the threshold, layer by layer.
    // The gates of this short run all sit near 0.73, so the threshold is set at their mean: some
    // heads are kept and some removed.
    let file: GatesFile =
        serde_json::from_str(&std::fs::read_to_string(gates_run.join("gates.json")).unwrap())
            .unwrap();
    let values: Vec<f64> = file.gates.iter().flatten().copied().collect();
    let threshold = values.iter().sum::<f64>() / values.len() as f64;
    let out = apply(
        &Checkpoint::open(&gates_run.join("best")).unwrap(),
        &Spec {
            gates: Some(gates_run.join("gates.json")),
            threshold,
            allow_empty: true,
            ..spec_defaults()
        },
    )
    .unwrap();
    let open_per_layer: Vec<usize> = file
        .gates
        .iter()
        .map(|g| g.iter().filter(|v| **v >= threshold).count())
        .collect();
    let kept = out.checkpoint.arch.heads_per_layer();
    assert_eq!(kept, open_per_layer, "gates {:?}", file.gates);
    let left: usize = kept.iter().sum();
    assert_eq!(out.report["heads_left"], left);
    assert!(
        0 < left && left < 8,
        "threshold {threshold}: {:?}",
        file.gates
    );
}

fn spec_defaults() -> Spec {
    spec()
}

#[test]
fn a_model_with_a_headless_layer_trains() {
    // Regression: the in-place optimizer refused the empty query/key/value weights of a layer
    // without heads ("dst has repeated elements").
    let s = crate::util::setup(48);
    let ckpt = Checkpoint::open(&s.model).unwrap();
    let cut = apply(
        &ckpt,
        &Spec {
            heads: Some("1:0,1,2,3".into()),
            ..spec()
        },
    )
    .unwrap();
    let path = s.dir.path().join("headless");
    cut.save(&path, false).unwrap();
    let mut train = crate::util::quick_spec();
    train.max_steps = 10;
    train.log_every = 1;
    // Stopped after 2 steps as if interrupted, so last/ holds the trained model.
    let stopped = surgery::train::spec::RunOptions {
        stop_after: Some(2),
        ..Default::default()
    };
    crate::util::finetune(
        &path,
        &crate::util::common(&s.data, &train, &s.dir.path().join("run"), stopped),
    )
    .unwrap();
    // It trained: finite losses, every layer's attention output bias learned (in layer 1, whose
    // heads are all gone, the bias is all its attention adds), and layer 1 kept no heads.
    let run = s.dir.path().join("run");
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let losses: Vec<f64> = metrics
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64())
        .collect();
    assert_eq!(losses.len(), 2, "{metrics}");
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    let before = Checkpoint::open(&path).unwrap();
    let after = Checkpoint::open(&run.join("last/model")).unwrap();
    assert_eq!(after.arch.layers[after.arch.layer_map[1]].num_heads, 0);
    let changed = |layer: usize, slot: LinearSlot, part: LinearPart| {
        let key = Key::Linear { layer, slot, part };
        let a = before.tensor(key, &Device::Cpu).unwrap();
        let b = after.tensor(key, &Device::Cpu).unwrap();
        max_abs_diff(&a, &b) > 0.0
    };
    for layer in 0..before.arch.num_layers() {
        assert!(
            changed(layer, LinearSlot::AttentionOutput, LinearPart::Bias),
            "layer {layer}'s attention output bias did not train"
        );
    }
    assert!(changed(0, LinearSlot::Query, LinearPart::Weight));
}
