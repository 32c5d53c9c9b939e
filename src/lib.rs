//! surgery: make BERT-style NER models small. Reads Hugging Face checkpoint folders, cuts them
//! with independent surgeries, counts their parameter budget, and runs them with candle.
//!
//! The modules are layers; each imports only the ones listed before it:
//! `util` → `arch` → `io` → `budget` → `data` → `metrics` → `kernels` → `model` → `eval` →
//! (`train`, `cuts`, `export`) → `pipeline`. The command-line interface lives in the binary (`src/cli`).
//!
//! # The API
//! What a Rust caller uses, each the same value the command line parses:
//! - [`io::Checkpoint`]: open (`Checkpoint::open`) and save a Hugging Face checkpoint folder;
//!   [`budget::Budget`] counts its parameters.
//! - [`cuts::registry::SurgeryCommand`]: every cut as a typed command (or one cut's `Spec` and
//!   `apply`, e.g. [`cuts::remove_heads::apply`]): checkpoint in, checkpoint out, no file written.
//! - [`train::command::TrainingCommand::train`] with [`train::spec::CommonArgs`]: every training
//!   command (`train::finetune::FinetuneArgs`, `train::distill::DistillArgs`,
//!   `train::gates::GatesArgs`, `train::focal::FocalArgs`; all listed in
//!   [`train::registry::TrainCommand`]).
//! - [`pipeline::runner::Plan::check`] and [`pipeline::runner::execute`]: load and run a recipe
//!   (resumable); [`pipeline::dry_run::dry_run`] its plan as a typed table;
//!   [`pipeline::step::StepCommand`] one step of any kind.
//! - [`pipeline::compress::compress`]: a budget in, the model and its recipe out.
//! - [`eval::run::run_eval`] and [`export::export_onnx`]: scores and an ONNX model.
//!
//! The other modules are the machinery behind these; the modules no binary or test reaches are
//! crate-private.

pub(crate) mod error;
pub mod util;

pub mod arch;
pub mod io;

pub mod budget;
pub mod data;
pub mod metrics;

pub mod kernels;
pub mod model;

pub mod cuts;
pub mod eval;
pub mod export;
pub mod train;

pub mod pipeline;

pub use error::{Error, Result};
