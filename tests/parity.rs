//! Parity with Hugging Face: `surgery forward` against golden outputs written by
//! tools/fixtures/make_parity_fixtures.py (transformers, eval mode).

use candle_core::Device;
use surgery::io::TensorStore;

use crate::util::{max_abs_diff, minilm, repo, surgery, tempdir};

/// Runs `surgery forward` and compares ids, mask, hidden states (and logits) with the golden file.
fn check(checkpoint: &std::path::Path, golden: &str) {
    let dir = tempdir();
    let out = dir.path().join("out.safetensors");
    let sentences = repo().join("fixtures/parity/sentences.txt");
    let r = surgery(&[
        "forward",
        checkpoint.to_str().unwrap(),
        "--input",
        sentences.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let ours = TensorStore::open_files(&[out]).unwrap();
    let theirs = TensorStore::open_files(&[repo().join("fixtures/parity").join(golden)]).unwrap();
    for name in ["input_ids", "attention_mask"] {
        assert_eq!(ours.bytes(name), theirs.bytes(name), "{name} differs");
        assert_eq!(
            ours.info(name).unwrap().shape,
            theirs.info(name).unwrap().shape
        );
    }
    let cpu = Device::Cpu;
    let hidden = ours.load_f32("last_hidden_state", &cpu).unwrap();
    let golden_hidden = theirs.load_f32("last_hidden_state", &cpu).unwrap();
    // Real (non-pad) positions must match to 1e-4; pad positions are not used by anything.
    let mask = theirs
        .bytes("attention_mask")
        .unwrap()
        .chunks(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect::<Vec<_>>();
    let h = hidden.dim(2).unwrap();
    let a = hidden.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = golden_hidden
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let mut worst = 0f32;
    for (pos, m) in mask.iter().enumerate() {
        if *m == 1 {
            for j in 0..h {
                worst = worst.max((a[pos * h + j] - b[pos * h + j]).abs());
            }
        }
    }
    assert!(
        worst <= 1e-4,
        "max abs difference of last hidden state {worst}"
    );
    assert!(max_abs_diff(&hidden, &golden_hidden) <= 1e-3);
    if theirs.info("logits").is_some() {
        let logits = ours.load_f32("logits", &cpu).unwrap();
        let golden_logits = theirs.load_f32("logits", &cpu).unwrap();
        assert!(max_abs_diff(&logits, &golden_logits) <= 1e-4);
    }
}

#[test]
fn tiny_prefixed_token_classifier_matches_transformers() {
    check(&repo().join("fixtures/tiny-bert-tc"), "tiny.safetensors");
}

#[test]
fn minilm_matches_transformers() {
    if let Some(dir) = minilm() {
        check(&dir, "minilm.safetensors");
    }
}
