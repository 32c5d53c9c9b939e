//! Training: one generic loop ([`trainer`]) and the objectives it runs, each in its own file
//! (an [`objective::Objective`] for the loss, a [`command::TrainingCommand`] for its options)
//! and listed once in [`registry`]; the setup every command shares ([`setup`]: device, run
//! folder, inputs from [`inputs`], resources, fit), AdamW, schedules, and the run folder
//! (run.json, metrics.jsonl, best/, last/).

pub mod command;
pub mod distill;
pub mod finetune;
pub mod focal;
pub mod gates;
pub mod inputs;
pub mod label_smoothing;
pub mod objective;
pub(crate) mod optim;
pub mod registry;
pub mod run_dir;
pub mod schedule;
pub(crate) mod setup;
pub mod spec;
pub mod trainer;
