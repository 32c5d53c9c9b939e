//! Training: fine-tuning (and, through the same loop, other losses), the in-place AdamW,
//! schedules, and the run folder (run.json, metrics.jsonl, best/ and last/ checkpoints).

pub mod distill;
pub mod finetune;
pub mod gates;
pub mod optim;
pub mod run_dir;
pub mod schedule;
