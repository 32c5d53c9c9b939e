//! Which paths a command may write: an output never overlaps an input (it is not the input, does
//! not contain it and does not lie inside it), and an existing output is replaced only with
//! `--force` and only when this tool wrote it. This is what keeps `--force` from deleting a
//! folder of user files, a data file, or the run folder the input checkpoint lives in.

use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// The marker file of folders this tool writes that have no other marker (reports, quickstart).
pub const MARKER: &str = ".surgery-output";

/// Checks that `target` may be written: no overlap with any of `inputs`, and an existing target
/// only under `force` and only when this tool wrote it.
pub fn check_output(target: &Path, inputs: &[&Path], force: bool) -> Result<()> {
    check_output_with(target, inputs, force, |_| false)
}

/// [`check_output`] for outputs that carry no marker: `also_ours` recognises them.
pub fn check_output_with(
    target: &Path,
    inputs: &[&Path],
    force: bool,
    also_ours: impl Fn(&Path) -> bool,
) -> Result<()> {
    if let Some(real) = replaced_by(target, inputs, force)? {
        if !is_tool_output(&real) && !also_ours(&real) {
            return Err(Error::NotOurs {
                path: target.to_path_buf(),
            });
        }
    }
    Ok(())
}

/// What writing `target` would replace: None when nothing is there; an error on an overlap with
/// `inputs`, or when something is there and `force` was not given.
fn replaced_by(target: &Path, inputs: &[&Path], force: bool) -> Result<Option<PathBuf>> {
    check_no_overlap(target, inputs)?;
    // What the path really names (`new/..` is its parent): that is what would be replaced.
    let real = absolute(target);
    if target.symlink_metadata().is_err() && real.symlink_metadata().is_err() {
        return Ok(None);
    }
    if !force {
        return Err(Error::OutputExists {
            path: target.to_path_buf(),
        });
    }
    Ok(Some(real))
}

/// Refuses an output that is, contains, or lies inside one of `inputs`.
pub fn check_no_overlap(target: &Path, inputs: &[&Path]) -> Result<()> {
    let out = absolute(target);
    for input in inputs {
        let inp = absolute(input);
        if out.starts_with(&inp) || inp.starts_with(&out) {
            return Err(Error::OutputOverlapsInput {
                output: target.to_path_buf(),
                input: input.to_path_buf(),
            });
        }
    }
    Ok(())
}

/// The kind of a single output file. `--force` replaces a file only with one of the same kind,
/// so that a path mistyped into another output (a checkpoint's `model.safetensors`, an export's
/// `labels.json`) is refused instead of overwritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// `eval --write-predictions`: lines `word gold predicted`.
    Predictions,
    /// `forward --out`: a safetensors file of ids, mask, hidden states (and logits).
    ForwardOutput,
    /// `eval --save-json`: an evaluation record.
    EvalJson,
}

impl FileKind {
    fn describe(self) -> &'static str {
        match self {
            FileKind::Predictions => "a predictions file written by `surgery eval`",
            FileKind::ForwardOutput => "an output of `surgery forward`",
            FileKind::EvalJson => "an evaluation record written by `surgery eval --save-json`",
        }
    }

    /// True when the existing file at `path` is of this kind.
    pub fn recognises(self, path: &Path) -> bool {
        match self {
            FileKind::Predictions => is_predictions_file(path),
            FileKind::ForwardOutput => safetensors_header(path).is_some_and(|h| {
                h["__metadata__"].get("surgery_tool").is_some()
                    && h.get("last_hidden_state").is_some()
                    && h.get("input_ids").is_some()
            }),
            FileKind::EvalJson => read_json(path).is_some_and(|v| {
                v.get("written_by")
                    .and_then(|w| w.as_str())
                    .is_some_and(|w| w.starts_with("surgery") && w.ends_with(" eval"))
                    && v.get("f1").is_some()
            }),
        }
    }
}

/// Checks that the file `target` may be written: no overlap with `inputs`, and an existing file
/// only under `force` and only when it is of the same `kind` (see [`FileKind`]).
pub fn check_file_output(
    target: &Path,
    inputs: &[&Path],
    force: bool,
    kind: FileKind,
) -> Result<()> {
    if let Some(real) = replaced_by(target, inputs, force)? {
        if !real.is_file() || !kind.recognises(&real) {
            return Err(Error::NotSameKind {
                path: target.to_path_buf(),
                kind: kind.describe(),
            });
        }
    }
    Ok(())
}

/// Refuses a folder this tool writes files into (a cache) that is or lies inside one of
/// `inputs`: the written files would land in the user's input.
pub fn check_not_inside(target: &Path, inputs: &[&Path]) -> Result<()> {
    let out = absolute(target);
    for input in inputs {
        if out.starts_with(absolute(input)) {
            return Err(Error::OutputOverlapsInput {
                output: target.to_path_buf(),
                input: input.to_path_buf(),
            });
        }
    }
    Ok(())
}

/// A file `eval --write-predictions` wrote: every non-blank line `word gold predicted`.
fn is_predictions_file(path: &Path) -> bool {
    let Ok(lines) = super::text_input::Lines::open(path) else {
        return false;
    };
    let mut any = false;
    for line in lines {
        let Ok(line) = line else {
            return false;
        };
        if line.trim().is_empty() {
            continue;
        }
        let cols: Vec<&str> = line.split_whitespace().collect();
        let tags_ok = cols.len() == 3
            && cols[1..]
                .iter()
                .all(|t| crate::arch::tags::check_tag(t).is_ok());
        if !tags_ok {
            return false;
        }
        any = true;
    }
    any
}

/// True when `path` is something this tool wrote: a folder holding `step.json`, `run.json`, the
/// marker file, or a `config.json` with a `surgery` block; or a file of a kind this tool writes
/// (a safetensors file with `surgery_tool` metadata, a JSON file with `written_by: surgery`).
pub fn is_tool_output(path: &Path) -> bool {
    let Ok(meta) = path.symlink_metadata() else {
        return false;
    };
    if meta.is_dir() {
        return ["step.json", "run.json", MARKER]
            .iter()
            .any(|m| path.join(m).is_file())
            || config_has_surgery_block(&path.join("config.json"));
    }
    if meta.is_file() {
        return safetensors_written_by_us(path) || json_written_by_us(path);
    }
    false
}

/// Writes the marker file into a folder this tool made.
pub fn mark(dir: &Path, kind: &str) -> Result<()> {
    let path = dir.join(MARKER);
    let text = format!(
        "{{\"written_by\": \"surgery {}\", \"kind\": \"{kind}\"}}\n",
        env!("CARGO_PKG_VERSION")
    );
    std::fs::write(&path, text).map_err(|e| Error::io(&path, e))
}

fn config_has_surgery_block(path: &Path) -> bool {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|v| v.get("surgery").is_some_and(|s| s.is_object()))
}

/// A JSON file of at most 64 MiB (larger ones are not artefacts of this tool).
fn read_json(path: &Path) -> Option<serde_json::Value> {
    if std::fs::metadata(path).ok()?.len() > 64 << 20 {
        return None;
    }
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

fn json_written_by_us(path: &Path) -> bool {
    read_json(path)
        .and_then(|v| v.get("written_by")?.as_str().map(String::from))
        .is_some_and(|w| w.starts_with("surgery"))
}

/// The header of a safetensors file (read alone, at most 1 MiB), or None.
fn safetensors_header(path: &Path) -> Option<serde_json::Value> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).ok()?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).ok()?;
    let len = u64::from_le_bytes(len);
    if len > 1 << 20 {
        return None;
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header).ok()?;
    serde_json::from_slice(&header).ok()
}

/// A safetensors file with `surgery_tool` metadata.
fn safetensors_written_by_us(path: &Path) -> bool {
    safetensors_header(path).is_some_and(|v| v["__metadata__"].get("surgery_tool").is_some())
}

/// The absolute, symlink-resolved form of a path that may not exist yet, resolved the way the
/// kernel would: component by component, each existing prefix canonicalised (so `link/..` is the
/// parent of the link's target), and `..` after a missing component taken lexically.
pub fn absolute(path: &Path) -> PathBuf {
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .unwrap_or_else(|_| PathBuf::from("/"))
            .join(path)
    };
    let mut out = PathBuf::new();
    let mut exists = true;
    for component in joined.components() {
        match component {
            Component::Prefix(_) | Component::RootDir => out.push(component.as_os_str()),
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
                exists = out.exists();
            }
            Component::Normal(name) => {
                out.push(name);
                if exists {
                    match out.canonicalize() {
                        Ok(real) => out = real,
                        Err(_) => exists = false,
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_is_equal_ancestor_or_descendant() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        std::fs::create_dir_all(run.join("best")).unwrap();
        let best = run.join("best");
        assert!(check_no_overlap(&run, &[&best]).is_err());
        assert!(check_no_overlap(&best, &[&best]).is_err());
        assert!(check_no_overlap(&best.join("x/../y"), &[&best]).is_err());
        // `link/..` is the parent of the link's target, not the link's folder.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&best, &link).unwrap();
        assert!(check_no_overlap(&link.join(".."), &[&best]).is_err());
        // A missing folder followed by `..` names the existing parent.
        let user = dir.path().join("user");
        std::fs::create_dir(&user).unwrap();
        std::fs::write(user.join("notes.txt"), "keep").unwrap();
        let sneaky = user.join("new").join("..");
        assert!(check_output(&sneaky, &[], true).is_err());
        assert_eq!(absolute(&sneaky), absolute(&user));
        assert!(check_no_overlap(&dir.path().join("other"), &[&best]).is_ok());
        // A sibling whose name starts with the input's name is not inside it.
        assert!(check_no_overlap(&dir.path().join("run2"), &[&run]).is_ok());
    }

    #[test]
    fn only_marked_folders_count_as_ours() {
        let dir = tempfile::tempdir().unwrap();
        let user = dir.path().join("user");
        std::fs::create_dir(&user).unwrap();
        std::fs::write(user.join("notes.txt"), "keep").unwrap();
        std::fs::write(user.join("config.json"), r#"{"hidden_size": 4}"#).unwrap();
        assert!(!is_tool_output(&user));
        std::fs::write(
            user.join("config.json"),
            r#"{"surgery": {"format_version": 1}}"#,
        )
        .unwrap();
        assert!(is_tool_output(&user));
        let file = dir.path().join("train.txt");
        std::fs::write(&file, "EU B-ORG\n").unwrap();
        assert!(!is_tool_output(&file));
        std::fs::write(&file, r#"{"written_by": "surgery eval"}"#).unwrap();
        assert!(is_tool_output(&file));
    }
}
