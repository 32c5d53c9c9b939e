//! Structural surgeries: exact where they should be exact, counted right, and refusing bad specs.

use candle_core::{Device, Tensor};
use surgery::arch::{EmbeddingKind, Key, Layout};
use surgery::cuts::{drop_layers, factorize_embeddings, move_to_layer, tie_layers};
use surgery::eval::infer::{load_model, make_batch};
use surgery::io::Checkpoint;
use surgery::model::{Mode, Outputs};

use crate::util::{
    join_safetensors, max_abs_diff, model, refused_cleanly, s, save, split_safetensors, surgery,
    tempdir, tiny_checkpoint, tiny_config,
};

const CPU: Device = Device::Cpu;

fn run(ckpt: &Checkpoint) -> surgery::model::ForwardOutput {
    let ids = vec![vec![2, 10, 20, 30, 40, 50, 3], vec![2, 11, 21, 3, 0, 0, 0]];
    let mask = vec![vec![1; 7], vec![1, 1, 1, 1, 0, 0, 0]];
    let batch = make_batch(&ids, &mask, &CPU).unwrap();
    let outputs = Outputs {
        hidden_states: true,
        ..Default::default()
    };
    load_model(ckpt, &CPU)
        .unwrap()
        .forward(&batch, &mut Mode::Eval, outputs)
        .unwrap()
}

fn logits_diff(a: &Checkpoint, b: &Checkpoint) -> f32 {
    max_abs_diff(
        run(a).logits.as_ref().unwrap(),
        run(b).logits.as_ref().unwrap(),
    )
}

#[test]
fn factorizing_an_exactly_low_rank_table_keeps_the_outputs() {
    let mut ckpt = tiny_checkpoint(tiny_config(), Layout::Bare, 41);
    let w = crate::util::random_tensor(&[177, 4], 1)
        .matmul(&crate::util::random_tensor(&[4, 16], 2))
        .unwrap();
    ckpt.set_tensor(Key::WordEmbeddings, w);
    let out = factorize_embeddings::apply(&ckpt, &factorize_embeddings::Spec { rank: 4 }).unwrap();
    assert!(out.report["relative_frobenius_error"].as_f64().unwrap() < 1e-5);
    assert_eq!(
        out.checkpoint.arch.embeddings,
        EmbeddingKind::Factorized { rank: 4 }
    );
    assert!(logits_diff(&ckpt, &out.checkpoint) < 1e-4);
    assert_eq!(
        out.entry.params_before - out.entry.params_after,
        (177 * 16 - (177 * 4 + 4 * 16)) as u64
    );
}

#[test]
fn factorizing_reports_the_error_it_makes_and_refuses_bad_ranks() {
    let ckpt = tiny_checkpoint(tiny_config(), Layout::BertPrefixed, 42);
    let out = factorize_embeddings::apply(&ckpt, &factorize_embeddings::Spec { rank: 8 }).unwrap();
    let w = ckpt.tensor(Key::WordEmbeddings, &CPU).unwrap();
    let a = out.checkpoint.tensor(Key::WordEmbeddings, &CPU).unwrap();
    let p = out.checkpoint.tensor(Key::WordProjection, &CPU).unwrap();
    let approx = a.matmul(&p.t().unwrap()).unwrap();
    let norm = |t: &Tensor| {
        t.sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .sqrt() as f64
    };
    let measured = norm(&(&w - &approx).unwrap()) / norm(&w);
    let reported = out.report["relative_frobenius_error"].as_f64().unwrap();
    assert!(
        (measured - reported).abs() < 1e-4,
        "{measured} vs {reported}"
    );
    for rank in [0, 16, 100] {
        let err = factorize_embeddings::apply(&ckpt, &factorize_embeddings::Spec { rank })
            .err()
            .unwrap();
        assert!(err.to_string().contains("--rank"), "{err}");
    }
    // Factorizing again: a smaller rank works, a larger one is refused.
    let twice =
        factorize_embeddings::apply(&out.checkpoint, &factorize_embeddings::Spec { rank: 4 })
            .unwrap();
    assert_eq!(
        twice.checkpoint.arch.embeddings,
        EmbeddingKind::Factorized { rank: 4 }
    );
    let err =
        factorize_embeddings::apply(&out.checkpoint, &factorize_embeddings::Spec { rank: 12 })
            .err()
            .unwrap();
    assert!(
        err.to_string().contains("already factorized at rank 8"),
        "{err}"
    );
}

fn with_identical_layers(seed: u64) -> Checkpoint {
    let mut ckpt = tiny_checkpoint(tiny_config(), Layout::Bare, seed);
    for (key, _) in ckpt.arch.layer_tensors(0) {
        let t = ckpt.tensor(key, &CPU).unwrap();
        for l in [1, 2] {
            ckpt.set_tensor(move_to_layer(key, l), t.clone());
        }
    }
    ckpt
}

#[test]
fn tying_identical_layers_changes_nothing_and_counts_them_once() {
    let ckpt = with_identical_layers(43);
    let spec = tie_layers::Spec {
        groups: None,
        share_all: true,
        init: tie_layers::Init::Mean,
    };
    let out = tie_layers::apply(&ckpt, &spec).unwrap();
    assert_eq!(out.checkpoint.arch.layer_map, vec![0, 0, 0]);
    // (a + a + a) / 3 equals a up to f32 rounding.
    let d = logits_diff(&ckpt, &out.checkpoint);
    assert!(d < 1e-5, "{d}");
    let per_layer: u64 = ckpt
        .arch
        .layer_tensors(0)
        .iter()
        .map(|(_, s)| s.iter().product::<usize>() as u64)
        .sum();
    assert_eq!(
        out.entry.params_before - out.entry.params_after,
        2 * per_layer
    );
}

#[test]
fn tied_weights_are_the_mean_or_the_first_member() {
    let ckpt = tiny_checkpoint(tiny_config(), Layout::Bare, 44);
    let key = Key::LayerNorm {
        layer: 0,
        slot: surgery::arch::LayerNormSlot::Output,
        part: surgery::arch::NormPart::Weight,
    };
    let value = |c: &Checkpoint, l: usize| c.tensor(move_to_layer(key, l), &CPU).unwrap();
    for (init, expected) in [
        (
            tie_layers::Init::Mean,
            ((value(&ckpt, 1) + value(&ckpt, 2)).unwrap() / 2.0).unwrap(),
        ),
        (tie_layers::Init::First, value(&ckpt, 1)),
    ] {
        let spec = tie_layers::Spec {
            groups: Some("1-2".into()),
            share_all: false,
            init,
        };
        let out = tie_layers::apply(&ckpt, &spec).unwrap();
        assert_eq!(out.checkpoint.arch.layer_map, vec![0, 1, 1]);
        assert!(max_abs_diff(&value(&out.checkpoint, 1), &expected) < 1e-6);
        assert_eq!(
            max_abs_diff(&value(&out.checkpoint, 0), &value(&ckpt, 0)),
            0.0
        );
    }
}

#[test]
fn bad_groups_are_refused() {
    let ckpt = tiny_checkpoint(tiny_config(), Layout::Bare, 45);
    for (groups, needle) in [
        ("0-3", "layer 3 does not exist"),
        ("0-1,1-2", "in two groups"),
        ("2-1", "empty range"),
        ("a-b", "not a layer range"),
    ] {
        let spec = tie_layers::Spec {
            groups: Some(groups.into()),
            share_all: false,
            init: Default::default(),
        };
        let err = tie_layers::apply(&ckpt, &spec).err().unwrap().to_string();
        assert!(err.contains(needle), "{groups}: {err}");
    }
    // Layers of different shapes cannot share.
    let dropped = drop_layers::apply(
        &ckpt,
        &drop_layers::Spec {
            keep: vec![0, 1, 2],
        },
    )
    .unwrap()
    .checkpoint;
    let mut config = dropped.config.clone();
    let mut arch = dropped.arch.clone();
    arch.layers[1].intermediate = 8;
    config.surgery = arch.surgery_info(vec![], &config);
    let mut tensors = std::collections::BTreeMap::new();
    for (key, shape) in arch.expected_tensors() {
        tensors.insert(
            key,
            Tensor::zeros(shape, candle_core::DType::F32, &CPU).unwrap(),
        );
    }
    let odd = Checkpoint::from_tensors(config, Layout::Bare, tensors).unwrap();
    let spec = tie_layers::Spec {
        groups: None,
        share_all: true,
        init: Default::default(),
    };
    let err = tie_layers::apply(&odd, &spec).err().unwrap().to_string();
    assert!(err.contains("different structure"), "{err}");
}

#[test]
fn dropping_layers_keeps_the_prefix_computation() {
    let ckpt = tiny_checkpoint(tiny_config(), Layout::BertPrefixed, 46);
    let out = drop_layers::apply(&ckpt, &drop_layers::Spec { keep: vec![0, 1] }).unwrap();
    assert_eq!(out.checkpoint.arch.num_layers(), 2);
    let (full, cut) = (run(&ckpt), run(&out.checkpoint));
    assert!(max_abs_diff(&full.hidden_states[2], &cut.last_hidden_state) < 1e-6);
    for keep in [vec![0, 3], vec![2, 1], vec![]] {
        assert!(drop_layers::apply(&ckpt, &drop_layers::Spec { keep }).is_err());
    }
}

#[test]
fn the_cli_applies_surgeries_appends_history_and_never_overwrites() {
    let dir = tempdir();
    let input = save(
        &tiny_checkpoint(tiny_config(), Layout::Bare, 47),
        dir.path(),
        "in",
    );
    let before = std::fs::read(input.join("model.safetensors")).unwrap();
    let f = dir.path().join("f");
    let r = surgery(&[
        "factorize-embeddings",
        input.to_str().unwrap(),
        f.to_str().unwrap(),
        "--rank",
        "6",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("retained_energy"), "{}", r.stdout);
    let t = dir.path().join("t");
    let r = surgery(&[
        "tie-layers",
        f.to_str().unwrap(),
        t.to_str().unwrap(),
        "--groups",
        "0-1",
        "--json",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let tied = Checkpoint::open(&t).unwrap();
    let ops: Vec<String> = tied.history().into_iter().map(|h| h.op).collect();
    assert_eq!(ops, vec!["factorize-embeddings", "tie-layers"]);
    assert_eq!(tied.arch.layer_map, vec![0, 0, 1]);
    // Existing output: refused, untouched; bad spec: exit 2 and nothing written.
    let r = surgery(&[
        "drop-layers",
        t.to_str().unwrap(),
        f.to_str().unwrap(),
        "--keep",
        "0",
    ]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("already exists"));
    let d = dir.path().join("d");
    let r = surgery(&[
        "drop-layers",
        t.to_str().unwrap(),
        d.to_str().unwrap(),
        "--keep",
        "7",
    ]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("layer 7 does not exist"), "{}", r.stderr);
    assert!(!d.exists());
    assert_eq!(
        std::fs::read(input.join("model.safetensors")).unwrap(),
        before
    );
}

#[test]
fn pruning_the_vocabulary_keeps_outputs_on_the_corpus() {
    let dir = tempdir();
    let ckpt = tiny_checkpoint(tiny_config(), Layout::Bare, 48);
    let input = save(&ckpt, dir.path(), "in");
    let corpus = dir.path().join("corpus.txt");
    std::fs::write(
        &corpus,
        "Maria B-PER\nflew O\nfrom O\nLisbon B-LOC\n\nAcme B-ORG\nRobotics I-ORG\n",
    )
    .unwrap();
    let sentences = dir.path().join("sentences.txt");
    std::fs::write(&sentences, "Maria flew from Lisbon\nAcme Robotics\n").unwrap();
    let spec = surgery::cuts::prune_vocab::Spec {
        corpus: vec![corpus.clone()],
        coverage: vec![corpus],
    };
    let out = surgery::cuts::prune_vocab::apply(&Checkpoint::open(&input).unwrap(), &spec).unwrap();
    let kept = out.report["pieces_after"].as_u64().unwrap() as usize;
    assert!(
        kept < 177 && kept == out.checkpoint.arch.vocab,
        "{}",
        out.report
    );
    assert_eq!(out.report["coverage_sentences"], 1.0);
    let pruned = dir.path().join("pruned");
    out.save(&pruned, false).unwrap();
    let forward = |ckpt: &std::path::Path, name: &str| {
        let path = dir.path().join(name);
        let r = surgery(&[
            "forward",
            ckpt.to_str().unwrap(),
            "--input",
            sentences.to_str().unwrap(),
            "--out",
            path.to_str().unwrap(),
        ]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let store = surgery::io::TensorStore::open_files(&[path]).unwrap();
        (
            store.bytes("input_ids").unwrap().to_vec(),
            store.load_f32("logits", &CPU).unwrap(),
        )
    };
    let (ids_before, logits_before) = forward(&input, "a.safetensors");
    let (ids_after, logits_after) = forward(&pruned, "b.safetensors");
    assert_ne!(ids_before, ids_after, "ids are renumbered");
    assert_eq!(max_abs_diff(&logits_before, &logits_after), 0.0);
    // Single characters survive, so unseen words still tokenise.
    let tok = surgery::data::tokenize::WordTokenizer::from_checkpoint(
        &Checkpoint::open(&pruned).unwrap(),
    )
    .unwrap();
    let unk = tok.unk_id();
    assert!(tok
        .encode_words(&["Zwingmann"])
        .unwrap()
        .ids
        .iter()
        .all(|&i| i != unk));
}

#[test]
fn pruning_without_a_tokenizer_is_refused() {
    let mut ckpt = tiny_checkpoint(tiny_config(), Layout::Bare, 49);
    ckpt.tokenizer_files.clear();
    let spec = surgery::cuts::prune_vocab::Spec {
        corpus: vec!["x.txt".into()],
        coverage: vec![],
    };
    let err = surgery::cuts::prune_vocab::apply(&ckpt, &spec)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("tokenizer.json"), "{err}");
}

mod lowrank {
    use super::*;
    use surgery::arch::{LinearKind, LinearPart, LinearSlot};
    use surgery::cuts::lowrank_layers::{apply, Method, Spec};

    fn spec(rank: Option<usize>, method: Method, calib: Option<std::path::PathBuf>) -> Spec {
        Spec {
            rank,
            energy: None,
            params_target: None,
            modules: vec!["query".into(), "intermediate".into(), "output".into()],
            layers: None,
            method,
            calibration: surgery::cuts::shared::calibrate::CalibOptions::new(calib, 256),
        }
    }

    /// A CoNLL calibration file made of the parity sentences (words the tiny tokenizer knows).
    fn calib_file(dir: &std::path::Path) -> std::path::PathBuf {
        let text =
            std::fs::read_to_string(crate::util::repo().join("fixtures/parity/sentences.txt"))
                .unwrap();
        let mut conll = String::new();
        for line in text.lines() {
            for w in line.split(' ') {
                conll.push_str(&format!("{w} O\n"));
            }
            conll.push('\n');
        }
        let path = dir.join("calib.txt");
        std::fs::write(&path, conll).unwrap();
        path
    }

    #[test]
    fn an_exactly_low_rank_linear_is_factorized_without_change() {
        let mut ckpt = tiny_checkpoint(tiny_config(), Layout::Bare, 51);
        for layer in 0..3 {
            for (slot, out, inp) in [
                (LinearSlot::Query, 16, 16),
                (LinearSlot::Intermediate, 24, 16),
                (LinearSlot::Output, 16, 24),
            ] {
                let w = crate::util::random_tensor(&[out, 2], layer as u64 * 10 + out as u64)
                    .matmul(&crate::util::random_tensor(&[2, inp], 99 + layer as u64))
                    .unwrap();
                ckpt.set_tensor(
                    Key::Linear {
                        layer,
                        slot,
                        part: LinearPart::Weight,
                    },
                    (w * 0.3).unwrap(),
                );
            }
        }
        let out = apply(&ckpt, &spec(Some(2), Method::Svd, None)).unwrap();
        assert_eq!(
            out.checkpoint.arch.layers[1].linear(LinearSlot::Query),
            LinearKind::LowRank { rank: 2 }
        );
        assert!(logits_diff(&ckpt, &out.checkpoint) < 1e-4);
        let dense = 16 * 16 + 24 * 16 + 16 * 24;
        let low = 2 * (16 + 16) + 2 * (24 + 16) + 2 * (16 + 24);
        assert_eq!(
            out.entry.params_before - out.entry.params_after,
            3 * (dense - low) as u64
        );
    }

    #[test]
    fn whitening_fits_the_calibration_outputs_better_than_plain_svd() {
        let dir = tempdir();
        let ckpt = tiny_checkpoint(tiny_config(), Layout::Bare, 52);
        let calib = calib_file(dir.path());
        use surgery::cuts::shared::calibrate::{CalibOptions, Calibrator, Tags};
        let options = CalibOptions::new(Some(calib.clone()), 256);
        let calibrator = Calibrator::open(&ckpt, &options, Some(Tags::Ignored)).unwrap();
        let stats = calibrator.grams("the test").unwrap();
        let plain = apply(&ckpt, &spec(Some(3), Method::Svd, None))
            .unwrap()
            .checkpoint;
        let white = apply(&ckpt, &spec(Some(3), Method::Whiten, Some(calib)))
            .unwrap()
            .checkpoint;
        // Output error ‖(W − Ŵ) Xᵀ‖² = tr(Δ C Δᵀ) with C = XᵀX, for every factorized linear.
        let gram_error = |c: &Checkpoint, layer: usize, slot: LinearSlot| -> f64 {
            let key = |part| Key::Linear { layer, slot, part };
            let approx = c
                .tensor(key(LinearPart::Up), &CPU)
                .unwrap()
                .matmul(&c.tensor(key(LinearPart::Down), &CPU).unwrap())
                .unwrap();
            let delta = surgery::cuts::shared::linalg::to_mat(
                &(ckpt.tensor(key(LinearPart::Weight), &CPU).unwrap() - approx).unwrap(),
            )
            .unwrap();
            let g = &stats.grams[&(layer, surgery::cuts::shared::calibrate::Input::of(slot))];
            let m: faer::Mat<f64> = &delta * g * delta.transpose();
            (0..m.nrows()).map(|i| m[(i, i)]).sum()
        };
        for layer in 0..3 {
            for slot in [
                LinearSlot::Query,
                LinearSlot::Intermediate,
                LinearSlot::Output,
            ] {
                let (p, w) = (
                    gram_error(&plain, layer, slot),
                    gram_error(&white, layer, slot),
                );
                assert!(
                    w <= p * 1.001,
                    "layer {layer} {slot:?}: whitened {w} vs plain {p}"
                );
            }
        }
    }

    #[test]
    fn targets_and_bad_specs() {
        let dir = tempdir();
        let ckpt = tiny_checkpoint(tiny_config(), Layout::Bare, 53);
        // A target below the model's size (a target above it is refused: nothing to do).
        let size = surgery::budget::Budget::of_checkpoint(&ckpt)
            .unwrap()
            .unique;
        let target = size * 8 / 10;
        let mut s = spec(None, Method::Svd, None);
        s.params_target = Some(target.to_string());
        let out = apply(&ckpt, &s).unwrap();
        assert!(
            out.entry.params_after <= target,
            "{}",
            out.entry.params_after
        );
        s.params_target = Some(size.to_string());
        assert!(apply(&ckpt, &s).is_err());
        let mut s = spec(None, Method::Svd, None);
        s.energy = Some(0.5);
        assert!(apply(&ckpt, &s).unwrap().entry.params_after < out.entry.params_before);
        for (bad, needle) in [
            (
                spec(Some(9), Method::Svd, None),
                "saves parameters only below rank",
            ),
            (spec(Some(2), Method::Whiten, None), "needs --calib"),
        ] {
            let err = apply(&ckpt, &bad).err().unwrap().to_string();
            assert!(err.contains(needle), "{err}");
        }
        let twice = apply(
            &apply(&ckpt, &spec(Some(2), Method::Svd, None))
                .unwrap()
                .checkpoint,
            &spec(Some(2), Method::Svd, None),
        );
        assert!(twice
            .err()
            .unwrap()
            .to_string()
            .contains("already low_rank(2)"));
        // Fewer calibration sentences than asked: use what there is and say so.
        let mut s = spec(Some(2), Method::Whiten, Some(calib_file(dir.path())));
        s.calibration.calib_sentences = 1000;
        let out = apply(&ckpt, &s).unwrap();
        assert!(out.report["note"]
            .as_str()
            .unwrap()
            .contains("fewer than the 1000 asked"));
    }
}

#[test]
fn prune_vocab_options_do_not_swallow_the_positional_folders() {
    // Regression: `--corpus A --coverage B IN OUT` once read IN and OUT as more coverage files.
    let dir = tempdir();
    let input = save(
        &tiny_checkpoint(tiny_config(), Layout::Bare, 50),
        dir.path(),
        "in",
    );
    let corpus = dir.path().join("c.txt");
    std::fs::write(&corpus, "EU B-ORG\n").unwrap();
    let out = dir.path().join("out");
    let r = surgery(&[
        "prune-vocab",
        "--corpus",
        corpus.to_str().unwrap(),
        "--coverage",
        corpus.to_str().unwrap(),
        input.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(out.join("tokenizer.json").exists());
}

#[test]
fn an_svd_that_cannot_be_computed_names_its_tensor() {
    let dir = tempdir();
    let m = model(dir.path());
    let factorized = dir.path().join("f8");
    let r = surgery(&["factorize-embeddings", s(&m), s(&factorized), "--rank", "8"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // Finite factors whose product overflows f32: the table cannot be factorized again.
    let file = factorized.join("model.safetensors");
    let (header, mut data) = split_safetensors(&file);
    for name in [
        "embeddings.word_embeddings.weight",
        "embeddings.word_projection.weight",
    ] {
        let name = header
            .keys()
            .find(|k| k.ends_with(name) || k.as_str() == name)
            .unwrap_or_else(|| panic!("{name} in {:?}", header.keys().collect::<Vec<_>>()));
        let [a, b] = [0, 1].map(|i| header[name]["data_offsets"][i].as_u64().unwrap() as usize);
        for chunk in data[a..b].chunks_exact_mut(4) {
            chunk.copy_from_slice(&1e30f32.to_le_bytes());
        }
    }
    join_safetensors(&file, &header, &data);
    let out = dir.path().join("f4");
    let r = surgery(&[
        "factorize-embeddings",
        s(&factorized),
        s(&out),
        "--rank",
        "4",
    ]);
    refused_cleanly(&r, "SVD of `embeddings.word_embeddings.weight`");
    assert!(r.stderr.contains("non-finite"), "{}", r.stderr);
    assert!(!out.exists());
}
