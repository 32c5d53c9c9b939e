//! Embeds the build's own provenance: the commit of this repository (not of whatever folder the
//! binary later runs in) and the versions of the main dependencies as resolved in Cargo.lock.

use std::path::Path;
use std::process::Command;

/// Dependencies whose versions decide the numbers a run produces.
const TRACKED: [&str; 6] = [
    "candle-core",
    "candle-nn",
    "gemm",
    "faer",
    "safetensors",
    "tokenizers",
];

fn main() {
    let root = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let root = Path::new(&root);
    println!("cargo:rustc-env=SURGERY_GIT_COMMIT={}", git_commit(root));
    println!(
        "cargo:rustc-env=SURGERY_DEPENDENCIES={}",
        dependency_versions(root)
    );
    println!("cargo:rerun-if-changed=Cargo.lock");
    for path in [".git/HEAD", ".git/index", ".git/refs/heads"] {
        if root.join(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}

/// `HEAD`'s commit, with `-dirty` when tracked files differ from it; `unknown` outside git.
fn git_commit(root: &Path) -> String {
    let run = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(root)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match run(&["rev-parse", "HEAD"]) {
        Some(commit) => {
            let dirty = run(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{commit}-dirty")
            } else {
                commit
            }
        }
        None => "unknown".into(),
    }
}

/// `name=version` pairs from Cargo.lock, comma-separated.
fn dependency_versions(root: &Path) -> String {
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).unwrap_or_default();
    let mut found = vec![];
    let mut name = None;
    for line in lock.lines() {
        if let Some(n) = line.strip_prefix("name = ") {
            name = Some(n.trim_matches('"').to_string());
        } else if let (Some(v), Some(n)) = (line.strip_prefix("version = "), &name) {
            if TRACKED.contains(&n.as_str()) {
                found.push(format!("{n}={}", v.trim_matches('"')));
            }
            name = None;
        }
    }
    found.join(",")
}
