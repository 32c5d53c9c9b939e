//! Checkpoints back into transformers: every cut, a chain of cuts and every family the toolkit
//! reads load with `AutoModelForTokenClassification.from_pretrained(dir, trust_remote_code=True)`
//! (or `AutoModel` without a head) with the logits (hidden states) of `surgery forward` within
//! 1e-4; structures transformers' own classes hold stay plain (no code beside them); the
//! token-classification pipeline finds the entities `surgery predict` finds; and what
//! transformers' `save_pretrained` writes reads back with the same outputs. Needs
//! `python3 -c "import torch, transformers"`; `.ci/run` installs them and sets
//! SURGERY_REQUIRE_TRANSFORMERS=1, so there it can never be skipped.

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::Device;
use surgery::arch::{BertConfig, Layout};
use surgery::io::TensorStore;
use surgery::model::generate::random_checkpoint;

use crate::util::{max_abs_diff, repo, save, surgery, tempdir, tiny_checkpoint, tiny_config};

const CHECK: &str = "tools/checks/transformers_check.py";

/// The largest difference allowed between transformers' logits and the toolkit's.
const TOLERANCE: f64 = 1e-4;

/// Every family, by the `model_type` of its fixture.
const FAMILIES: [&str; 6] = [
    "bert",
    "roberta",
    "xlm-roberta",
    "camembert",
    "distilbert",
    "electra",
];

/// One cut: a label, the surgery and its options, and whether transformers needs the code.
struct Cut {
    label: &'static str,
    args: &'static [&'static str],
    remote: bool,
}

/// Each cut on its own (the fixtures have 2 layers of 4 heads, hidden 32, FFN 64).
const CUTS: [Cut; 8] = [
    Cut {
        label: "factorized",
        args: &["factorize-embeddings", "--rank", "5"],
        remote: true,
    },
    Cut {
        label: "low-rank",
        args: &["lowrank-layers", "--rank", "3"],
        remote: true,
    },
    Cut {
        label: "tied",
        args: &["tie-layers", "--groups", "0-1"],
        remote: true,
    },
    Cut {
        label: "heads",
        args: &["remove-heads", "--heads", "0:1,3"],
        remote: true,
    },
    Cut {
        label: "no-heads",
        args: &["remove-heads", "--heads", "1:0,1,2,3", "--allow-empty"],
        remote: true,
    },
    Cut {
        label: "neurons",
        args: &["prune-neurons", "--keep-ratio", "0.4", "--by", "magnitude"],
        remote: true,
    },
    Cut {
        label: "sparse",
        args: &["magnitude", "--pattern", "2:4"],
        remote: false,
    },
    Cut {
        label: "dropped",
        args: &["drop-layers", "--keep", "1"],
        remote: false,
    },
];

/// A chain of cuts, each on the previous one's output: every structure at once (but sparsity:
/// the pruning cuts take dense linears only, and low-rank ones refuse sparse ones; the generated
/// models below mix them).
const CHAIN: [&[&str]; 5] = [
    &["remove-heads", "--heads", "0:1;1:2"],
    &[
        "prune-neurons",
        "--keep-ratio",
        "0.5",
        "--by",
        "magnitude",
        "--uniform",
    ],
    &["tie-layers", "--groups", "0-1"],
    &["factorize-embeddings", "--rank", "6"],
    &["lowrank-layers", "--rank", "4"],
];

/// True when python3 imports torch and transformers; panics when CI requires them and they are
/// missing.
fn transformers_available() -> bool {
    let check = repo().join(CHECK);
    crate::util::python_check(
        &[check.to_str().unwrap(), "available"],
        "SURGERY_REQUIRE_TRANSFORMERS",
        "torch transformers",
    )
}

fn fixture(family: &str) -> PathBuf {
    match family {
        "bert" => repo().join("fixtures/tiny-bert-tc"),
        name => repo().join("fixtures/families").join(name),
    }
}

fn sentences() -> PathBuf {
    repo().join("fixtures/parity/sentences.txt")
}

/// Runs `surgery ARGS[0] input output ARGS[1..]`.
fn cut(input: &Path, output: &Path, args: &[&str]) {
    let mut all = vec![args[0], input.to_str().unwrap(), output.to_str().unwrap()];
    all.extend(&args[1..]);
    let r = surgery(&all);
    assert_eq!(r.code, 0, "{args:?}: {}", r.stderr);
}

/// Runs `surgery forward` on the parity sentences into `out`.
fn forward(ckpt: &Path, out: &Path) {
    let r = surgery(&[
        "forward",
        ckpt.to_str().unwrap(),
        "--input",
        sentences().to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}: {}", ckpt.display(), r.stderr);
}

fn python(args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg(repo().join(CHECK))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{CHECK} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A checkpoint to check: its folder, whether it has a head and whether it needs the code.
struct Case {
    name: String,
    dir: PathBuf,
    head: bool,
    remote: bool,
}

/// The chain's output for `family` (written under `root`).
fn chained(family: &str, root: &Path) -> PathBuf {
    let mut input = fixture(family);
    for (i, args) in CHAIN.iter().enumerate() {
        let output = root.join(format!("{family}-chain-{i}"));
        cut(&input, &output, args);
        input = output;
    }
    input
}

/// Every structure the generators make that the cuts above do not: several structures in one
/// BERT (tanh GELU, a layer without heads, a sparse and a low-rank linear, sharing), and a model
/// without a head (`AutoModel`).
fn generated(root: &Path) -> Vec<Case> {
    let structured = r#"{"format_version": 1,
        "embeddings": {"kind": "factorized", "rank": 8},
        "layer_map": [0, 0, 1],
        "layers": [
          {"num_heads": 2, "intermediate_size": 24, "linears": {
            "query": {"kind": "low_rank", "rank": 4},
            "output": {"kind": "sparse", "pattern": {"type": "unstructured", "sparsity": 0.5}}}},
          {"num_heads": 0, "intermediate_size": 0, "linears": {}}],
        "history": []}"#;
    let config = |act: &str| -> BertConfig {
        let mut config = tiny_config();
        config.surgery = Some(serde_json::from_str(structured).unwrap());
        config.hidden_act = act.into();
        // Room for the longest parity sentence.
        config.max_position_embeddings = 128;
        config
    };
    let mut bare = random_checkpoint(config("gelu"), Layout::Bare, false, false, 0.3, 7).unwrap();
    bare.tokenizer_files = tiny_checkpoint(tiny_config(), Layout::Bare, 1).tokenizer_files;
    vec![
        Case {
            name: "bert-generated-gelu_new".into(),
            dir: save(
                &tiny_checkpoint(config("gelu_new"), Layout::BertPrefixed, 5),
                root,
                "generated-gelu_new",
            ),
            head: true,
            remote: true,
        },
        Case {
            name: "bert-generated-relu-bare".into(),
            dir: save(
                &tiny_checkpoint(config("relu"), Layout::Bare, 6),
                root,
                "generated-relu",
            ),
            head: true,
            remote: true,
        },
        Case {
            name: "bert-generated-no-head".into(),
            dir: save(&bare, root, "generated-no-head"),
            head: false,
            remote: true,
        },
    ]
}

/// `path` with `suffix` added to its last component.
fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

fn forward_file(case: &Case) -> PathBuf {
    suffixed(&case.dir, ".forward.safetensors")
}

fn resaved(case: &Case) -> PathBuf {
    suffixed(&case.dir, ".resaved")
}

/// Runs the check script over `cases` and returns its result line for each, by name.
fn check_in_transformers(cases: &[Case], root: &Path) -> Vec<serde_json::Value> {
    let manifest: Vec<serde_json::Value> = cases
        .iter()
        .map(|c| {
            forward(&c.dir, &forward_file(c));
            serde_json::json!({
                "name": c.name,
                "dir": c.dir,
                "forward": forward_file(c),
                "head": c.head,
                "remote": c.remote,
                "resave": resaved(c),
            })
        })
        .collect();
    let path = root.join("manifest.json");
    std::fs::write(&path, serde_json::to_string(&manifest).unwrap()).unwrap();
    let lines = python(&["logits", path.to_str().unwrap()]);
    let results: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), cases.len(), "{lines}");
    results
}

/// Checks each result: logits within the tolerance, code beside the weights exactly when the
/// structure needs it, and transformers' own copy read back by the toolkit with the same outputs.
fn assert_results(cases: &[Case], results: &[serde_json::Value]) {
    let mut worst = 0f64;
    let mut failures = vec![];
    for (case, result) in cases.iter().zip(results) {
        assert_eq!(result["name"], case.name.as_str());
        let diff = result["max_diff"].as_f64().unwrap();
        worst = worst.max(diff);
        eprintln!(
            "{}: max |logit difference| {diff:.2e} over {} tokens ({})",
            case.name, result["tokens"], result["class"]
        );
        if diff > TOLERANCE {
            failures.push(format!("{}: logits differ by {diff}", case.name));
        }
        if result["remote"].as_bool() != Some(case.remote) {
            failures.push(format!(
                "{}: code beside the weights is {}, expected {}",
                case.name, result["remote"], case.remote
            ));
        }
        // transformers' save_pretrained output reads back with the same outputs.
        let again = suffixed(&resaved(case), ".forward.safetensors");
        forward(&resaved(case), &again);
        let a = TensorStore::open_files(&[forward_file(case)]).unwrap();
        let b = TensorStore::open_files(&[again]).unwrap();
        assert!(
            a.bytes("input_ids").unwrap() == b.bytes("input_ids").unwrap(),
            "{}: the tokenizer transformers saved tokenises differently",
            case.name
        );
        let name = if case.head {
            "logits"
        } else {
            "last_hidden_state"
        };
        let d = max_abs_diff(
            &a.load_f32(name, &Device::Cpu).unwrap(),
            &b.load_f32(name, &Device::Cpu).unwrap(),
        );
        if d > 1e-6 {
            failures.push(format!(
                "{}: the copy transformers saved gives outputs {d} away",
                case.name
            ));
        }
    }
    eprintln!(
        "{} checkpoints, largest logit difference {worst:.2e}",
        cases.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_cut_of_every_family_loads_in_transformers_with_the_same_logits() {
    if !transformers_available() {
        return;
    }
    let dir = tempdir();
    let root = dir.path();
    // The parity sentences as a CoNLL corpus, for prune-vocab.
    let corpus = root.join("corpus.txt");
    let conll: String = std::fs::read_to_string(sentences())
        .unwrap()
        .lines()
        .map(|line| {
            let words: String = line.split(' ').map(|w| format!("{w} O\n")).collect();
            words + "\n"
        })
        .collect();
    std::fs::write(&corpus, conll).unwrap();
    let mut cases = vec![];
    for family in FAMILIES {
        for c in &CUTS {
            let out = root.join(format!("{family}-{}", c.label));
            cut(&fixture(family), &out, c.args);
            cases.push(Case {
                name: format!("{family}-{}", c.label),
                dir: out,
                head: true,
                remote: c.remote,
            });
        }
        // A pruned vocabulary keeps vanilla shapes, with a tokenizer of its own.
        let out = root.join(format!("{family}-vocab"));
        cut(
            &fixture(family),
            &out,
            &["prune-vocab", "--corpus", corpus.to_str().unwrap()],
        );
        cases.push(Case {
            name: format!("{family}-vocab"),
            dir: out,
            head: true,
            remote: false,
        });
        cases.push(Case {
            name: format!("{family}-chain"),
            dir: chained(family, root),
            head: true,
            remote: true,
        });
    }
    cases.extend(generated(root));
    let results = check_in_transformers(&cases, root);
    assert_results(&cases, &results);
}

#[test]
fn the_pipeline_finds_the_entities_surgery_predict_finds() {
    if !transformers_available() {
        return;
    }
    let dir = tempdir();
    let text = dir.path().join("text.txt");
    let mut lines = std::fs::read_to_string(sentences()).unwrap();
    // And lines of the text the fixtures' tokenizers were trained on (whole-word pieces), an
    // empty line and punctuation attached to a word.
    lines.push_str(
        "Maria Novak flew from Lisbon to Nairobi on Tuesday.\n\
         \n\
         The city council of Porto said on Friday it would review the contract with Globex Shipping\n\
         Peter Blackburn spoke in Brussels on Monday about the European Commission .\n\
         The team won the cup in London after a long season , said the coach .\n\
         Germany and France agreed on new rules for farmers and workers in the region .\n\
         Shares in the company rose sharply in New York trading on Friday morning .\n\
         She visited Tokyo , Madrid and Cairo before returning to her home in Toronto .\n",
    );
    std::fs::write(&text, &lines).unwrap();
    let mut total = 0;
    for family in FAMILIES {
        let ckpt = chained(family, dir.path());
        let r = surgery(&[
            "predict",
            ckpt.to_str().unwrap(),
            "--input",
            text.to_str().unwrap(),
        ]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let ours: Vec<serde_json::Value> = r
            .stdout
            .lines()
            .map(|l| {
                let p: serde_json::Value = serde_json::from_str(l).unwrap();
                p["entities"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| {
                        serde_json::json!({"type": e["type"], "start": e["start"], "end": e["end"],
                                           "text": e["text"]})
                    })
                    .collect()
            })
            .collect();
        let theirs: Vec<serde_json::Value> =
            python(&["pipeline", ckpt.to_str().unwrap(), text.to_str().unwrap()])
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
        assert_eq!(ours.len(), theirs.len(), "{family}");
        let (mut compared_lines, mut entities) = (0, 0);
        for (line, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            // Lines where the pipeline cannot tell the toolkit's words apart (see
            // `comparable` in the check script) are left out.
            if b["comparable"] != true {
                continue;
            }
            assert_eq!(a, &b["entities"], "{family}, line {}", line + 1);
            compared_lines += 1;
            entities += a.as_array().unwrap().len();
        }
        eprintln!(
            "{family}: {entities} entities equal on {compared_lines} of {} lines",
            ours.len()
        );
        assert!(compared_lines > 0, "{family}: no line to compare");
        total += entities;
    }
    assert!(total > 0, "the models found no entities to compare");
}
