//! Structured pruning: prune-neurons, prune-structured (Fisher scores, joint search under a
//! FLOPs or parameter budget, layer-wise reconstruction) and the FLOPs count.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor, Var};
use surgery::arch::{Key, Layout, LinearKind, LinearPart, LinearSlot};
use surgery::budget::flops::{head_cost, neuron_cost, Flops};
use surgery::budget::Budget;
use surgery::cuts::prune_neurons::{self, NeuronScore};
use surgery::cuts::{lowrank_layers, prune_structured, tie_layers};
use surgery::io::Checkpoint;
use surgery::model::Precision;

use crate::util::{max_abs_diff, model, s, save, surgery, tempdir, tiny_checkpoint, tiny_config};

const CPU: Device = Device::Cpu;

fn logits(ckpt: &Checkpoint, gates: Option<&[Tensor]>) -> Tensor {
    logits_at(ckpt, gates, Precision::F32)
}

fn logits_at(ckpt: &Checkpoint, gates: Option<&[Tensor]>, precision: Precision) -> Tensor {
    let ids = vec![vec![2, 10, 20, 30, 40, 50, 3], vec![2, 11, 21, 3, 0, 0, 0]];
    let mask = vec![vec![1; 7], vec![1, 1, 1, 1, 0, 0, 0]];
    let batch = surgery::eval::infer::make_batch(&ids, &mask, &CPU).unwrap();
    let model = surgery::eval::infer::load_model(ckpt, &CPU)
        .unwrap()
        .with_precision(precision);
    let mode = &mut surgery::model::Mode::Eval;
    let out = model.forward_gated(&batch, mode, Default::default(), gates);
    out.unwrap().logits.unwrap()
}

/// Labelled CoNLL sentences made of the words the tiny tokenizer knows, shuffled by `seed`.
fn conll(dir: &Path, name: &str, sentences: usize, seed: u64) -> PathBuf {
    let text =
        std::fs::read_to_string(crate::util::repo().join("fixtures/parity/sentences.txt")).unwrap();
    let words: Vec<&str> = text.split_whitespace().collect();
    let tags = ["O", "O", "O", "B-PER", "I-PER", "B-LOC"];
    let mut rng = surgery::util::rng::Rng::new(seed);
    let mut out = String::new();
    for _ in 0..sentences {
        for _ in 0..4 + rng.below(10) {
            let w = words[rng.below(words.len())];
            out.push_str(&format!("{w} {}\n", tags[rng.below(tags.len())]));
        }
        out.push('\n');
    }
    let path = dir.join(name);
    std::fs::write(&path, out).unwrap();
    path
}

/// Zeroes the outgoing weights (output-linear columns, or `down` columns when low-rank) of the
/// given neurons of a stored layer.
fn silence_neurons(ckpt: &mut Checkpoint, layer: usize, neurons: &[usize]) {
    let part = match ckpt.arch.layers[layer].linear(LinearSlot::Output) {
        LinearKind::LowRank { .. } => LinearPart::Down,
        _ => LinearPart::Weight,
    };
    let key = Key::Linear {
        layer,
        slot: LinearSlot::Output,
        part,
    };
    let t = ckpt.tensor(key, &CPU).unwrap();
    let (rows, cols) = t.dims2().unwrap();
    let mut v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for r in 0..rows {
        for &n in neurons {
            v[r * cols + n] = 0.0;
        }
    }
    ckpt.set_tensor(key, Tensor::from_vec(v, (rows, cols), &CPU).unwrap());
}

fn neuron_spec(keep: usize) -> prune_neurons::Spec {
    prune_neurons::Spec {
        keep: Some(keep),
        keep_ratio: None,
        uniform: false,
        by: NeuronScore::Magnitude,
        calibration: surgery::cuts::shared::calibrate::CalibOptions::new(None, 2048),
    }
}

/// Silences 12 neurons of layer 0 and all 24 of layer 2, prunes the 36 by magnitude, and checks
/// that no logit moves; layer 2 keeps no neuron.
fn check_silent_neurons_go_without_a_trace(mut ckpt: Checkpoint) -> Checkpoint {
    silence_neurons(&mut ckpt, 0, &(0..24).step_by(2).collect::<Vec<_>>());
    silence_neurons(&mut ckpt, 2, &(0..24).collect::<Vec<_>>());
    let total: usize = ckpt.arch.layers.iter().map(|l| l.intermediate).sum();
    let out = prune_neurons::apply(&ckpt, &neuron_spec(total - 36)).unwrap();
    let sizes: Vec<usize> = out
        .checkpoint
        .arch
        .layers
        .iter()
        .map(|l| l.intermediate)
        .collect();
    assert_eq!(sizes, [12, 24, 0]);
    let d = max_abs_diff(&logits(&ckpt, None), &logits(&out.checkpoint, None));
    assert!(d <= 1e-5, "{d}");
    // The bf16 products run on empty matrices too (only rounding differs).
    let bf16 = |c: &Checkpoint| logits_at(c, None, Precision::Bf16);
    let d = max_abs_diff(&bf16(&ckpt), &bf16(&out.checkpoint));
    assert!(d <= 0.05, "{d}");
    let notes = out.report["notes"].to_string();
    assert!(notes.contains("keep no FFN neuron"), "{notes}");
    // Saved and reopened: the per-layer sizes survive in the surgery block.
    let dir = tempdir();
    let path = save(&out.checkpoint, dir.path(), "pruned");
    let reopened = Checkpoint::open(&path).unwrap();
    assert_eq!(reopened.arch.layers, out.checkpoint.arch.layers);
    let d = max_abs_diff(&logits(&ckpt, None), &logits(&reopened, None));
    assert!(d <= 1e-5, "{d}");
    out.checkpoint
}

#[test]
fn removing_neurons_without_outgoing_weights_changes_no_logit() {
    let ckpt = tiny_checkpoint(tiny_config(), Layout::BertPrefixed, 81);
    check_silent_neurons_go_without_a_trace(ckpt);
}

#[test]
fn low_rank_ffn_linears_lose_a_factor_row_or_column() {
    let ckpt = tiny_checkpoint(tiny_config(), Layout::Bare, 82);
    let spec = lowrank_layers::Spec {
        rank: Some(6),
        energy: None,
        params_target: None,
        modules: vec!["intermediate".into(), "output".into()],
        layers: None,
        method: lowrank_layers::Method::Svd,
        calibration: surgery::cuts::shared::calibrate::CalibOptions::new(None, 256),
    };
    let low = lowrank_layers::apply(&ckpt, &spec).unwrap().checkpoint;
    let out = check_silent_neurons_go_without_a_trace(low);
    let kinds = |s: usize| out.arch.layers[s].linear(LinearSlot::Intermediate);
    // 12 neurons left of 24 at rank 6: still low-rank; 0 left: multiplied out (empty, dense).
    assert_eq!(kinds(0), LinearKind::LowRank { rank: 6 });
    assert_eq!(kinds(2), LinearKind::Dense);
    // A rank above what is left is multiplied out into an exact dense linear.
    let mut low = lowrank_layers::apply(&ckpt, &spec).unwrap().checkpoint;
    silence_neurons(&mut low, 1, &(0..20).collect::<Vec<_>>());
    let out = prune_neurons::apply(&low, &neuron_spec(72 - 20)).unwrap();
    assert_eq!(out.checkpoint.arch.layers[1].intermediate, 4);
    assert_eq!(
        out.checkpoint.arch.layers[1].linear(LinearSlot::Output),
        LinearKind::Dense
    );
    let d = max_abs_diff(&logits(&low, None), &logits(&out.checkpoint, None));
    assert!(d <= 1e-5, "{d}");
}

/// remove-heads of the named heads.
fn heads_spec(heads: &str) -> surgery::cuts::remove_heads::Spec {
    surgery::cuts::remove_heads::Spec {
        heads: Some(heads.into()),
        gates: None,
        threshold: 0.5,
        keep: None,
        by: Default::default(),
        allow_empty: false,
        calibration: surgery::cuts::shared::calibrate::CalibOptions::new(None, 512),
    }
}

fn shared(seed: u64) -> Checkpoint {
    let ckpt = tiny_checkpoint(tiny_config(), Layout::Bare, seed);
    let spec = tie_layers::Spec {
        groups: Some("0-1".into()),
        share_all: false,
        init: tie_layers::Init::First,
    };
    tie_layers::apply(&ckpt, &spec).unwrap().checkpoint
}

#[test]
fn shared_layers_are_cut_once_and_scored_over_every_use() {
    let mut ckpt = shared(83);
    assert_eq!(ckpt.arch.layer_map, [0, 0, 1]);
    silence_neurons(&mut ckpt, 0, &[1, 5, 7]);
    let out = prune_neurons::apply(&ckpt, &neuron_spec(48 - 3)).unwrap();
    assert_eq!(out.checkpoint.arch.layers[0].intermediate, 21);
    let d = max_abs_diff(&logits(&ckpt, None), &logits(&out.checkpoint, None));
    assert!(d <= 1e-5, "{d}");

    // Fisher of a stored head on one batch = (Σ over its uses of ∂L/∂gate)², the gradient of
    // head gates on each logical layer (the model's own gated forward).
    let dir = tempdir();
    let calib = conll(dir.path(), "calib.txt", 6, 1);
    let options = surgery::cuts::shared::calibrate::CalibOptions::new(Some(calib.clone()), 100);
    let tags = Some(surgery::cuts::shared::calibrate::Tags::Labels);
    let calibrator =
        surgery::cuts::shared::calibrate::Calibrator::open(&ckpt, &options, tags).unwrap();
    let run = surgery::cuts::shared::unit_scores::fisher(&calibrator, "the test").unwrap();
    let gates: Vec<Var> = (0..3)
        .map(|_| Var::ones(4, candle_core::DType::F32, &CPU).unwrap())
        .collect();
    let labels = surgery::data::LabelSet::new(ckpt.require_labels().unwrap()).unwrap();
    let data = surgery::data::read_dataset(&calib, &Default::default()).unwrap();
    let tok = surgery::data::tokenize::WordTokenizer::from_checkpoint(&ckpt).unwrap();
    let prepared = surgery::eval::Prepared::for_inference(&tok, data, &labels, 32).unwrap();
    let examples: Vec<_> = prepared.examples.iter().collect();
    let b = surgery::eval::collate(&examples, tok.pad_id(), &CPU).unwrap();
    let model = surgery::eval::infer::load_model(&ckpt, &CPU).unwrap();
    let tensors: Vec<Tensor> = gates.iter().map(|g| g.as_tensor().clone()).collect();
    let mode = &mut surgery::model::Mode::Eval;
    let fwd = model
        .forward_gated(&b.batch, mode, Default::default(), Some(&tensors))
        .unwrap();
    let loss = surgery::model::loss::batch_cross_entropy(&fwd, &b.labels).unwrap();
    let grads = loss.backward().unwrap();
    let g = |l: usize| {
        grads
            .get(gates[l].as_tensor())
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    for h in 0..4 {
        let stored0 = (g(0)[h] + g(1)[h]) as f64;
        let stored1 = g(2)[h] as f64;
        for (fisher, expected) in [
            (run.scores.heads[0][h], stored0),
            (run.scores.heads[1][h], stored1),
        ] {
            let expected = expected * expected;
            assert!(
                (fisher - expected).abs() <= 1e-3 * expected.max(1e-6),
                "{fisher} vs {expected}"
            );
        }
    }
}

#[test]
fn flops_match_a_hand_count() {
    // Per layer at L = 8, H = 16, 4 heads of 4, FFN 24: Q, K, V 3·2·16·16, attention output
    // 2·16·16, Q·Kᵀ and P·V 2·2·16·8, FFN 2·2·16·24.
    let ckpt = tiny_checkpoint(tiny_config(), Layout::Bare, 84);
    let per_layer: u64 = 3 * 2 * 16 * 16 + 2 * 16 * 16 + 4 * 16 * 8 + 4 * 16 * 24;
    assert_eq!(Flops::of_arch(&ckpt.arch, 8).per_token, 3 * per_layer);
    let dir = tempdir();
    let path = save(&ckpt, dir.path(), "m");
    let r = surgery(&[
        "inspect",
        path.to_str().unwrap(),
        "--json",
        "--seq-len",
        "8",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let json: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(json["flops_per_token"], 3 * per_layer);
    let r = surgery(&["inspect", path.to_str().unwrap()]);
    assert!(r.stdout.contains("encoder FLOPs per token"), "{}", r.stdout);

    // Low-rank (rank 3 intermediate: 2·3·(16+24) instead of 2·16·24) and shared layers (a
    // stored layer counts per use). What no unit owns plus every unit's cost is the whole: a
    // neuron owns a row of the low-rank `up` factor, not the `down` factor (3×16) it reads.
    let mut arch = shared(85).arch;
    arch.layers[1]
        .linears
        .insert(LinearSlot::Intermediate, LinearKind::LowRank { rank: 3 });
    let low_layer = per_layer - 2 * 16 * 24 + 2 * 3 * (16 + 24);
    assert_eq!(
        Flops::of_arch(&arch, 8).per_token,
        2 * per_layer + low_layer
    );
    let budget = Budget::of_arch(&arch);
    // (stored layer, uses, FLOPs per use, its first logical layer, what no unit owns: the
    // attention-output and output biases, two LayerNorms, and the `down` factor)
    for (s, uses, flops, logical, down) in
        [(0, 2u64, per_layer, 0, 0u64), (1, 1, low_layer, 2, 3 * 16)]
    {
        let units = 4 * head_cost(&arch, s, 8).flops + 24 * neuron_cost(&arch, s).flops;
        assert_eq!(units + uses * 2 * down, uses * flops);
        let unit_params = 4 * head_cost(&arch, s, 8).params + 24 * neuron_cost(&arch, s).params;
        let left = budget.layers[logical].params - unit_params;
        assert_eq!(left, 16 + 16 + 4 * 16 + down);
    }
}

fn structured_spec(calib: PathBuf, flops: f64) -> prune_structured::Spec {
    prune_structured::Spec {
        flops: Some(flops),
        params: None,
        seq_len: 128,
        no_reconstruct: false,
        calibration: surgery::cuts::shared::calibrate::CalibOptions::new(Some(calib), 2048),
    }
}

#[test]
fn structured_pruning_meets_the_budget_and_reconstruction_lowers_every_layers_error() {
    let ckpt = tiny_checkpoint(tiny_config(), Layout::Bare, 86);
    let dir = tempdir();
    let calib = conll(dir.path(), "calib.txt", 400, 2);
    let heldout = conll(dir.path(), "heldout.txt", 100, 3);
    let mut spec = structured_spec(calib, 0.5);
    spec.calibration.heldout = Some(heldout);
    spec.calibration.heldout_sentences = 512;
    let out = prune_structured::apply(&ckpt, &spec).unwrap();
    let before = Flops::of_arch(&ckpt.arch, 128).per_token as f64;
    let after = Flops::of_arch(&out.checkpoint.arch, 128).per_token as f64;
    assert!(
        after <= 0.5 * before && after > 0.4 * before,
        "{after} / {before}"
    );
    let pruned = out.report["heldout_layer_error_pruned"]
        .as_array()
        .unwrap()
        .clone();
    let refit = out.report["heldout_layer_error_reconstructed"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(pruned.len(), 3);
    for (p, r) in pruned.iter().zip(&refit) {
        let (p, r) = (p.as_f64().unwrap(), r.as_f64().unwrap());
        assert!(
            r < p,
            "held-out error {r} after reconstruction, {p} before: {}",
            out.report
        );
    }
    let blocks = out.report["reconstruction"]["blocks"].as_array().unwrap();
    assert_eq!(blocks.len(), 6);

    // A parameter budget on the same model.
    let limit = Budget::of_arch(&ckpt.arch).unique - 1500;
    let spec = prune_structured::Spec {
        flops: None,
        params: Some(limit.to_string()),
        no_reconstruct: true,
        ..spec
    };
    let out = prune_structured::apply(&ckpt, &spec).unwrap();
    let unique = Budget::of_arch(&out.checkpoint.arch).unique;
    assert!(
        unique <= limit && unique > limit - 200,
        "{unique} vs {limit}"
    );
}

#[test]
fn structured_pruning_cuts_low_rank_and_shared_layers_and_layers_missing_heads() {
    let dir = tempdir();
    let calib = conll(dir.path(), "calib.txt", 60, 4);
    let mut ckpt = shared(87);
    let heads = heads_spec("2:0,1");
    ckpt = surgery::cuts::remove_heads::apply(&ckpt, &heads)
        .unwrap()
        .checkpoint;
    let low = lowrank_layers::Spec {
        rank: Some(4),
        energy: None,
        params_target: None,
        modules: vec!["query".into(), "output".into()],
        layers: Some(vec![2]),
        method: lowrank_layers::Method::Svd,
        calibration: surgery::cuts::shared::calibrate::CalibOptions::new(None, 256),
    };
    ckpt = lowrank_layers::apply(&ckpt, &low).unwrap().checkpoint;
    let out = prune_structured::apply(&ckpt, &structured_spec(calib, 0.4)).unwrap();
    let before = Flops::of_arch(&ckpt.arch, 128).per_token as f64;
    let after = Flops::of_arch(&out.checkpoint.arch, 128).per_token as f64;
    assert!(after <= 0.4 * before, "{after} / {before}");
    let skipped = out.report["reconstruction"]["skipped"].to_string();
    assert!(skipped.contains("shared by 2 layers"), "{skipped}");
    assert!(skipped.contains("low_rank"), "{skipped}");
    // The result runs and saves.
    let path = save(&out.checkpoint, dir.path(), "out");
    logits(&Checkpoint::open(&path).unwrap(), None);
}

#[test]
fn impossible_budgets_empty_calibration_and_missing_classifiers_exit_2() {
    let dir = tempdir();
    let ckpt = tiny_checkpoint(tiny_config(), Layout::Bare, 88);
    let input = save(&ckpt, dir.path(), "in");
    let calib = conll(dir.path(), "calib.txt", 20, 5);
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let run = |flops: &str, calib: &Path, out: &str| {
        surgery(&[
            "prune-structured",
            input.to_str().unwrap(),
            dir.path().join(out).to_str().unwrap(),
            "--flops",
            flops,
            "--calib",
            calib.to_str().unwrap(),
        ])
    };
    let r = run("0.001", &calib, "a");
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("single attention head"), "{}", r.stderr);
    let r = run("0.5", &empty, "b");
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("empty.txt"), "{}", r.stderr);
    let r = run("1.5", &calib, "c");
    assert_eq!(r.code, 2, "{}", r.stderr);
    let r = run("0.5", &calib, "d");
    assert_eq!(r.code, 0, "{}", r.stderr);
    for out in ["a", "b", "c"] {
        assert!(!dir.path().join(out).exists());
    }

    let bare = surgery::model::generate::random_checkpoint(
        tiny_config(),
        Layout::Bare,
        false,
        false,
        0.3,
        1,
    )
    .unwrap();
    let bare_path = save(&bare, dir.path(), "bare");
    let r = surgery(&[
        "prune-structured",
        bare_path.to_str().unwrap(),
        dir.path().join("e").to_str().unwrap(),
        "--flops",
        "0.5",
        "--calib",
        calib.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("no classifier"), "{}", r.stderr);
}

#[test]
fn a_global_neuron_plan_has_the_size_apply_makes() {
    let ckpt = tiny_checkpoint(tiny_config(), Layout::Bare, 89);
    let spec = prune_neurons::Spec {
        keep: None,
        keep_ratio: Some(0.3),
        ..neuron_spec(0)
    };
    let out = prune_neurons::apply(&ckpt, &spec).unwrap();
    let surgery::cuts::Planned::Exact(planned) = prune_neurons::plan(&ckpt.arch, &spec).unwrap()
    else {
        panic!("a global plan on equal layers is exact in size")
    };
    assert_eq!(
        Budget::of_arch(&planned).unique,
        Budget::of_arch(&out.checkpoint.arch).unique
    );
    let kept: usize = out
        .checkpoint
        .arch
        .layers
        .iter()
        .map(|l| l.intermediate)
        .sum();
    assert_eq!(kept, 22); // round(0.3 · 72)
                          // Uniform and equal in every layer: a plain config (HF loads it).
    let uniform = prune_neurons::apply(
        &ckpt,
        &prune_neurons::Spec {
            uniform: true,
            ..spec
        },
    )
    .unwrap();
    assert_eq!(uniform.checkpoint.config.intermediate_size, 7);
    assert!(uniform.report["notes"]
        .to_string()
        .contains("plain BertConfig"));
    let dir = tempdir();
    let path = save(&uniform.checkpoint, dir.path(), "u");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["intermediate_size"], 7);
    assert!(config["surgery"]["layers"].is_null(), "{config}");
}

#[test]
fn onnx_runtime_runs_layers_without_neurons_or_heads() {
    if !crate::export::onnxruntime_available() {
        return;
    }
    let dir = tempdir();
    let mut ckpt = tiny_checkpoint(tiny_config(), Layout::BertPrefixed, 90);
    silence_neurons(&mut ckpt, 2, &(0..24).collect::<Vec<_>>());
    let calib = conll(dir.path(), "calib.txt", 40, 6);
    let neurons = prune_neurons::apply(&ckpt, &neuron_spec(72 - 24 - 5))
        .unwrap()
        .checkpoint;
    assert_eq!(neurons.arch.layers[2].intermediate, 0);
    let heads = heads_spec("1:0,1,2,3;0:2");
    let cut = surgery::cuts::remove_heads::apply(&neurons, &heads)
        .unwrap()
        .checkpoint;
    let refit = prune_structured::apply(&cut, &structured_spec(calib, 0.9))
        .unwrap()
        .checkpoint;
    let sentences = dir.path().join("sentences.txt");
    std::fs::write(
        &sentences,
        "John Smith lives in Berlin .\nMary works for Acme in Paris .\n",
    )
    .unwrap();
    for (name, model) in [("neurons-heads", &cut), ("structured", &refit)] {
        let path = save(model, dir.path(), name);
        let forward = dir.path().join(format!("{name}.safetensors"));
        let r = surgery(&[
            "forward",
            path.to_str().unwrap(),
            "--input",
            sentences.to_str().unwrap(),
            "--out",
            forward.to_str().unwrap(),
        ]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let export = dir.path().join(format!("{name}-onnx"));
        crate::export::export(&path, &export, &[]);
        let result = crate::export::ort_logits(&export, &forward, 1e-4);
        assert_eq!(result["checker"], "ok", "{name}: {result}");
        assert_eq!(result["argmax_agreement"], 1.0, "{name}: {result}");
    }
}

#[test]
fn prune_neurons_uniform_keeps_exactly_the_count_asked() {
    let dir = tempdir();
    let m = model(dir.path()); // 3 layers of 24 neurons
    for keep in ["3", "4", "70"] {
        let out = dir.path().join(format!("keep{keep}"));
        let r = surgery(&[
            "prune-neurons",
            s(&m),
            s(&out),
            "--keep",
            keep,
            "--uniform",
            "--by",
            "magnitude",
        ]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let r = surgery(&["inspect", s(&out), "--json"]);
        let json: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        let kept: u64 = json["budget"]["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["intermediate"].as_u64().unwrap())
            .sum();
        assert_eq!(kept.to_string(), keep);
    }
}

/// The calibration options every calibrated cut shares: a cut that solves nothing reports the
/// held-out layer errors too (none when it removes nothing), and refuses `--damp` rather than
/// ignoring it.
#[test]
fn cuts_that_solve_nothing_report_heldout_errors_and_refuse_damp() {
    let ckpt = tiny_checkpoint(tiny_config(), Layout::Bare, 90);
    let dir = tempdir();
    let heldout = conll(dir.path(), "heldout.txt", 20, 5);
    let mut spec = neuron_spec(36);
    spec.calibration.heldout = Some(heldout);
    let out = prune_neurons::apply(&ckpt, &spec).unwrap();
    let errors = out.report["heldout_layer_error"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(errors.len(), 3);
    assert!(
        errors.iter().any(|e| e.as_f64().unwrap() > 0.0),
        "{errors:?}"
    );
    let all = prune_neurons::apply(
        &ckpt,
        &prune_neurons::Spec {
            calibration: spec.calibration.clone(),
            ..neuron_spec(72)
        },
    )
    .unwrap();
    let errors = all.report["heldout_layer_error"]
        .as_array()
        .unwrap()
        .clone();
    assert!(errors.iter().all(|e| e.as_f64() == Some(0.0)), "{errors:?}");
    spec.calibration.damp = Some(0.1);
    let e = prune_neurons::apply(&ckpt, &spec)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("--damp"), "{e}");
}
