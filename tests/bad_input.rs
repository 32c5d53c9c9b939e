//! Bad input gets a one-line error naming the file and the problem, exit code 2, and no output.

use std::path::{Path, PathBuf};

use surgery::arch::Layout;

use crate::util::{save, surgery, tempdir, tiny_checkpoint, tiny_config};

/// A valid tiny checkpoint folder to break.
fn good(dir: &Path) -> PathBuf {
    save(
        &tiny_checkpoint(tiny_config(), Layout::Bare, 11),
        dir,
        "good",
    )
}

/// Runs `forward` into `dir/out.safetensors` and checks: exit 2, one line naming `needle`s, no output.
fn assert_rejected(ckpt: &Path, dir: &Path, needles: &[&str]) {
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

#[test]
fn truncated_safetensors() {
    let dir = tempdir();
    let ckpt = good(dir.path());
    let file = ckpt.join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() - 100]).unwrap();
    assert_rejected(&ckpt, dir.path(), &["model.safetensors", "truncated"]);
    std::fs::write(&file, &bytes[..5]).unwrap();
    assert_rejected(&ckpt, dir.path(), &["model.safetensors", "too short"]);
}

#[test]
fn header_that_is_not_json() {
    let dir = tempdir();
    let ckpt = good(dir.path());
    let mut bytes = 20u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"this is not json....");
    std::fs::write(ckpt.join("model.safetensors"), bytes).unwrap();
    assert_rejected(&ckpt, dir.path(), &["model.safetensors", "not valid JSON"]);
}

#[test]
fn tensor_with_the_wrong_shape_for_the_config() {
    let dir = tempdir();
    let ckpt = good(dir.path());
    // Claim a larger intermediate size than the tensors have.
    let path = ckpt.join("config.json");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace("\"intermediate_size\": 24", "\"intermediate_size\": 28"),
    )
    .unwrap();
    assert_rejected(
        &ckpt,
        dir.path(),
        &[
            "model.safetensors",
            "encoder.layer.0.intermediate.dense.weight",
            "[24, 16]",
            "[28, 16]",
        ],
    );
}

#[test]
fn config_without_hidden_size() {
    let dir = tempdir();
    let ckpt = good(dir.path());
    let path = ckpt.join("config.json");
    let mut value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    value.as_object_mut().unwrap().remove("hidden_size");
    std::fs::write(&path, value.to_string()).unwrap();
    assert_rejected(&ckpt, dir.path(), &["config.json", "hidden_size"]);
}

#[test]
fn missing_tensor() {
    let dir = tempdir();
    let ckpt = good(dir.path());
    let path = ckpt.join("config.json");
    let text = std::fs::read_to_string(&path).unwrap();
    // One more layer than the file holds.
    std::fs::write(
        &path,
        text.replace("\"num_hidden_layers\": 3", "\"num_hidden_layers\": 4"),
    )
    .unwrap();
    assert_rejected(
        &ckpt,
        dir.path(),
        &["model.safetensors", "missing tensor", "encoder.layer.3."],
    );
}

#[test]
fn unknown_dtype() {
    let dir = tempdir();
    let ckpt = good(dir.path());
    let file = ckpt.join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(bytes[8..8 + n].to_vec()).unwrap();
    // Same byte size per element, unknown to the tool.
    let header = header.replacen("\"F32\"", "\"U32\"", 1);
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(&file, out).unwrap();
    assert_rejected(
        &ckpt,
        dir.path(),
        &["model.safetensors", "unsupported dtype U32"],
    );
}

#[test]
fn input_that_is_a_file_instead_of_a_folder() {
    let dir = tempdir();
    let file = dir.path().join("config.json");
    std::fs::write(&file, "{}").unwrap();
    assert_rejected(
        &file,
        dir.path(),
        &["config.json", "not a checkpoint folder"],
    );
}

#[test]
fn output_path_that_exists() {
    let dir = tempdir();
    let ckpt = good(dir.path());
    let input = dir.path().join("sentences.txt");
    std::fs::write(&input, "a b c\n").unwrap();
    let out = dir.path().join("out.safetensors");
    std::fs::write(&out, "keep me").unwrap();
    let args = [
        "forward",
        ckpt.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    let r = surgery(&args);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("out.safetensors") && r.stderr.contains("already exists"),
        "{}",
        r.stderr
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "keep me");
    // --force never replaces a file surgery did not write ...
    let mut forced = args.to_vec();
    forced.push("--force");
    let r = surgery(&forced);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("refusing to replace it"), "{}", r.stderr);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "keep me");
    // ... but does replace its own output.
    std::fs::remove_file(&out).unwrap();
    assert_eq!(surgery(&args).code, 0);
    assert_eq!(surgery(&forced).code, 0);
}

#[test]
fn bad_budget_option_is_a_usage_error() {
    let dir = tempdir();
    let ckpt = good(dir.path());
    let r = surgery(&["inspect", ckpt.to_str().unwrap(), "--budget", "lots"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("not a parameter count"), "{}", r.stderr);
}
