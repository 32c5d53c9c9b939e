//! NER data: bad input is reported with file:line; long sentences are split, never dropped;
//! labels are aligned to sub-tokens as configured; any line ends, separators or BOM read the same;
//! endless or binary data fails fast; tags must fit the tag grammar and the model.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use surgery::data::labels::UnknownLabels;
use surgery::data::tokenize::WordTokenizer;
use surgery::data::{encode_dataset, read_dataset, Alignment, LabelSet, ReadOptions};

use crate::util::{
    assert_refused, finetune_args, model, refused_cleanly, repo, run, s, setup, surgery, tempdir,
    trained, Output,
};

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

/// Runs the binary with a wall-clock limit; a command still running after it is a hang.
fn surgery_within(args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_surgery"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            child.kill().unwrap();
            panic!("`surgery {}` still running after {limit:?}", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn eval_on_dev_zero_and_dev_urandom_fails_fast() {
    let dir = tempdir();
    let m = model(dir.path());
    for device in ["/dev/zero", "/dev/urandom"] {
        // The limit only tells a hang (reading an endless file) from a refusal.
        let r = surgery_within(&["eval", s(&m), "--data", device], Duration::from_secs(120));
        assert_refused(&r, device);
        assert!(
            r.stderr.contains("binary file") || r.stderr.contains("longer than"),
            "{}",
            r.stderr
        );
    }
}

#[test]
fn a_line_longer_than_the_limit_is_refused_and_errors_quote_only_part_of_it() {
    let dir = tempdir();
    let m = model(dir.path());
    // One 60 kB word without a tag: the message quotes at most ~200 characters of it.
    let data = dir.path().join("long.txt");
    std::fs::write(&data, format!("{}\n", "x".repeat(60_000))).unwrap();
    let r = surgery(&["eval", s(&m), "--data", s(&data)]);
    assert_refused(&r, "60000 characters");
    assert!(r.stderr.len() < 1_500, "{} bytes of stderr", r.stderr.len());
    // A line over the 1 MiB limit.
    std::fs::write(&data, format!("{} B-PER\n", "x".repeat(2 << 20))).unwrap();
    let r = surgery(&["eval", s(&m), "--data", s(&data)]);
    assert_refused(&r, "longer than 1 MiB");
    assert!(r.stderr.len() < 1_500);
}

#[test]
fn conll_files_read_the_same_whatever_their_line_ends_separators_or_bom() {
    let dir = tempdir();
    let m = model(dir.path());
    let plain = "John B-PER\nSmith I-PER\nlives O\nin O\nParis B-LOC\n\nAnna B-PER\nvisited O\nBerlin B-LOC\n";
    let report = |text: &str, name: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let r = surgery(&["eval", s(&m), "--data", s(&path), "--json"]);
        assert_eq!(r.code, 0, "{name}: {}", r.stderr);
        let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        v["report"].clone()
    };
    let expected = report(plain, "plain.txt");
    assert_eq!(expected["micro"]["support"], 4);
    let three_columns: String = plain
        .lines()
        .map(|l| match l.split_once(' ') {
            Some((w, t)) => format!("{w} NNP {t}\n"),
            None => "\n".into(),
        })
        .collect();
    for (name, text) in [
        ("crlf", plain.replace('\n', "\r\n")),
        ("cr", plain.replace('\n', "\r")),
        ("tabs", plain.replace(' ', "\t")),
        ("bom", format!("\u{feff}{plain}")),
        ("three-columns", three_columns),
        ("docstart", format!("-DOCSTART- -X- -X- O\n\n{plain}")),
    ] {
        assert_eq!(report(&text, &format!("{name}.txt")), expected, "{name}");
    }
    // Sentences for `forward` with carriage returns alone: one sentence per line as well.
    let sentences = dir.path().join("s.txt");
    std::fs::write(&sentences, "John lives\rAnna visited Berlin\r").unwrap();
    let out = dir.path().join("f.safetensors");
    let r = surgery(&["forward", s(&m), "--input", s(&sentences), "--out", s(&out)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let store = surgery::io::TensorStore::open_files(&[out]).unwrap();
    assert_eq!(store.info("input_ids").unwrap().shape[0], 2);
}

// ------------------------------------------------------------------------------------------
// Labels: calibration tags, and the same labels in another order.
#[test]
fn calibration_tags_the_model_does_not_know_are_refused_like_eval_refuses_them() {
    let dir = tempdir();
    let m = model(dir.path());
    let calib = dir.path().join("calib.txt");
    std::fs::write(&calib, "John B-PER\nlives O\n\nParis B-FOO\n").unwrap();
    let out = dir.path().join("out");
    let (ms, os, cs) = (s(&m), s(&out), s(&calib));
    for args in [
        vec![
            "prune-neurons",
            ms,
            os,
            "--keep-ratio",
            "0.5",
            "--by",
            "fisher",
            "--calib",
            cs,
        ],
        vec!["prune-structured", ms, os, "--flops", "0.5", "--calib", cs],
    ] {
        let r = surgery(&args);
        refused_cleanly(&r, "B-FOO");
        assert!(r.stderr.contains("calib.txt:4"), "{}", r.stderr);
        assert!(!out.exists());
    }
    refused_cleanly(&surgery(&["eval", ms, "--data", cs]), "B-FOO");
}

#[test]
fn typeless_tags_are_refused_with_file_and_line() {
    let s_ = setup(32);
    let bad = s_.dir.path().join("bad.txt");
    for tag in ["B", "I-", "PER"] {
        std::fs::write(&bad, format!("Peter B-PER\nlives O\nhere {tag}\n")).unwrap();
        let out = s_.dir.path().join(format!("run-{tag}"));
        let mut args = finetune_args(&s_, &s_.model, &out, &[]);
        let i = args.iter().position(|a| a == "--train").unwrap();
        args[i + 1] = s(&bad).to_string();
        let r = run(&args);
        assert_refused(&r, "bad.txt:3");
        assert!(r.stderr.contains(&format!("`{tag}`")), "{}", r.stderr);
    }
    let scored = s_.dir.path().join("score.txt");
    std::fs::write(&scored, "Paris B-LOC B-LOC\nEU B-ORG\n").unwrap();
    let r = surgery(&["score", s(&scored)]);
    assert_refused(&r, "score.txt:2");
}

#[test]
fn integer_jsonl_tags_take_tag_names() {
    let s_ = setup(32);
    let jsonl = s_.dir.path().join("dev.jsonl");
    std::fs::write(
        &jsonl,
        "{\"tokens\": [\"Peter\", \"runs\"], \"ner_tags\": [1, 0]}\n",
    )
    .unwrap();
    let run_dir = trained(&s_);
    let best = run_dir.join("best");
    let r = surgery(&["eval", s(&best), "--data", s(&jsonl)]);
    assert_refused(&r, "--tag-names");
    let labels = "O,B-PER,I-PER";
    let r = surgery(&["eval", s(&best), "--data", s(&jsonl), "--tag-names", labels]);
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn zero_width_and_whitespace_lines_are_sentence_breaks() {
    let dir = tempdir();
    let path = dir.path().join("d.txt");
    std::fs::write(
        &path,
        "\u{feff}Peter B-PER\nruns O\n\u{200b}\nParis B-LOC\n \t \nBerlin B-LOC\n\u{feff}\n",
    )
    .unwrap();
    let d = surgery::data::read_dataset(&path, &Default::default()).unwrap();
    let words: Vec<Vec<String>> = d.sentences.iter().map(|s| s.words.clone()).collect();
    assert_eq!(
        words,
        vec![vec!["Peter", "runs"], vec!["Paris"], vec!["Berlin"]]
    );
}
