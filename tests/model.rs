//! The candle model: every structure variant gives the output its dense equivalent gives, every
//! parameter of every variant receives a gradient, dropout drops in training only, padding is
//! masked.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor, Var};
use surgery::arch::{
    EmbeddingKind, Key, LayerInfo, Layout, LinearKind, LinearPart, LinearSlot, SparsePattern,
    SurgeryInfo,
};
use surgery::eval::infer::{load_model, make_batch};
use surgery::io::Checkpoint;
use surgery::kernels::Kernels;
use surgery::model::{dropouts_of, Bert, ForwardOutput, Mode, Outputs, Params};
use surgery::util::rng::Rng;

use crate::util::{max_abs_diff, tiny_checkpoint, tiny_config};

const CPU: Device = Device::Cpu;

fn random(shape: &[usize], seed: u64, std: f32) -> Tensor {
    let mut rng = Rng::new(seed);
    let v: Vec<f32> = (0..shape.iter().product())
        .map(|_| rng.normal() * std)
        .collect();
    Tensor::from_vec(v, shape, &CPU).unwrap()
}

/// Two sentences of different lengths (7 and 4 tokens), padded.
fn batch() -> surgery::model::Batch {
    let ids = vec![vec![2, 10, 20, 30, 40, 50, 3], vec![2, 11, 21, 3, 0, 0, 0]];
    let mask = vec![vec![1; 7], vec![1, 1, 1, 1, 0, 0, 0]];
    make_batch(&ids, &mask, &CPU).unwrap()
}

fn run(ckpt: &Checkpoint) -> ForwardOutput {
    let model = load_model(ckpt, &CPU).unwrap();
    let outputs = Outputs {
        hidden_states: true,
        attentions: true,
        linear_inputs: false,
    };
    model.forward(&batch(), &mut Mode::Eval, outputs).unwrap()
}

/// All tensors of `base`, with `changes` applied, under a new `"surgery"` structure.
fn restructure(base: &Checkpoint, info: SurgeryInfo, changes: Vec<(Key, Tensor)>) -> Checkpoint {
    let mut tensors: BTreeMap<Key, Tensor> = base
        .arch
        .expected_tensors()
        .into_iter()
        .map(|(k, _)| (k, base.tensor(k, &CPU).unwrap()))
        .collect();
    tensors.extend(changes);
    let mut config = base.config.clone();
    config.surgery = Some(info);
    Checkpoint::from_tensors(config, base.arch.layout, tensors).unwrap()
}

fn info() -> SurgeryInfo {
    SurgeryInfo {
        format_version: 1,
        ..Default::default()
    }
}

fn layers(specs: Vec<(usize, Vec<(&str, LinearKind)>)>) -> Option<Vec<LayerInfo>> {
    Some(
        specs
            .into_iter()
            .map(|(heads, linears)| LayerInfo {
                num_heads: heads,
                intermediate_size: None,
                linears: linears
                    .into_iter()
                    .map(|(s, k)| (s.to_string(), k))
                    .collect(),
            })
            .collect(),
    )
}

fn assert_same_output(a: &ForwardOutput, b: &ForwardOutput, tol: f32) {
    let d = max_abs_diff(a.logits.as_ref().unwrap(), b.logits.as_ref().unwrap());
    assert!(d < tol, "logits differ by {d}");
    let d = max_abs_diff(&a.last_hidden_state, &b.last_hidden_state);
    assert!(d < tol, "hidden states differ by {d}");
}

#[test]
fn factorized_embeddings_equal_the_dense_product() {
    let base = tiny_checkpoint(tiny_config(), Layout::Bare, 21);
    let (v, h, e) = (177, 16, 5);
    let a = random(&[v, e], 1, 1.0);
    let p = random(&[h, e], 2, 0.3);
    let dense_w = a.matmul(&p.t().unwrap()).unwrap();
    let dense = restructure(&base, info(), vec![(Key::WordEmbeddings, dense_w)]);
    let factorized = restructure(
        &base,
        SurgeryInfo {
            embeddings: EmbeddingKind::Factorized { rank: e },
            ..info()
        },
        vec![(Key::WordEmbeddings, a), (Key::WordProjection, p)],
    );
    assert_same_output(&run(&dense), &run(&factorized), 1e-4);
}

#[test]
fn low_rank_linears_equal_the_dense_product() {
    let base = tiny_checkpoint(tiny_config(), Layout::BertPrefixed, 22);
    let key = |slot, part| Key::Linear {
        layer: 1,
        slot,
        part,
    };
    let (up, down) = (random(&[24, 3], 3, 0.5), random(&[3, 16], 4, 0.5));
    let w = up.matmul(&down).unwrap();
    let dense = restructure(
        &base,
        info(),
        vec![(key(LinearSlot::Intermediate, LinearPart::Weight), w)],
    );
    let low_rank = restructure(
        &base,
        SurgeryInfo {
            layers: layers(vec![
                (4, vec![]),
                (4, vec![("intermediate", LinearKind::LowRank { rank: 3 })]),
                (4, vec![]),
            ]),
            ..info()
        },
        vec![
            (key(LinearSlot::Intermediate, LinearPart::Up), up),
            (key(LinearSlot::Intermediate, LinearPart::Down), down),
        ],
    );
    assert_same_output(&run(&dense), &run(&low_rank), 1e-4);
}

#[test]
fn shared_layers_equal_copied_layers() {
    let base = tiny_checkpoint(tiny_config(), Layout::Bare, 23);
    // Copy stored layer 0 into layers 1 and 2 of a vanilla model...
    let mut copies = vec![];
    for (key, _) in base.arch.layer_tensors(0) {
        let t = base.tensor(key, &CPU).unwrap();
        for target in [1, 2] {
            let moved = match key {
                Key::Linear { slot, part, .. } => Key::Linear {
                    layer: target,
                    slot,
                    part,
                },
                Key::LayerNorm { slot, part, .. } => Key::LayerNorm {
                    layer: target,
                    slot,
                    part,
                },
                other => other,
            };
            copies.push((moved, t.clone()));
        }
    }
    let copied = restructure(&base, info(), copies);
    // ...and compare with one stored layer run three times.
    let shared = restructure(
        &base,
        SurgeryInfo {
            layer_map: Some(vec![0, 0, 0]),
            ..info()
        },
        vec![],
    );
    assert_eq!(shared.arch.layers.len(), 1);
    assert_same_output(&run(&copied), &run(&shared), 1e-5);
}

/// Keeps heads `keep` of a layer: slices Q/K/V rows and attention-output columns.
fn keep_heads(base: &Checkpoint, layer: usize, keep: &[usize]) -> Vec<(Key, Tensor)> {
    let d = base.arch.head_dim;
    let rows: Vec<u32> = keep
        .iter()
        .flat_map(|&h| (h * d..(h + 1) * d).map(|i| i as u32))
        .collect();
    let index = Tensor::from_vec(rows.clone(), rows.len(), &CPU).unwrap();
    let key = |slot, part| Key::Linear { layer, slot, part };
    let mut out = vec![];
    for slot in [LinearSlot::Query, LinearSlot::Key, LinearSlot::Value] {
        for part in [LinearPart::Weight, LinearPart::Bias] {
            let t = base.tensor(key(slot, part), &CPU).unwrap();
            let kept = if rows.is_empty() {
                Tensor::zeros(
                    [&[0usize][..], &t.dims()[1..]].concat(),
                    candle_core::DType::F32,
                    &CPU,
                )
                .unwrap()
            } else {
                t.index_select(&index, 0).unwrap()
            };
            out.push((key(slot, part), kept));
        }
    }
    let ao = base
        .tensor(key(LinearSlot::AttentionOutput, LinearPart::Weight), &CPU)
        .unwrap();
    let kept = if rows.is_empty() {
        Tensor::zeros((ao.dim(0).unwrap(), 0), candle_core::DType::F32, &CPU).unwrap()
    } else {
        ao.index_select(&index, 1).unwrap()
    };
    out.push((key(LinearSlot::AttentionOutput, LinearPart::Weight), kept));
    out
}

/// The unpruned model with the contributions of heads `drop` of a layer zeroed.
fn zero_heads(base: &Checkpoint, layer: usize, drop: &[usize]) -> Checkpoint {
    let d = base.arch.head_dim;
    let key = Key::Linear {
        layer,
        slot: LinearSlot::AttentionOutput,
        part: LinearPart::Weight,
    };
    let ao = base.tensor(key, &CPU).unwrap();
    let (out_dim, in_dim) = ao.dims2().unwrap();
    let mask: Vec<f32> = (0..out_dim * in_dim)
        .map(|i| {
            if drop.contains(&((i % in_dim) / d)) {
                0.0
            } else {
                1.0
            }
        })
        .collect();
    let mask = Tensor::from_vec(mask, (out_dim, in_dim), &CPU).unwrap();
    restructure(base, info(), vec![(key, (ao * mask).unwrap())])
}

#[test]
fn fewer_heads_equal_zeroed_head_contributions() {
    let base = tiny_checkpoint(tiny_config(), Layout::Bare, 24);
    let pruned = restructure(
        &base,
        SurgeryInfo {
            layers: layers(vec![(4, vec![]), (2, vec![]), (0, vec![])]),
            ..info()
        },
        [keep_heads(&base, 1, &[0, 3]), keep_heads(&base, 2, &[])].concat(),
    );
    let zeroed = zero_heads(&zero_heads(&base, 1, &[1, 2]), 2, &[0, 1, 2, 3]);
    let (a, b) = (run(&zeroed), run(&pruned));
    assert_same_output(&a, &b, 1e-4);
    assert_eq!(b.attentions[1].dims(), &[2, 2, 7, 7]);
    assert_eq!(b.attentions[2].dims(), &[2, 0, 7, 7]);
}

#[test]
fn outputs_have_hf_shapes_and_attention_ignores_padding() {
    let out = run(&tiny_checkpoint(tiny_config(), Layout::Bare, 25));
    assert_eq!(out.logits.as_ref().unwrap().dims(), &[2, 7, 5]);
    assert_eq!(out.hidden_states.len(), 4);
    assert_eq!(out.attentions.len(), 3);
    let probs = out.attentions[0].to_vec3::<f32>().err();
    assert!(probs.is_some(), "attentions are 4-d");
    let a = out.attentions[0].to_dtype(candle_core::DType::F32).unwrap();
    assert_eq!(a.dims(), &[2, 4, 7, 7]);
    // Rows sum to one; the second sentence gives no weight to its 3 pad keys.
    let sums = a
        .sum(3)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-5));
    let pad = a.narrow(0, 1, 1).unwrap().narrow(3, 4, 3).unwrap();
    assert_eq!(
        pad.abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap(),
        0.0
    );
}

#[test]
fn padding_does_not_change_real_positions() {
    let ckpt = tiny_checkpoint(tiny_config(), Layout::Bare, 26);
    let model = load_model(&ckpt, &CPU).unwrap();
    let alone = make_batch(&[vec![2, 11, 21, 3]], &[vec![1; 4]], &CPU).unwrap();
    let a = model
        .forward(&alone, &mut Mode::Eval, Outputs::default())
        .unwrap();
    let b = model
        .forward(&batch(), &mut Mode::Eval, Outputs::default())
        .unwrap();
    let padded = b
        .logits
        .unwrap()
        .narrow(0, 1, 1)
        .unwrap()
        .narrow(1, 0, 4)
        .unwrap();
    assert!(max_abs_diff(&a.logits.unwrap(), &padded) < 1e-5);
}

#[test]
fn dropout_drops_in_training_only_and_follows_the_seed() {
    let ckpt = tiny_checkpoint(tiny_config(), Layout::Bare, 27);
    let model = load_model(&ckpt, &CPU).unwrap();
    let logits = |mode: &mut Mode| {
        model
            .forward(&batch(), mode, Outputs::default())
            .unwrap()
            .logits
            .unwrap()
    };
    let eval = logits(&mut Mode::Eval);
    let train1 = logits(&mut Mode::Train(&mut Rng::new(1)));
    let train1_again = logits(&mut Mode::Train(&mut Rng::new(1)));
    let train2 = logits(&mut Mode::Train(&mut Rng::new(2)));
    assert!(max_abs_diff(&eval, &train1) > 1e-3);
    assert_eq!(max_abs_diff(&train1, &train1_again), 0.0);
    assert!(max_abs_diff(&train1, &train2) > 1e-3);
    assert_eq!(max_abs_diff(&eval, &logits(&mut Mode::Eval)), 0.0);
}

/// One backward pass with each kernel implementation; every non-empty parameter must receive a
/// non-zero gradient (an op without a backward would leave some without one).
fn assert_every_parameter_gets_a_gradient(ckpt: &Checkpoint) {
    for kernels in [Kernels::Fused, Kernels::Generic] {
        assert_every_parameter_gets_a_gradient_with(ckpt, kernels);
    }
}

fn assert_every_parameter_gets_a_gradient_with(ckpt: &Checkpoint, kernels: Kernels) {
    let params = Params::from_checkpoint(ckpt, &CPU).unwrap();
    let model = Bert::new(&ckpt.arch, &params, dropouts_of(&ckpt.config)).with_kernels(kernels);
    let mut rng = Rng::new(5);
    let out = model
        .forward(&batch(), &mut Mode::Train(&mut rng), Outputs::default())
        .unwrap();
    let logits = out.logits.unwrap();
    let probe = random(logits.dims(), 9, 1.0);
    let loss = (logits * probe).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let mut checked = 0;
    for (key, var) in params.vars() {
        let var: &Var = var;
        if var.elem_count() == 0 {
            continue;
        }
        let g = grads
            .get(var)
            .unwrap_or_else(|| panic!("{kernels:?}: no gradient for {key}"));
        let norm = g
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            norm > 0.0 && norm.is_finite(),
            "{kernels:?}: zero gradient for {key}"
        );
        checked += 1;
    }
    assert!(checked > 20);
}

#[test]
fn every_parameter_of_the_dense_model_gets_a_gradient() {
    assert_every_parameter_gets_a_gradient(&tiny_checkpoint(
        tiny_config(),
        Layout::BertPrefixed,
        28,
    ));
}

#[test]
fn every_parameter_of_every_variant_gets_a_gradient() {
    let mut config = tiny_config();
    config.num_hidden_layers = 4;
    let base = tiny_checkpoint(config, Layout::Bare, 29);
    let lin = |layer, slot, part, shape: &[usize], seed| {
        (Key::Linear { layer, slot, part }, random(shape, seed, 0.3))
    };
    let variant = restructure(
        &base,
        SurgeryInfo {
            embeddings: EmbeddingKind::Factorized { rank: 6 },
            layer_map: Some(vec![0, 1, 1, 2]),
            layers: layers(vec![
                (
                    4,
                    vec![
                        ("query", LinearKind::LowRank { rank: 3 }),
                        ("intermediate", LinearKind::LowRank { rank: 5 }),
                    ],
                ),
                (
                    4,
                    vec![(
                        "output",
                        LinearKind::Sparse {
                            pattern: SparsePattern::NofM { n: 2, m: 4 },
                        },
                    )],
                ),
                (0, vec![]),
            ]),
            ..info()
        },
        [
            vec![
                (Key::WordEmbeddings, random(&[177, 6], 30, 1.0)),
                (Key::WordProjection, random(&[16, 6], 31, 0.3)),
                lin(0, LinearSlot::Query, LinearPart::Down, &[3, 16], 32),
                lin(0, LinearSlot::Query, LinearPart::Up, &[16, 3], 33),
                lin(0, LinearSlot::Intermediate, LinearPart::Down, &[5, 16], 34),
                lin(0, LinearSlot::Intermediate, LinearPart::Up, &[24, 5], 35),
            ],
            keep_heads(&base, 2, &[]),
        ]
        .concat(),
    );
    assert_eq!(variant.arch.layers.len(), 3);
    assert_every_parameter_gets_a_gradient(&variant);
}
