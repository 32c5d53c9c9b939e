//! Small helpers every layer may use: the seeded generator, content hashes, the build's own
//! provenance, the CLI's exit statuses and the precision setting of matrix products.

pub mod build_info;
pub(crate) mod excerpt;
pub mod exit;
pub(crate) mod hash;
pub mod options;
pub mod precision;
pub mod progress;
pub mod rng;
pub mod shell;
