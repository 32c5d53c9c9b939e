//! SparseGPT: the OBS step equals a numpy transcription of the reference implementation; the
//! driver prunes every encoder linear, beats magnitude pruning on reconstruction, keeps pruned
//! weights at zero through fine-tuning, and refuses bad specs.

use candle_core::Device;
use surgery::arch::{Key, Layout, LinearKind, LinearPart, LinearSlot};
use surgery::cuts::shared::obs::{sparsegpt, Pattern, Solver};
use surgery::cuts::sparsegpt::{apply, Method, Spec};
use surgery::io::Checkpoint;

use crate::util::{repo, save, surgery, tempdir, tiny_checkpoint, tiny_config};

#[test]
fn the_obs_step_matches_the_reference_implementation() {
    let text = std::fs::read_to_string(repo().join("fixtures/sparsegpt/golden.json")).unwrap();
    let g: serde_json::Value = serde_json::from_str(&text).unwrap();
    let (rows, cols) = (
        g["rows"].as_u64().unwrap() as usize,
        g["cols"].as_u64().unwrap() as usize,
    );
    let flat = |v: &serde_json::Value| -> Vec<f64> {
        v.as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()))
            .collect()
    };
    let h = flat(&g["hessian"]);
    let hessian = faer::Mat::from_fn(cols, cols, |i, j| h[i * cols + j]);
    for case in g["cases"].as_array().unwrap() {
        let pattern = match case["n"].as_u64().unwrap() {
            0 => Pattern::Unstructured(case["sparsity"].as_f64().unwrap()),
            n => Pattern::NofM {
                n: n as usize,
                m: case["m"].as_u64().unwrap() as usize,
            },
        };
        let mut w = flat(&g["weights"]);
        sparsegpt(
            &mut w,
            rows,
            cols,
            &hessian,
            pattern,
            Solver {
                block: 8,
                damp: 0.01,
            },
        )
        .unwrap();
        let expected = flat(&case["pruned"]);
        for (i, (a, b)) in w.iter().zip(&expected).enumerate() {
            assert!(
                (a - b).abs() <= 1e-4,
                "{}: weight {i}: {a} vs reference {b}",
                case["name"]
            );
            assert_eq!(
                *a == 0.0,
                *b == 0.0,
                "{}: mask differs at {i}",
                case["name"]
            );
        }
    }
}

fn calib(dir: &std::path::Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(repo().join("fixtures/parity/sentences.txt")).unwrap();
    let conll: String = text
        .lines()
        .map(|l| l.split(' ').map(|w| format!("{w} O\n")).collect::<String>() + "\n")
        .collect();
    let path = dir.join("calib.txt");
    std::fs::write(&path, conll).unwrap();
    path
}

fn spec(calib: std::path::PathBuf, method: Method) -> Spec {
    Spec {
        sparsity: Some(0.5),
        pattern: None,
        block: 8,
        method,
        calibration: surgery::cuts::shared::calibrate::CalibOptions::new(Some(calib), 256),
    }
}

fn zero_fraction(ckpt: &Checkpoint, layer: usize, slot: LinearSlot) -> f64 {
    let t = ckpt
        .tensor(
            Key::Linear {
                layer,
                slot,
                part: LinearPart::Weight,
            },
            &Device::Cpu,
        )
        .unwrap();
    let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    v.iter().filter(|x| **x == 0.0).count() as f64 / v.len() as f64
}

#[test]
fn every_linear_is_pruned_and_sparsegpt_beats_magnitude() {
    let dir = tempdir();
    let ckpt = tiny_checkpoint(tiny_config(), Layout::Bare, 61);
    let c = calib(dir.path());
    let obs = apply(&ckpt, &spec(c.clone(), Method::Sparsegpt)).unwrap();
    let mag = apply(&ckpt, &spec(c.clone(), Method::Magnitude)).unwrap();
    for layer in 0..3 {
        for slot in LinearSlot::ALL {
            assert!(
                zero_fraction(&obs.checkpoint, layer, slot) >= 0.5,
                "{layer} {slot:?}"
            );
            assert!(matches!(
                obs.checkpoint.arch.layers[layer].linear(slot),
                LinearKind::Sparse { .. }
            ));
        }
    }
    let e = |o: &surgery::cuts::Outcome| o.report["mean_relative_output_error"].as_f64().unwrap();
    assert!(
        e(&obs) < e(&mag),
        "sparsegpt {} vs magnitude {}",
        e(&obs),
        e(&mag)
    );
    let mut nm = spec(c, Method::Sparsegpt);
    nm.sparsity = None;
    nm.pattern = Some("2:4".into());
    let out = apply(&ckpt, &nm).unwrap();
    let w = out
        .checkpoint
        .tensor(
            Key::Linear {
                layer: 0,
                slot: LinearSlot::Intermediate,
                part: LinearPart::Weight,
            },
            &Device::Cpu,
        )
        .unwrap();
    for row in w.to_vec2::<f32>().unwrap() {
        for group in row.chunks(4) {
            assert!(group.iter().filter(|v| **v == 0.0).count() >= 2);
        }
    }
}

#[test]
fn the_heldout_error_is_measured_through_the_pruned_layers() {
    let dir = tempdir();
    let ckpt = tiny_checkpoint(tiny_config(), Layout::Bare, 62);
    let c = calib(dir.path());
    // Held out = the calibration sentences themselves: the same Hessians, the same errors.
    let mut same = spec(c.clone(), Method::Sparsegpt);
    same.calibration.heldout = Some(c.clone());
    let out = apply(&ckpt, &same).unwrap();
    let details = out.report["details"].as_array().unwrap();
    assert_eq!(details.len(), 18);
    for d in details {
        assert_eq!(
            d["heldout_relative_output_error"], d["relative_output_error"],
            "{d}"
        );
    }
    // Other sentences: an error is measured for every linear, and it differs.
    let text = std::fs::read_to_string(&c).unwrap();
    let other = dir.path().join("heldout.txt");
    std::fs::write(&other, text.replace(" O\n", " O\nthe O\n")).unwrap();
    let mut held = spec(c, Method::Sparsegpt);
    held.calibration.heldout = Some(other);
    let out = apply(&ckpt, &held).unwrap();
    let mean = out.report["mean_heldout_relative_output_error"]
        .as_f64()
        .unwrap();
    assert!(mean.is_finite() && mean > 0.0, "{}", out.report);
    assert_ne!(
        mean,
        out.report["mean_relative_output_error"].as_f64().unwrap()
    );
    assert!(out.report["heldout_tokens"].as_u64().unwrap() > 0);
}

#[test]
fn pruned_weights_stay_zero_through_fine_tuning_and_inspect_counts_them() {
    let s = crate::util::setup(64);
    let ckpt = Checkpoint::open(&s.model).unwrap();
    let pruned = apply(&ckpt, &spec(s.data.train.clone(), Method::Sparsegpt)).unwrap();
    let path = s.dir.path().join("pruned");
    pruned.save(&path, false).unwrap();
    let r = surgery(&["inspect", path.to_str().unwrap(), "--json"]);
    let report: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert!(
        report["budget"]["nonzero"].as_u64().unwrap()
            < report["budget"]["unique"].as_u64().unwrap()
    );
    let mut train = crate::util::quick_spec();
    train.epochs = 1;
    let run = s.dir.path().join("run");
    crate::util::finetune(
        &path,
        &crate::util::common(&s.data, &train, &run, Default::default()),
    )
    .unwrap();
    let tuned = Checkpoint::open(&run.join("last/model")).unwrap();
    let before = Checkpoint::open(&path).unwrap();
    for slot in LinearSlot::ALL {
        let key = Key::Linear {
            layer: 1,
            slot,
            part: LinearPart::Weight,
        };
        let a = before
            .tensor(key, &Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let b = tuned
            .tensor(key, &Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(
            a.iter().zip(&b).all(|(x, y)| *x != 0.0 || *y == 0.0),
            "{slot:?} regrew pruned weights"
        );
        assert!(
            a.iter().zip(&b).any(|(x, y)| x != y),
            "{slot:?} did not train"
        );
    }
}

#[test]
fn bad_specs_are_refused() {
    let dir = tempdir();
    let input = save(
        &tiny_checkpoint(tiny_config(), Layout::Bare, 62),
        dir.path(),
        "in",
    );
    let c = calib(dir.path());
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    for (args, needle) in [
        (
            vec!["--sparsity", "1.2", "--calib", c.to_str().unwrap()],
            "must be in (0, 1)",
        ),
        (
            vec!["--pattern", "4:4", "--calib", c.to_str().unwrap()],
            "N must be in 1..M",
        ),
        (
            vec!["--sparsity", "0.5", "--calib", empty.to_str().unwrap()],
            "no sentences",
        ),
    ] {
        let out = dir.path().join("out");
        let mut all = vec!["sparsegpt", input.to_str().unwrap(), out.to_str().unwrap()];
        all.extend(args);
        let r = surgery(&all);
        assert_eq!(r.code, 2, "{}", r.stderr);
        assert!(r.stderr.contains(needle), "{needle}: {}", r.stderr);
        assert!(!out.exists());
    }
    let mut few = spec(c, Method::Sparsegpt);
    few.calibration.calib_sentences = 500;
    let out = apply(&Checkpoint::open(&input).unwrap(), &few).unwrap();
    assert!(out.report["note"]
        .as_str()
        .unwrap()
        .contains("fewer than the 500 asked"));
}
