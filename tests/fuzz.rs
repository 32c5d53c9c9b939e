//! Property tests of every reader (CoNLL, JSONL, conlleval scores, safetensors header, config,
//! recipe): random bytes and mutations of a valid file either read or fail with an error, never
//! panic, hang or allocate without bound (each case must finish within a time limit).

use std::path::Path;

use proptest::prelude::*;
use surgery::arch::Layout;

use crate::util::{save, tempdir, tiny_checkpoint, tiny_config};

/// One edit of a byte string.
#[derive(Debug, Clone)]
enum Edit {
    Set(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Duplicate(usize, usize),
    /// Replace a run of ASCII digits with a huge number.
    Huge(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, v)| Edit::Insert(i, v)),
        (any::<usize>(), 1usize..32).prop_map(|(i, n)| Edit::Delete(i, n)),
        (any::<usize>(), 1usize..64).prop_map(|(i, n)| Edit::Duplicate(i, n)),
        any::<usize>().prop_map(Edit::Huge),
    ]
}

fn apply(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let len = bytes.len().max(1);
        match e {
            Edit::Set(i, b) if !bytes.is_empty() => bytes[i % len] = *b,
            Edit::Insert(i, v) => {
                let at = i % (bytes.len() + 1);
                bytes.splice(at..at, v.iter().copied());
            }
            Edit::Delete(i, n) if !bytes.is_empty() => {
                let at = i % len;
                let end = (at + n).min(bytes.len());
                bytes.drain(at..end);
            }
            Edit::Duplicate(i, n) if !bytes.is_empty() => {
                let at = i % len;
                let end = (at + n).min(bytes.len());
                let copy = bytes[at..end].to_vec();
                bytes.splice(end..end, copy);
            }
            Edit::Huge(i) => {
                let digits: Vec<usize> = (0..bytes.len())
                    .filter(|&k| bytes[k].is_ascii_digit())
                    .collect();
                if let Some(&at) = digits.get(i % digits.len().max(1)) {
                    let mut end = at;
                    while end < bytes.len() && bytes[end].is_ascii_digit() {
                        end += 1;
                    }
                    bytes.splice(at..end, b"18446744073709551615".iter().copied());
                }
            }
            _ => {}
        }
    }
    bytes
}

/// Random bytes, or a valid sample with a few edits.
fn input(sample: &'static [u8]) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..400),
        proptest::collection::vec(edit(), 1..6).prop_map(move |e| apply(sample.to_vec(), &e)),
    ]
}

/// Writes `bytes` to `name` in a fresh folder and runs `read` on it (a hang would stop the test
/// run; speed is measured by the benchmarks, not here).
fn timed(name: &str, bytes: &[u8], read: impl FnOnce(&Path)) {
    let dir = tempdir();
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    read(&path);
}

const CONLL: &[u8] = b"-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\nGerman JJ B-NP B-MISC\n\nPeter NNP B-NP B-PER\nBlackburn NNP I-NP I-PER\n";
const JSONL: &[u8] = b"{\"tokens\": [\"EU\", \"rejects\", \"German\"], \"ner_tags\": [\"B-ORG\", \"O\", \"B-MISC\"]}\n{\"tokens\": [\"Peter\"], \"ner_tags\": [3]}\n";
const SCORES: &[u8] = b"EU B-ORG B-ORG\nrejects O O\nGerman B-MISC B-LOC\n\nPeter B-PER B-PER\n";
const RECIPE: &[u8] = b"[recipe]\nname = \"r\"\n[vars]\nd = \"data\"\ne = \"${d}/x\"\n[[step]]\nname = \"t\"\nkind = \"train finetune\"\ninput = \"m\"\ntrain = \"${e}/train.txt\"\ndev = \"${d}/dev.txt\"\nepochs = 3\n[[step]]\nkind = \"factorize-embeddings\"\nrank = 64\n[[step]]\nkind = \"eval\"\ninput = \"@t\"\ndata = \"${d}/test.txt\"\n";

fn cases() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn conll_reader(bytes in input(CONLL)) {
        timed("d.txt", &bytes, |p| {
            let _ = surgery::data::read_dataset(p, &Default::default());
        });
    }

    #[test]
    fn jsonl_reader(bytes in input(JSONL)) {
        let options = surgery::data::ReadOptions {
            iob1_to_iob2: true,
            tag_names: Some(vec!["O".into(), "B-PER".into(), "I-PER".into(), "B-LOC".into()]),
        };
        timed("d.jsonl", &bytes, |p| {
            let _ = surgery::data::read_dataset(p, &options);
        });
    }

    #[test]
    fn score_reader(bytes in input(SCORES)) {
        timed("s.txt", &bytes, |p| {
            let _ = surgery::eval::score::score_file(p, surgery::metrics::Matching::Default);
            let _ = surgery::eval::score::score_file(p, surgery::metrics::Matching::StrictIob2);
        });
    }

    #[test]
    fn recipe_reader(bytes in input(RECIPE)) {
        timed("r.toml", &bytes, |p| {
            let _ = surgery::pipeline::recipe::Recipe::load(p, &[]);
        });
    }
}

/// A valid tiny checkpoint's files, made once per test run.
fn checkpoint_files() -> (Vec<u8>, Vec<u8>) {
    let dir = tempdir();
    let path = save(
        &tiny_checkpoint(tiny_config(), Layout::Bare, 5),
        dir.path(),
        "m",
    );
    (
        std::fs::read(path.join("config.json")).unwrap(),
        std::fs::read(path.join("model.safetensors")).unwrap(),
    )
}

/// Opens a checkpoint folder made of these two files, timed.
fn open_checkpoint(config: &[u8], model: &[u8]) {
    let dir = tempdir();
    std::fs::write(dir.path().join("config.json"), config).unwrap();
    std::fs::write(dir.path().join("model.safetensors"), model).unwrap();
    if let Ok(ckpt) = surgery::io::Checkpoint::open(dir.path()) {
        let _ = surgery::budget::Budget::of_checkpoint(&ckpt);
    }
}

#[test]
fn config_reader_with_random_and_mutated_configs() {
    let (config, model) = checkpoint_files();
    let mut runner = proptest::test_runner::TestRunner::new(cases());
    let strategy = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..400),
        proptest::collection::vec(edit(), 1..6).prop_map(move |e| apply(config.clone(), &e)),
    ];
    runner
        .run(&strategy, |bytes| {
            open_checkpoint(&bytes, &model);
            Ok(())
        })
        .unwrap();
}

#[test]
fn safetensors_header_with_random_and_mutated_files() {
    let (config, model) = checkpoint_files();
    let header_len = u64::from_le_bytes(model[..8].try_into().unwrap()) as usize;
    let mut runner = proptest::test_runner::TestRunner::new(cases());
    // Edits land in the length field and the JSON header, where the parsing happens.
    let head = model[..8 + header_len].to_vec();
    let body = model[8 + header_len..].to_vec();
    let strategy = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..400),
        proptest::collection::vec(edit(), 1..6).prop_map(move |e| {
            let mut bytes = apply(head.clone(), &e);
            bytes.extend_from_slice(&body);
            bytes
        }),
    ];
    runner
        .run(&strategy, |bytes| {
            open_checkpoint(&config, &bytes);
            Ok(())
        })
        .unwrap();
    // A header length far beyond the file is refused without allocating it.
    let mut huge = (1u64 << 40).to_le_bytes().to_vec();
    huge.extend_from_slice(b"{}");
    open_checkpoint(&config, &huge);
}

#[test]
fn recipe_variables_that_double_each_other_are_refused() {
    let mut text = String::from("[vars]\na0 = \"xxxxxxxx\"\n");
    for i in 1..48 {
        text.push_str(&format!("a{i} = \"${{a{}}}${{a{}}}\"\n", i - 1, i - 1));
    }
    text.push_str("[[step]]\nkind = \"eval\"\ninput = \"${a47}\"\ndata = \"d\"\n");
    let dir = tempdir();
    let path = dir.path().join("r.toml");
    std::fs::write(&path, text).unwrap();
    let err = surgery::pipeline::recipe::Recipe::load(&path, &[]).unwrap_err();
    assert!(err.to_string().contains("expands to more than"), "{err}");
}
