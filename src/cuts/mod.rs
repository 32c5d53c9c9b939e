//! Surgeries: each is a function `apply(&Checkpoint, &Spec) -> Outcome` in its own file with a
//! tensor-free `plan`; the outcome carries the new checkpoint, the history entry and a short
//! report. A surgery writes no file; the files it reads are named in its options (calibration
//! and held-out sentences, read once per cut by a [`shared::calibrate::Calibrator`], `remove-heads`'
//! gates file, `prune-vocab`'s corpus).
//! [`registry`] lists them all.

pub mod shared;

pub mod drop_layers;
pub mod factorize_embeddings;
pub mod lowrank_layers;
pub mod magnitude;
pub mod prune_neurons;
pub mod prune_structured;
pub mod prune_vocab;
pub mod registry;
pub mod remove_heads;
pub mod sparsegpt;
pub mod tie_layers;

use std::path::Path;

use candle_core::{Device, Tensor};
use serde::Serialize;

use crate::arch::{Arch, HistoryEntry, Key};
use crate::budget::Budget;
use crate::error::Result;
use crate::io::Checkpoint;

/// A checkpoint-to-checkpoint cut.
pub trait Surgery: clap::Args + serde::Serialize {
    /// The command name; also the recipe kind and the `op` of the history entry.
    const NAME: &'static str;
    /// One line of help.
    const ABOUT: &'static str;
    /// Options that make a valid example on the tiny test models (`{calib}` stands for a small
    /// CoNLL file); the registry's test runs every surgery with them.
    const EXAMPLE: &'static [&'static str];

    /// The files the cut reads besides the checkpoint (calibration data, gates, corpora): the
    /// output must not overlap them either.
    fn reads(&self) -> Vec<&Path> {
        vec![]
    }

    /// The structure after the cut, from the structure alone (no tensor is read).
    fn plan(&self, arch: &Arch) -> Result<Planned>;

    /// The cut itself: a new checkpoint, its history entry and a report (no file is written).
    fn apply(&self, ckpt: &Checkpoint) -> Result<Outcome>;
}

/// What a surgery does to the structure, worked out without reading a tensor (for
/// `surgery run --dry-run`).
#[derive(Debug, Clone)]
pub enum Planned {
    /// The architecture after the surgery (its budget is exact).
    Exact(Arch),
    /// The structure depends on weights or data; the text says on what.
    Unknown(String),
}

/// The result of a surgery.
pub struct Outcome {
    pub checkpoint: Checkpoint,
    pub entry: HistoryEntry,
    /// What the user should see (errors, energies, timings), also printed as JSON.
    pub report: serde_json::Value,
}

impl Outcome {
    /// Builds the outcome: budget before → after and the history entry.
    pub fn new(
        before: &Checkpoint,
        after: Checkpoint,
        op: &str,
        args: impl Serialize,
        report: serde_json::Value,
    ) -> Self {
        let entry = HistoryEntry {
            op: op.to_string(),
            args: serde_json::to_value(args).expect("spec serialises"),
            params_before: Budget::of_arch(&before.arch).unique,
            params_after: Budget::of_arch(&after.arch).unique,
        };
        Outcome {
            checkpoint: after,
            entry,
            report,
        }
    }

    /// Writes the new checkpoint with the history extended by this surgery.
    pub fn save(&self, out: &Path, force: bool) -> Result<()> {
        let mut history = self.checkpoint.history();
        history.push(self.entry.clone());
        self.checkpoint.save(out, force, history)
    }
}

/// A key of stored layer `from` moved to stored layer `to`.
pub fn move_to_layer(key: Key, to: usize) -> Key {
    match key {
        Key::Linear { slot, part, .. } => Key::Linear {
            layer: to,
            slot,
            part,
        },
        Key::LayerNorm { slot, part, .. } => Key::LayerNorm {
            layer: to,
            slot,
            part,
        },
        other => other,
    }
}

/// Surgeries that cut or share encoder layers have nothing to work on in a model without any:
/// a clear error rather than an unchanged copy or an index into no layers.
pub fn require_layers(arch: &Arch, surgery: &str) -> Result<()> {
    if arch.num_layers() == 0 {
        return Err(crate::error::Error::Spec(format!(
            "{surgery}: the model has no encoder layers (num_hidden_layers is 0); there is nothing to cut"
        )));
    }
    Ok(())
}

/// "the model has N layers: 0..N−1", or that it has none.
pub fn layer_range(n: usize) -> String {
    match n {
        0 => "the model has no encoder layers".into(),
        n => format!("the model has {n} layers: 0..{}", n - 1),
    }
}

/// Loads a tensor on the CPU.
pub fn cpu(ckpt: &Checkpoint, key: Key) -> Result<Tensor> {
    ckpt.tensor(key, &Device::Cpu)
}
