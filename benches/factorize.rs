//! Benchmark: factorize-embeddings on a bert-base-cased-sized word-embedding table (28996×768,
//! random normal entries), ranks 64 and 128. Run: `cargo bench --bench factorize`.

use std::time::Instant;

use surgery::arch::{BertConfig, Layout};
use surgery::cuts::factorize_embeddings::{apply, Spec};
use surgery::model::generate::random_checkpoint;

fn main() {
    let config = BertConfig::from_json(
        r#"{"hidden_size": 768, "num_hidden_layers": 1, "num_attention_heads": 12,
            "intermediate_size": 3072, "vocab_size": 28996}"#,
    )
    .unwrap();
    let ckpt = random_checkpoint(config, Layout::BertPrefixed, false, false, 0.02, 1).unwrap();
    for rank in [64, 128] {
        let mut times = vec![];
        for _ in 0..3 {
            let start = Instant::now();
            let out = apply(&ckpt, &Spec { rank }).unwrap();
            times.push(start.elapsed().as_secs_f64());
            assert!(out.report["retained_energy"].as_f64().unwrap() > 0.0);
        }
        times.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "factorize-embeddings 28996x768 rank {rank}: median {:.2} s (min {:.2}, max {:.2}) over 3 runs",
            times[1], times[0], times[2]
        );
    }
}
