//! NER data: bad input is reported with file:line; long sentences are split, never dropped;
//! labels are aligned to sub-tokens as configured.

use std::path::Path;

use surgery::data::labels::UnknownLabels;
use surgery::data::tokenize::WordTokenizer;
use surgery::data::{encode_dataset, read_dataset, Alignment, LabelSet, ReadOptions};

use crate::util::{repo, tempdir};

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn tiny_tokenizer() -> WordTokenizer {
    let path = repo().join("fixtures/tiny-bert-tc/tokenizer.json");
    WordTokenizer::from_bytes(&std::fs::read(&path).unwrap(), path, 0).unwrap()
}

fn error_of(path: &Path) -> String {
    read_dataset(path, &ReadOptions::default())
        .unwrap_err()
        .to_string()
}

#[test]
fn bad_files_name_the_file_and_line() {
    let dir = tempdir();
    let empty = write(dir.path(), "empty.txt", b"");
    assert!(error_of(&empty).contains("empty.txt") && error_of(&empty).contains("no sentences"));
    let one = write(dir.path(), "one.txt", b"UN B-ORG\nvotes\n");
    let e = error_of(&one);
    assert!(e.contains("one.txt:2") && e.contains("1 column"), "{e}");
    let latin1 = write(dir.path(), "latin1.txt", b"EU B-ORG\n\nna\xefve O\n");
    let e = error_of(&latin1);
    assert!(e.contains("latin1.txt:3") && e.contains("UTF-8"), "{e}");
}

#[test]
fn unknown_tags_are_an_error_or_mapped_to_o() {
    let dir = tempdir();
    let train = write(
        dir.path(),
        "train.txt",
        b"Peter B-PER\nlives O\n\nParis B-LOC\n",
    );
    let dev = write(dir.path(), "dev.txt", b"Anna B-PER\n\nin O\nRome B-GPE\n");
    let labels =
        LabelSet::discover(&read_dataset(&train, &ReadOptions::default()).unwrap()).unwrap();
    assert_eq!(labels.labels(), &["O", "B-LOC", "B-PER"]);
    let dev = read_dataset(&dev, &ReadOptions::default()).unwrap();
    let e = labels
        .encode(&dev, UnknownLabels::Error)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("dev.txt:4") && e.contains("B-GPE") && e.contains("--unknown-labels o"),
        "{e}"
    );
    let ids = labels.encode(&dev, UnknownLabels::Outside).unwrap();
    assert_eq!(ids[1], vec![0, 0]);
}

#[test]
fn jsonl_with_string_and_integer_tags() {
    let dir = tempdir();
    let p = write(
        dir.path(),
        "d.jsonl",
        br#"{"tokens": ["UN", "votes"], "ner_tags": ["B-ORG", "O"]}
{"tokens": ["Peter"], "ner_tags": [1]}
"#,
    );
    let options = ReadOptions {
        iob1_to_iob2: false,
        tag_names: Some(vec!["O".into(), "B-PER".into()]),
    };
    let d = read_dataset(&p, &options).unwrap();
    assert_eq!(d.sentences[1].tags, vec!["B-PER"]);
    let e = read_dataset(&p, &ReadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("d.jsonl:2") && e.contains("integer tag"), "{e}");
}

#[test]
fn a_sentence_of_2000_words_is_split_into_windows_not_dropped() {
    let dir = tempdir();
    let mut text = String::new();
    for i in 0..2000 {
        text.push_str(if i % 10 == 0 {
            "Peter B-PER\n"
        } else {
            "call O\n"
        });
    }
    let p = write(dir.path(), "long.txt", text.as_bytes());
    let data = read_dataset(&p, &ReadOptions::default()).unwrap();
    let labels = LabelSet::discover(&data).unwrap();
    let ids = labels.encode(&data, UnknownLabels::Error).unwrap();
    let examples = encode_dataset(
        &tiny_tokenizer(),
        &data,
        &ids,
        &labels,
        Alignment::FirstSubtoken,
        64,
    )
    .unwrap();
    assert!(examples.len() > 1);
    assert!(examples.iter().all(|e| e.ids.len() <= 64));
    let mut words: Vec<usize> = examples
        .iter()
        .flat_map(|e| e.word_starts.iter().map(|w| w.1))
        .collect();
    words.sort();
    assert_eq!(
        words,
        (0..2000).collect::<Vec<_>>(),
        "every word is scored exactly once"
    );
}

#[test]
fn labels_go_to_the_first_subtoken_or_to_all_subtokens() {
    let dir = tempdir();
    // "Zwingmann" splits into several pieces in the tiny vocabulary.
    let p = write(dir.path(), "d.txt", b"Zwingmann B-PER\nsaid O\n");
    let data = read_dataset(&p, &ReadOptions::default()).unwrap();
    let labels = LabelSet::new(vec!["O".into(), "B-PER".into(), "I-PER".into()]).unwrap();
    let ids = labels.encode(&data, UnknownLabels::Error).unwrap();
    let tok = tiny_tokenizer();
    let first = encode_dataset(&tok, &data, &ids, &labels, Alignment::FirstSubtoken, 128).unwrap();
    let all = encode_dataset(&tok, &data, &ids, &labels, Alignment::AllSubtokens, 128).unwrap();
    let (f, a) = (&first[0].labels, &all[0].labels);
    assert!(f.len() > 4, "Zwingmann must split: {f:?}");
    assert_eq!(f[0], -100, "[CLS] is ignored");
    assert_eq!(*f.last().unwrap(), -100, "[SEP] is ignored");
    assert_eq!(f[1], 1);
    assert!(f[2..f.len() - 2].iter().all(|&l| l == -100));
    assert_eq!(a[1], 1);
    assert!(
        a[2..a.len() - 2].iter().all(|&l| l == 2),
        "continuations of B-PER are I-PER: {a:?}"
    );
    assert_eq!(first[0].word_starts, vec![(1, 0), (f.len() - 2, 1)]);
}
