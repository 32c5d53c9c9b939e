//! The run folder of a training job: `run.json` (spec, versions, git commit, data hashes),
//! `metrics.jsonl` (one JSON line per log or eval), `best/` (best checkpoint by dev F1) and
//! `last/` (weights + optimizer state + step + generator, for resuming).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::arch::HistoryEntry;
use crate::error::{Error, Result};
use crate::io::atomic::AtomicDir;
use crate::io::tensor_file::{write_safetensors, RawTensor};
use crate::io::{Checkpoint, TensorStore};
use crate::rng::Rng;
use crate::train::optim::AdamW;

/// Where the loop stands; saved with `last/` so a run resumes exactly.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Progress {
    pub step: usize,
    pub epoch: usize,
    /// Batches of `epoch` already done.
    pub batch_in_epoch: usize,
    /// The dropout generator.
    pub rng: Rng,
    pub best_f1: Option<f64>,
    pub best_step: Option<usize>,
    /// Hash of the spec the run was started with (resume refuses a different one).
    pub spec_hash: String,
}

pub struct RunDir {
    pub path: PathBuf,
}

/// FNV-1a 64-bit: a fast, dependency-free content hash for provenance (not for security).
pub fn fnv1a(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The git commit of the working directory, or "unknown".
pub fn git_commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

impl RunDir {
    /// Opens a run folder: a new one (must not exist unless `force`), or an existing one when
    /// resuming.
    pub fn open(path: &Path, resume: bool, force: bool) -> Result<Self> {
        if path.exists() && !resume {
            if !force {
                return Err(Error::OutputExists {
                    path: path.to_path_buf(),
                });
            }
            std::fs::remove_dir_all(path).map_err(|e| Error::io(path, e))?;
        }
        std::fs::create_dir_all(path).map_err(|e| Error::io(path, e))?;
        Ok(RunDir {
            path: path.to_path_buf(),
        })
    }

    pub fn best(&self) -> PathBuf {
        self.path.join("best")
    }

    pub fn last(&self) -> PathBuf {
        self.path.join("last")
    }

    /// Writes `run.json` (atomically).
    pub fn write_run_json(&self, value: &serde_json::Value) -> Result<()> {
        let path = self.path.join("run.json");
        let text = serde_json::to_string_pretty(value).expect("json");
        crate::io::atomic::write_file(&path, true, |tmp| {
            std::fs::write(tmp, text.as_bytes()).map_err(|e| Error::io(tmp, e))
        })
    }

    /// Appends one line to `metrics.jsonl`.
    pub fn log(&self, value: &serde_json::Value) -> Result<()> {
        let path = self.path.join("metrics.jsonl");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        writeln!(f, "{value}").map_err(|e| Error::io(&path, e))
    }

    /// Saves weights, optimizer moments and progress into `last/`, replacing the previous one.
    pub fn save_last(
        &self,
        ckpt: &Checkpoint,
        history: Vec<HistoryEntry>,
        optimizer: &AdamW,
        progress: &Progress,
    ) -> Result<()> {
        let last = self.last();
        let staging = self.path.join("last.staging");
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
        }
        ckpt.save(&staging.join("model"), true, history)?;
        let folder = AtomicDir::create(&staging.join("state"), true)?;
        let mut tensors = vec![];
        for p in &optimizer.params {
            let name = &p.name;
            let shape = p.var.dims().to_vec();
            tensors.push((format!("m.{name}"), RawTensor::f32(shape.clone(), &p.m)));
            tensors.push((format!("v.{name}"), RawTensor::f32(shape, &p.v)));
            if p.external {
                tensors.push((
                    format!("value.{name}"),
                    RawTensor::from_tensor(p.var.as_tensor())?,
                ));
            }
        }
        let mut meta = HashMap::new();
        meta.insert("optimizer_step".into(), optimizer.step.to_string());
        write_safetensors(&folder.path("optimizer.safetensors"), tensors, meta)?;
        folder.write(
            "progress.json",
            serde_json::to_string_pretty(progress)
                .expect("json")
                .as_bytes(),
        )?;
        folder.commit()?;
        // Swap staging into place: last/ is always either the old or the new complete state.
        let old = self.path.join("last.old");
        if last.exists() {
            std::fs::rename(&last, &old).map_err(|e| Error::io(&last, e))?;
        }
        std::fs::rename(&staging, &last).map_err(|e| Error::io(&last, e))?;
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
        }
        Ok(())
    }

    /// Loads `last/` if present: the checkpoint, the progress, and the optimizer moments into
    /// `optimizer` (whose parameters must have the same keys and shapes).
    pub fn load_last(&self) -> Result<Option<(Checkpoint, Progress, TensorStore)>> {
        let last = self.last();
        if !last.join("state/progress.json").is_file() {
            return Ok(None);
        }
        let ckpt = Checkpoint::open(&last.join("model"))?;
        let path = last.join("state/progress.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let progress: Progress = serde_json::from_str(&text).map_err(|e| Error::Input {
            path: path.clone(),
            line: e.line(),
            msg: e.to_string(),
        })?;
        let store = TensorStore::open_files(&[last.join("state/optimizer.safetensors")])?;
        Ok(Some((ckpt, progress, store)))
    }
}

/// Restores optimizer moments saved by [`RunDir::save_last`].
pub fn restore_optimizer(optimizer: &mut AdamW, store: &TensorStore) -> Result<()> {
    optimizer.step = store
        .metadata
        .get("optimizer_step")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    for p in &mut optimizer.params {
        let name = p.name.clone();
        for (prefix, target) in [("m.", &mut p.m), ("v.", &mut p.v)] {
            let t: Tensor = store.load_f32(&format!("{prefix}{name}"), &Device::Cpu)?;
            let values = t.flatten_all()?.to_vec1::<f32>()?;
            if values.len() != target.len() {
                return Err(Error::Shape {
                    path: store.main_path().to_path_buf(),
                    key: format!("{prefix}{name}"),
                    expected: p.var.dims().to_vec(),
                    actual: t.dims().to_vec(),
                });
            }
            *target = values;
        }
        if p.external {
            p.var
                .set(&store.load_f32(&format!("value.{name}"), &Device::Cpu)?)?;
        }
    }
    Ok(())
}
