//! What the machine can hold, checked before the work starts: the memory a command will need
//! against the memory available, and the disk space checkpoints will need against the free
//! space, so an absurd size fails in a second with a clear message instead of aborting in the
//! allocator or failing at the first checkpoint after all the compute.

use std::path::Path;

use crate::error::{Error, Result};

/// Bytes of memory the kernel says can be allocated without swapping (`MemAvailable`), or
/// `None` where it cannot be read (then no check is made).
pub fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Fails when `bytes` exceed the available memory. `what` says what needs it.
pub fn require_memory(what: &str, bytes: u64) -> Result<()> {
    match available_memory() {
        Some(available) if bytes > available => Err(Error::Resources(format!(
            "{what} needs about {} of memory but only {} is available",
            human_bytes(bytes),
            human_bytes(available)
        ))),
        _ => Ok(()),
    }
}

/// Free bytes for an unprivileged user on the file system that holds `path` (or its nearest
/// existing ancestor), or `None` where it cannot be read.
pub fn free_space(path: &Path) -> Option<u64> {
    let existing = path.ancestors().find(|p| p.exists())?;
    let existing = if existing.as_os_str().is_empty() {
        Path::new(".")
    } else {
        existing
    };
    let c_path = std::ffi::CString::new(existing.as_os_str().as_encoded_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is a valid NUL-terminated string and stat a valid out-pointer.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) };
    (rc == 0).then(|| stat.f_bavail as u64 * stat.f_frsize as u64)
}

/// Fails when the file system of `path` has less than `bytes` free. `what` says what needs it.
pub fn require_disk(path: &Path, what: &str, bytes: u64) -> Result<()> {
    match free_space(path) {
        Some(free) if bytes > free => Err(Error::Resources(format!(
            "{}: {what} needs about {} of disk space but only {} is free there",
            path.display(),
            human_bytes(bytes),
            human_bytes(free)
        ))),
        _ => Ok(()),
    }
}

/// 1.5 GiB, 320.0 MiB, 12 KiB.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absurd_requests_are_refused_and_small_ones_pass() {
        assert!(require_memory("test", 1 << 20).is_ok());
        let err = require_memory("a model of 1e15 parameters", u64::MAX / 2).unwrap_err();
        assert!(err.to_string().contains("of memory but only"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        assert!(require_disk(dir.path(), "test", 1).is_ok());
        assert!(require_disk(&dir.path().join("new/sub"), "x", u64::MAX / 2).is_err());
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }
}
