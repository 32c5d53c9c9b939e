//! A golden run: a tiny seeded fine-tune whose `metrics.jsonl` (losses, learning rates, gradient
//! norms, dev F1) is pinned in `fixtures/golden/`, so a refactor of the trainer provably changes
//! no number. Regenerate deliberately with `SURGERY_BLESS=1 cargo test --release golden`.

use surgery::train::spec::RunOptions;

use crate::util::{quick_spec, setup};

const FIXTURE: &str = "fixtures/golden/tiny-finetune-metrics.jsonl";

/// The deterministic fields of each metrics line (timings dropped).
fn pinned(metrics: &str) -> Vec<serde_json::Value> {
    let keep = [
        "step",
        "epoch",
        "eval",
        "loss",
        "lr",
        "grad_norm",
        "f1",
        "precision",
        "recall",
    ];
    metrics
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let mut out = serde_json::Map::new();
            for k in keep {
                if let Some(x) = v.get(k) {
                    out.insert(k.into(), x.clone());
                }
            }
            out.into()
        })
        .collect()
}

#[test]
fn a_tiny_seeded_run_reproduces_its_pinned_metrics() {
    let s = setup(64);
    let mut spec = quick_spec();
    spec.max_steps = 12;
    spec.log_every = 2;
    spec.eval_every = 4;
    let out = s.dir.path().join("run");
    crate::util::finetune(
        &s.model,
        &crate::util::common(&s.data, &spec, &out, RunOptions::default()),
    )
    .unwrap();
    let got = pinned(&std::fs::read_to_string(out.join("metrics.jsonl")).unwrap());
    let path = crate::util::repo().join(FIXTURE);
    if std::env::var_os("SURGERY_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let text: String = got.iter().map(|v| format!("{v}\n")).collect();
        std::fs::write(&path, text).unwrap();
    }
    let want = pinned(&std::fs::read_to_string(&path).unwrap());
    assert_eq!(got.len(), want.len(), "number of metric lines");
    for (g, w) in got.iter().zip(&want) {
        let (g, w) = (g.as_object().unwrap(), w.as_object().unwrap());
        assert_eq!(g.keys().collect::<Vec<_>>(), w.keys().collect::<Vec<_>>());
        for (k, wv) in w {
            match (g[k].as_f64(), wv.as_f64()) {
                (Some(a), Some(b)) => assert!(
                    (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                    "{k} at step {}: {a} vs pinned {b}",
                    w["step"]
                ),
                _ => assert_eq!(&g[k], wv, "{k}"),
            }
        }
    }
}
