//! Whether a finished recipe step is still done: its spec hash says its options are the same;
//! this module says whether the files it read (input checkpoint, data) and the files it wrote
//! are still what they were when it finished. A step whose data file was corrected in place,
//! whose model was truncated or edited by hand, or whose input model changed, runs again, and
//! the runner shows why.
//!
//! The check is cheap on a resume: each file is compared by size and modification time (one
//! `stat`); only a file whose time changed and whose size did not is read again, and its CRC-64
//! compared with the recorded one (a file touched, or rewritten with the same bytes, is still
//! the same). The CRC is computed once, when the step finishes.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use crate::error::{Error, Result};
use crate::io::artefacts::{FileStamp, FolderListing, StepFiles};
use crate::pipeline::recipe::{Arg, Step};
use crate::util::hash::file_crc64;

/// Options the runner fills in, or that name files a step writes (not checked for existence).
pub const WRITTEN: [&str; 5] = [
    "out",
    "output",
    "save-json",
    "write-predictions",
    "cache-teacher",
];

/// Files in a step's folder that say how the step was made, not what it is: rewritten by the
/// runner after the step, so neither read nor compared.
const PROVENANCE: [&str; 3] = ["step.json", "recipe-step.toml", "README.md"];

/// Weight formats this tool never reads (a Hugging Face folder often holds them beside
/// `model.safetensors`): not checksummed, which would read hundreds of MB for nothing.
const UNREAD_EXTENSIONS: [&str; 7] = ["bin", "h5", "msgpack", "ot", "onnx", "pt", "pth"];

/// The paths a step reads: its input and the values of its path options (`is_path`), earlier
/// steps' outputs included, as `resolve` turns them into paths.
pub fn input_paths(
    step: &Step,
    resolve: &dyn Fn(&Arg) -> String,
    is_path: &dyn Fn(&str) -> bool,
) -> Vec<PathBuf> {
    let mut paths = vec![PathBuf::from(resolve(&step.input))];
    for option in &step.options {
        if WRITTEN.contains(&option.key.as_str()) || !is_path(&option.key) {
            continue;
        }
        paths.extend(option.values.iter().map(|v| PathBuf::from(resolve(v))));
    }
    paths
}

/// The files of `path`: itself, or for a folder the files directly in it (a checkpoint is a
/// flat folder), without hidden files, provenance and weight formats this tool does not read.
fn files_of(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = vec![];
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let unread = Path::new(&name)
            .extension()
            .is_some_and(|e| UNREAD_EXTENSIONS.contains(&e.to_string_lossy().as_ref()));
        if name.starts_with('.') || PROVENANCE.contains(&name.as_str()) || unread {
            continue;
        }
        if entry.path().is_file() {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}

fn modified_ns(meta: &std::fs::Metadata) -> u64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64)
}

fn stamp(path: &Path) -> Result<FileStamp> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    Ok(FileStamp {
        path: path.to_path_buf(),
        size: meta.len(),
        modified_ns: modified_ns(&meta),
        crc64: file_crc64(path).map_err(|e| Error::io(path, e))?,
    })
}

/// Stamps of the files of `paths` (files, or folders taken file by file), and the listings of
/// the folders among them.
fn stamps(paths: &[PathBuf], folders: &mut Vec<FolderListing>) -> Result<Vec<FileStamp>> {
    let mut out: Vec<FileStamp> = vec![];
    for path in paths {
        if !path.exists() {
            continue;
        }
        let files = files_of(path).map_err(|e| Error::io(path, e))?;
        if path.is_dir() {
            folders.push(FolderListing {
                path: path.clone(),
                files: files.iter().map(|f| file_name(f)).collect(),
            });
        }
        for file in files {
            if !out.iter().any(|s| s.path == file) {
                out.push(stamp(&file)?);
            }
        }
    }
    Ok(out)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Records what a finished step read and wrote (computing each file's checksum once).
pub fn record(read: &[PathBuf], written: &[PathBuf]) -> Result<StepFiles> {
    let mut folders = vec![];
    Ok(StepFiles {
        read: stamps(read, &mut folders)?,
        written: stamps(written, &mut folders)?,
        folders,
    })
}

/// `Ok` when every recorded file is unchanged (same size, and same time or same checksum) and
/// every recorded folder holds the same files; else why the step must run again.
pub fn verify(files: Option<&StepFiles>) -> std::result::Result<(), String> {
    let Some(files) = files else {
        return Err(
            "its step.json does not record the files it read and wrote (an older \
                    version wrote it)"
                .into(),
        );
    };
    for folder in &files.folders {
        let now: Vec<String> = files_of(&folder.path)
            .map_err(|e| format!("{}: {e}", folder.path.display()))?
            .iter()
            .map(|f| file_name(f))
            .collect();
        if now != folder.files {
            let added: Vec<&str> = now
                .iter()
                .filter(|f| !folder.files.contains(f))
                .map(String::as_str)
                .collect();
            let removed: Vec<&str> = folder
                .files
                .iter()
                .filter(|f| !now.contains(f))
                .map(String::as_str)
                .collect();
            return Err(format!(
                "the files of {} changed (added: [{}], removed: [{}])",
                folder.path.display(),
                added.join(", "),
                removed.join(", ")
            ));
        }
    }
    for (stamp, role) in files
        .read
        .iter()
        .map(|s| (s, "its input"))
        .chain(files.written.iter().map(|s| (s, "its output")))
    {
        unchanged(stamp).map_err(|what| format!("{role} {} {what}", stamp.path.display()))?;
    }
    Ok(())
}

/// `Ok` when the file matches its stamp, else what changed.
fn unchanged(stamp: &FileStamp) -> std::result::Result<(), String> {
    let meta = std::fs::metadata(&stamp.path).map_err(|_| "is missing".to_string())?;
    if meta.len() != stamp.size {
        return Err(format!(
            "changed size ({} → {} bytes)",
            stamp.size,
            meta.len()
        ));
    }
    if modified_ns(&meta) == stamp.modified_ns {
        return Ok(());
    }
    match file_crc64(&stamp.path) {
        Ok(crc) if crc == stamp.crc64 => Ok(()),
        Ok(_) => Err("changed content (same size, other bytes)".into()),
        Err(e) => Err(format!("cannot be read: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_truncation_and_new_files_are_seen_a_touch_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m");
        std::fs::create_dir(&model).unwrap();
        std::fs::write(model.join("config.json"), "{}").unwrap();
        std::fs::write(model.join("model.safetensors"), vec![7u8; 4096]).unwrap();
        std::fs::write(model.join("README.md"), "card").unwrap();
        let data = dir.path().join("train.txt");
        std::fs::write(&data, "John B-PER\n").unwrap();
        let files = record(std::slice::from_ref(&data), std::slice::from_ref(&model)).unwrap();
        assert_eq!(files.written.len(), 2, "provenance files are not stamped");
        assert_eq!(verify(Some(&files)), Ok(()));

        // The same bytes written again (a new time): still the same.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&data, "John B-PER\n").unwrap();
        assert_eq!(verify(Some(&files)), Ok(()));
        // Corrected in place, same size.
        std::fs::write(&data, "John B-LOC\n").unwrap();
        let why = verify(Some(&files)).unwrap_err();
        assert!(
            why.contains("train.txt") && why.contains("content"),
            "{why}"
        );
        std::fs::write(&data, "John B-PER\n").unwrap();

        // Truncated weights.
        std::fs::write(model.join("model.safetensors"), vec![7u8; 100]).unwrap();
        let why = verify(Some(&files)).unwrap_err();
        assert!(why.contains("its output") && why.contains("size"), "{why}");
        std::fs::write(model.join("model.safetensors"), vec![7u8; 4096]).unwrap();
        assert_eq!(verify(Some(&files)), Ok(()));

        // A file added to a folder; a model card rewritten is not a change.
        std::fs::write(model.join("README.md"), "another card").unwrap();
        assert_eq!(verify(Some(&files)), Ok(()));
        std::fs::write(model.join("tokenizer.json"), "{}").unwrap();
        let why = verify(Some(&files)).unwrap_err();
        assert!(why.contains("tokenizer.json"), "{why}");

        assert!(verify(None).unwrap_err().contains("older version"));
    }
}
