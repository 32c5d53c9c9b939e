//! What this binary was built from, recorded in every run's `run.json`.

/// The commit of this repository the binary was built from (`-dirty` when tracked files had
/// changes), or `unknown` when it was built outside git.
pub const GIT_COMMIT: &str = env!("SURGERY_GIT_COMMIT");

/// This crate's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The versions of the dependencies that decide the numbers, as resolved in Cargo.lock.
pub fn dependencies() -> serde_json::Map<String, serde_json::Value> {
    env!("SURGERY_DEPENDENCIES")
        .split(',')
        .filter_map(|pair| pair.split_once('='))
        .map(|(name, version)| (name.to_string(), version.into()))
        .collect()
}
