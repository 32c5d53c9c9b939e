//! Whole pipelines: recipes (checked TOML step lists) and their runner, the embedded quickstart,
//! and the report with its plots made from run folders.

pub mod compress;
pub mod device_check;
pub mod dry_run;
pub(crate) mod plot;
pub(crate) mod provenance;
pub mod quickstart;
pub mod recipe;
pub mod report;
pub mod runner;
pub mod seeds;
pub mod step;
pub(crate) mod step_check;
