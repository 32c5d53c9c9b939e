//! Small helpers every layer may use: the seeded generator, content hashes, the build's own
//! provenance and the CLI's exit statuses.

pub mod build_info;
pub mod exit;
pub mod hash;
pub mod rng;
pub mod shell;
