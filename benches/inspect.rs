//! Benchmark: `surgery inspect` on a bert-base-cased-sized checkpoint reads only headers.
//! Run: `cargo bench --bench inspect` (prints the median wall time of 20 runs of the binary).

use std::process::Command;
use std::time::Instant;

use surgery::arch::Layout;
use surgery::model::generate::{bert_base_cased_ner_config, write_zero_checkpoint};

fn main() {
    let dir = std::env::temp_dir().join(format!("surgery-bench-inspect-{}", std::process::id()));
    let ckpt = dir.join("bert-base-cased-ner");
    write_zero_checkpoint(
        &ckpt,
        &bert_base_cased_ner_config(),
        Layout::BertPrefixed,
        true,
    )
    .unwrap();
    let binary = env!("CARGO_BIN_EXE_surgery");
    let mut times = vec![];
    for _ in 0..20 {
        let start = Instant::now();
        let out = Command::new(&binary)
            .arg("inspect")
            .arg(&ckpt)
            .arg("--json")
            .output()
            .expect("run surgery");
        times.push(start.elapsed().as_secs_f64());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let size = std::fs::metadata(ckpt.join("model.safetensors"))
        .unwrap()
        .len();
    println!(
        "inspect bert-base-cased-sized checkpoint ({:.0} MB): median {:.3} s, min {:.3} s, max {:.3} s over {} runs",
        size as f64 / 1e6,
        times[times.len() / 2],
        times[0],
        times[times.len() - 1],
        times.len()
    );
    std::fs::remove_dir_all(&dir).ok();
}
