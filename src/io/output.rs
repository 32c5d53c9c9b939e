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
    check_no_overlap(target, inputs)?;
    // What the path really names (`new/..` is its parent): that is what would be replaced.
    let real = absolute(target);
    if target.symlink_metadata().is_err() && real.symlink_metadata().is_err() {
        return Ok(());
    }
    if !force {
        return Err(Error::OutputExists {
            path: target.to_path_buf(),
        });
    }
    if !is_tool_output(&real) && !also_ours(&real) {
        return Err(Error::NotOurs {
            path: target.to_path_buf(),
        });
    }
    Ok(())
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

fn json_written_by_us(path: &Path) -> bool {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("written_by")?.as_str().map(String::from))
        .is_some_and(|w| w.starts_with("surgery"))
}

/// Reads only the header of a safetensors file (at most 1 MiB) for the `surgery_tool` key.
fn safetensors_written_by_us(path: &Path) -> bool {
    use std::io::Read;
    let Ok(mut file) = std::fs::File::open(path) else {
        return false;
    };
    let mut len = [0u8; 8];
    if file.read_exact(&mut len).is_err() {
        return false;
    }
    let len = u64::from_le_bytes(len);
    if len > 1 << 20 {
        return false;
    }
    let mut header = vec![0u8; len as usize];
    if file.read_exact(&mut header).is_err() {
        return false;
    }
    serde_json::from_slice::<serde_json::Value>(&header)
        .ok()
        .is_some_and(|v| v["__metadata__"].get("surgery_tool").is_some())
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
