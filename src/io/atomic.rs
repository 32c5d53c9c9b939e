//! Atomic outputs: everything is written into a temporary sibling and renamed into place at the
//! end, so a failure never leaves a half-written file or folder behind, and an existing output is
//! only replaced when the user asked for it and this tool wrote it. Temporaries left by a killed
//! process (`.NAME.tmp-PID`) are removed by the next write to the same place.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A temporary folder that becomes `target` on [`AtomicDir::commit`] and is removed otherwise.
pub struct AtomicDir {
    temp: PathBuf,
    target: PathBuf,
    force: bool,
    committed: bool,
}

fn temp_sibling(target: &Path) -> Result<PathBuf> {
    let name = target
        .file_name()
        .ok_or_else(|| Error::Spec(format!("{}: not a valid output path", target.display())))?;
    let parent = target.parent().unwrap_or(Path::new("."));
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    // Otherwise the error would name the temporary file inside it.
    if parent.exists() && !parent.is_dir() {
        return Err(Error::Spec(format!(
            "{}: {} is a file, not a folder; choose another output path",
            target.display(),
            parent.display()
        )));
    }
    Ok(parent.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    )))
}

/// Fails early when an output exists and `force` was not given, or when `force` would replace
/// something this tool did not write.
pub fn refuse_existing(target: &Path, force: bool) -> Result<()> {
    super::output::check_output(target, &[], force)
}

/// Removes the temporaries of `target` left by processes that no longer run. A previous version
/// (`.NAME.tmp-PID.old`) left by a kill between the two renames of a replacement is put back when
/// `target` itself is missing, instead of being removed.
pub fn remove_stale_temporaries(target: &Path) {
    let (Some(name), Some(parent)) = (target.file_name(), target.parent()) else {
        return;
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let prefix = format!(".{}.tmp-", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = file_name.strip_prefix(&prefix) else {
            continue;
        };
        let (pid, is_old) = match rest.strip_suffix(".old") {
            Some(pid) => (pid, true),
            None => (rest, false),
        };
        if let Ok(pid) = pid.parse::<u32>() {
            if !process_alive(pid) {
                if is_old && target.symlink_metadata().is_err() {
                    let _ = std::fs::rename(entry.path(), target);
                } else {
                    let _ = remove_any(&entry.path());
                }
            }
        }
    }
}

/// True when a process with this id exists (signal 0 checks without sending anything).
fn process_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks whether the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

impl AtomicDir {
    pub fn create(target: &Path, force: bool) -> Result<Self> {
        refuse_existing(target, force)?;
        remove_stale_temporaries(target);
        let temp = temp_sibling(target)?;
        if temp.exists() {
            std::fs::remove_dir_all(&temp).map_err(|e| Error::io(&temp, e))?;
        }
        std::fs::create_dir_all(&temp).map_err(|e| Error::io(&temp, e))?;
        Ok(AtomicDir {
            temp,
            target: target.to_path_buf(),
            force,
            committed: false,
        })
    }

    /// The path of a file inside the (temporary) folder.
    pub fn path(&self, name: &str) -> PathBuf {
        self.temp.join(name)
    }

    pub fn write(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let path = self.path(name);
        std::fs::write(&path, bytes).map_err(|e| Error::io(&path, e))
    }

    /// Moves the folder into place, replacing an existing target only under `force`.
    pub fn commit(mut self) -> Result<()> {
        refuse_existing(&self.target, self.force)?;
        if self.target.exists() {
            // A run writing into the folder being replaced keeps it (the lock is its own).
            let _lock = if self.target.is_dir() {
                Some(super::lock::FolderLock::acquire(&self.target)?)
            } else {
                None
            };
            let mut old = temp_sibling(&self.target)?.into_os_string();
            old.push(".old");
            let old = PathBuf::from(old);
            std::fs::rename(&self.target, &old).map_err(|e| Error::io(&self.target, e))?;
            std::fs::rename(&self.temp, &self.target).map_err(|e| Error::io(&self.target, e))?;
            let _ = remove_any(&old);
        } else {
            std::fs::rename(&self.temp, &self.target).map_err(|e| Error::io(&self.target, e))?;
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for AtomicDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.temp);
        }
    }
}

/// Removes a file or a whole folder.
pub(crate) fn remove_any(path: &Path) -> std::io::Result<()> {
    if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    }
}

/// Writes a user-named output file atomically (temp file beside it, then rename); an existing
/// one is replaced only under `force` and only when this tool wrote it.
pub fn write_file(
    target: &Path,
    force: bool,
    write: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    refuse_existing(target, force)?;
    replace_file(target, write)
}

/// Writes a file atomically inside a folder this tool owns, replacing an existing one.
pub fn replace_file(target: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if target.is_dir() {
        return Err(Error::Spec(format!(
            "{}: output is a folder, expected a file path",
            target.display()
        )));
    }
    remove_stale_temporaries(target);
    let temp = temp_sibling(target)?;
    let result = write(&temp)
        .and_then(|()| std::fs::rename(&temp, target).map_err(|e| Error::io(target, e)));
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

/// Writes a text file atomically inside a folder this tool owns, replacing an existing one.
pub fn write_text(target: &Path, text: &str) -> Result<()> {
    replace_file(target, |tmp| {
        std::fs::write(tmp, text).map_err(|e| Error::io(tmp, e))
    })
}
