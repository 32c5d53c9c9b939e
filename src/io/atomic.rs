//! Atomic outputs: everything is written into a temporary sibling and renamed into place at the
//! end, so a failure never leaves a half-written file or folder behind, and an existing output is
//! only replaced when the user asked for it.

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
    Ok(parent.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    )))
}

/// Fails early when an output exists and `force` was not given.
pub fn refuse_existing(target: &Path, force: bool) -> Result<()> {
    if target.exists() && !force {
        return Err(Error::OutputExists {
            path: target.to_path_buf(),
        });
    }
    Ok(())
}

impl AtomicDir {
    pub fn create(target: &Path, force: bool) -> Result<Self> {
        refuse_existing(target, force)?;
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
            let old = temp_sibling(&self.target)?.with_extension("old");
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

fn remove_any(path: &Path) -> std::io::Result<()> {
    if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    }
}

/// Writes one file atomically (temp file beside it, then rename).
pub fn write_file(
    target: &Path,
    force: bool,
    write: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    refuse_existing(target, force)?;
    if target.is_dir() {
        return Err(Error::Spec(format!(
            "{}: output is a folder, expected a file path",
            target.display()
        )));
    }
    let temp = temp_sibling(target)?;
    let result = write(&temp)
        .and_then(|()| std::fs::rename(&temp, target).map_err(|e| Error::io(target, e)));
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

/// Writes a text file atomically, replacing an existing one.
pub fn write_text(target: &Path, text: &str) -> Result<()> {
    write_file(target, true, |tmp| {
        std::fs::write(tmp, text).map_err(|e| Error::io(tmp, e))
    })
}
