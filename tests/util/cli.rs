//! Running the binary as a hostile user would: argument helpers, refusal checks, a tiny model
//! and data, damaged files.

use std::path::{Path, PathBuf};

use surgery::arch::Layout;

use super::{save, surgery, tiny_checkpoint, tiny_config, Output, Setup};

/// `command` (`train KIND MODEL …`) on `data` as training and dev set, into `out`, for
/// `max_steps` steps with a fresh classifier.
pub fn short_training(command: &[&str], data: &str, out: &str, max_steps: &str) -> Vec<String> {
    let data_and_out = [
        "--train",
        data,
        "--dev",
        data,
        "--out",
        out,
        "--reinit-classifier",
    ];
    (command
        .iter()
        .chain(&data_and_out)
        .chain(&["--max-steps", max_steps]))
    .map(|a| a.to_string())
    .collect()
}

/// Refused with exit 2 naming `needle`, and without a panic message.
pub fn refused_cleanly(r: &Output, needle: &str) {
    assert_refused(r, needle);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
}

/// A labelled CoNLL file the tiny tokenizer can encode.
pub fn conll(dir: &Path) -> PathBuf {
    let path = dir.join("data.txt");
    std::fs::write(
        &path,
        "John B-PER\nlives O\nin O\nParis B-LOC\n\nAnna B-PER\n",
    )
    .unwrap();
    path
}

/// Writes `dir/r.toml`: `head` (with `MODEL` replaced by the tiny model's folder) and one
/// `drop-layers` step named `ev` (two edits from `99`) reading `input`.
pub fn recipe(dir: &Path, m: &Path, head: &str, input: &str) -> PathBuf {
    let path = dir.join("r.toml");
    let head = head.replace("MODEL", &m.display().to_string());
    let input = input.replace("MODEL", &m.display().to_string());
    let text = format!("{head}[[step]]\nname = \"ev\"\nkind = \"drop-layers\"\ninput = \"{input}\"\nkeep = \"0\"\n");
    std::fs::write(&path, text).unwrap();
    path
}

/// Rewrites `config.json` of a checkpoint folder through `edit`.
pub fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

/// The header and data section of a safetensors file.
pub fn split_safetensors(path: &Path) -> (serde_json::Map<String, serde_json::Value>, Vec<u8>) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    (header, bytes[8 + n..].to_vec())
}

pub fn join_safetensors(
    path: &Path,
    header: &serde_json::Map<String, serde_json::Value>,
    data: &[u8],
) {
    let text = serde_json::to_vec(header).unwrap();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text);
    out.extend(data);
    std::fs::write(path, out).unwrap();
}

/// Runs `args` (strings) through the binary.
pub fn run_strings(args: &[String]) -> Output {
    surgery(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

pub fn assert_refused(r: &crate::util::Output, needle: &str) {
    assert_eq!(r.code, 2, "stdout: {}\nstderr: {}", r.stdout, r.stderr);
    assert!(r.stderr.contains(needle), "`{needle}` not in: {}", r.stderr);
}

pub fn model(dir: &Path) -> PathBuf {
    save(
        &tiny_checkpoint(tiny_config(), Layout::Bare, 3),
        dir,
        "model",
    )
}

/// A finished tiny training run (`run/best`, `run/last`).
pub fn trained(s_: &Setup) -> PathBuf {
    let run_dir = s_.dir.path().join("run");
    let r = run(&finetune_args(
        s_,
        &s_.model,
        &run_dir,
        &["--max-steps", "4"],
    ));
    assert_eq!(r.code, 0, "{}", r.stderr);
    run_dir
}

pub fn finetune_args(s_: &Setup, input: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "train",
        "finetune",
        s(input),
        "--train",
        s(&s_.data.train),
        "--dev",
        s(&s_.data.dev),
        "--out",
        s(out),
        "--batch-size",
        "16",
        "--lr",
        "1e-3",
        "--eval-every",
        "2",
    ]
    .map(String::from)
    .to_vec();
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

pub fn run(args: &[String]) -> crate::util::Output {
    surgery(&args.iter().map(|a| a.as_str()).collect::<Vec<_>>())
}

/// A valid tiny checkpoint folder to break.
pub fn good(dir: &Path) -> PathBuf {
    save(
        &tiny_checkpoint(tiny_config(), Layout::Bare, 11),
        dir,
        "good",
    )
}

/// Runs `forward` into `dir/out.safetensors` and checks: exit 2, one line naming `needle`s, no output.
pub fn assert_rejected(ckpt: &Path, dir: &Path, needles: &[&str]) {
    let input = dir.join("sentences.txt");
    std::fs::write(&input, "a b c\n").unwrap();
    let out = dir.join("out.safetensors");
    let r = surgery(&[
        "forward",
        ckpt.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 2, "stderr: {}", r.stderr);
    assert_eq!(r.stderr.trim().lines().count(), 1, "one line: {}", r.stderr);
    for needle in needles {
        assert!(r.stderr.contains(needle), "`{needle}` not in: {}", r.stderr);
    }
    assert!(!out.exists(), "no output may be written");
    let inspect = surgery(&["inspect", ckpt.to_str().unwrap()]);
    assert_eq!(
        inspect.code, 2,
        "inspect must reject it too: {}",
        inspect.stderr
    );
}

/// One training step of `command` (`train KIND MODEL …`) with `data` as training and dev set,
/// batch 2, into `run_dir`: the `id2label` of the config it saved.
pub fn one_step_labels(command: &[&str], data: &Path, run_dir: &Path) -> serde_json::Value {
    let mut args = command.to_vec();
    args.extend([
        "--train",
        s(data),
        "--dev",
        s(data),
        "--out",
        s(run_dir),
        "--max-steps",
        "1",
        "--batch-size",
        "2",
    ]);
    let r = surgery(&args);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("best/config.json")).unwrap())
            .unwrap();
    config["id2label"].clone()
}
