//! Training: one generic loop ([`trainer`]) and the objectives it runs ([`finetune`]
//! cross-entropy and [`label_smoothing`], [`distill`] knowledge distillation, [`gates`] head gates
//! with an L0 penalty), the inputs they share ([`inputs`]), the in-place AdamW, schedules, and
//! the run folder (run.json, metrics.jsonl, best/, last/).

pub mod distill;
pub mod finetune;
pub mod gates;
pub mod inputs;
pub mod label_smoothing;
pub mod objective;
pub mod optim;
pub mod run_dir;
pub mod schedule;
pub mod spec;
pub mod trainer;
