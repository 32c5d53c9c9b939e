//! The run folder of a training job: `run.json` (spec, versions, git commit, data hashes),
//! `metrics.jsonl` (one JSON line per log or eval), `best/` (best checkpoint by dev F1) and
//! `last/` (weights + optimizer state + step + generator, for resuming).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::arch::HistoryEntry;
use crate::error::{Error, Result};
use crate::io::artefacts::{append_metric, read_json, write_json, MetricLine, RunRecord};
use crate::io::atomic::AtomicDir;
use crate::io::lock::{FolderLock, LOCK_FILE};
use crate::io::output::{absolute, check_no_overlap, check_output, is_tool_output, MARKER};
use crate::io::tensor_file::{write_safetensors, RawTensor};
use crate::io::tensorboard::EventWriter;
use crate::io::{Checkpoint, TensorStore};
use crate::train::optim::AdamW;
use crate::util::rng::Rng;

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

/// An open run folder, locked for as long as this value lives.
pub struct RunDir {
    pub path: PathBuf,
    /// True when the folder holds a run to continue (`last/` is there).
    pub resuming: bool,
    /// Created by this run and nothing recorded in it yet: removed again if the run fails
    /// before it writes `run.json` (bad data, too little memory), so a rerun is not refused.
    provisional: std::cell::Cell<bool>,
    /// Mirrors `metrics.jsonl` into TensorBoard event files when asked (`--tensorboard`).
    tensorboard: std::cell::RefCell<Option<EventWriter>>,
    _lock: FolderLock,
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if self.provisional.get() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Whether a run continues what its folder holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Resume {
    /// A new run: the folder must not exist (or, with `--force`, be a run this tool wrote).
    #[default]
    No,
    /// `--resume`: the folder must hold a resumable run.
    Required,
    /// The recipe runner: continue when the folder holds a resumable run, else start in it.
    IfPresent,
}

impl RunDir {
    /// Opens and locks a run folder. It never overlaps an input; an existing folder is replaced
    /// (`force`) or continued (`resume`) only when it is a run this tool wrote.
    pub fn open(given: &Path, inputs: &[&Path], resume: Resume, force: bool) -> Result<Self> {
        check_no_overlap(given, inputs)?;
        // Everything below works on what the path really names (`new/..` is its parent).
        let path = &absolute(given);
        let existed = path.symlink_metadata().is_ok();
        match resume {
            Resume::Required if !path.is_dir() => {
                return Err(Error::NothingToResume {
                    path: path.to_path_buf(),
                    why: "no such run folder".into(),
                })
            }
            Resume::No if existed => check_output(path, &[], force)?,
            _ if existed && !is_tool_output(path) => {
                return Err(Error::NotOurs {
                    path: path.to_path_buf(),
                })
            }
            _ => {}
        }
        std::fs::create_dir_all(path).map_err(|e| Error::io(path, e))?;
        let lock = FolderLock::acquire(path)?;
        // Under the lock: what the folder holds now decides.
        recover_last(path)?;
        let resumable =
            path.join("run.json").is_file() && path.join("last/state/progress.json").is_file();
        let resuming = match resume {
            Resume::Required if !resumable => {
                return Err(Error::NothingToResume {
                    path: path.to_path_buf(),
                    why: "it holds no last/ checkpoint; start the run again with --force".into(),
                })
            }
            Resume::Required => true,
            Resume::IfPresent if resumable => true,
            Resume::No if !force && path.join("run.json").exists() => {
                return Err(Error::OutputExists {
                    path: path.to_path_buf(),
                })
            }
            _ => {
                clear_run(path)?;
                false
            }
        };
        Ok(RunDir {
            path: path.to_path_buf(),
            resuming,
            provisional: std::cell::Cell::new(!existed),
            tensorboard: std::cell::RefCell::new(None),
            _lock: lock,
        })
    }

    pub fn best(&self) -> PathBuf {
        self.path.join("best")
    }

    pub fn last(&self) -> PathBuf {
        self.path.join("last")
    }

    /// Writes `run.json` (atomically).
    pub fn write_run_json(&self, record: &RunRecord) -> Result<()> {
        self.provisional.set(false);
        write_json(&self.path.join("run.json"), record)
    }

    /// Also writes every metric line to `tensorboard/` as TensorBoard events.
    pub fn enable_tensorboard(&self) -> Result<()> {
        *self.tensorboard.borrow_mut() = Some(EventWriter::create(&self.path.join("tensorboard"))?);
        Ok(())
    }

    /// Appends one line to `metrics.jsonl` (and to the TensorBoard events when enabled).
    pub fn log(&self, line: MetricLine) -> Result<()> {
        append_metric(&self.path.join("metrics.jsonl"), &line)?;
        if let Some(writer) = self.tensorboard.borrow_mut().as_mut() {
            let (step, values) = line.scalars();
            writer.scalars(step, &values)?;
        }
        Ok(())
    }

    /// Drops the lines of `metrics.jsonl` and the TensorBoard events logged after `step` (and a
    /// line or record cut short by a kill):
    /// a resumed run continues from `last/` at `step` and logs those steps again.
    pub fn forget_metrics_after(&self, step: usize) -> Result<()> {
        crate::io::tensorboard::forget_steps_after(&self.path.join("tensorboard"), step)?;
        let path = self.path.join("metrics.jsonl");
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(());
        };
        let kept: String = text
            .split_inclusive('\n')
            .filter(|line| line.ends_with('\n'))
            .filter(|line| {
                serde_json::from_str::<serde_json::Value>(line)
                    .ok()
                    .and_then(|v| v["step"].as_u64())
                    .is_none_or(|s| s <= step as u64)
            })
            .collect();
        if kept.len() == text.len() {
            return Ok(());
        }
        crate::io::atomic::write_text(&path, &kept)
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
            let (m, v) = p.moments_to_host()?;
            tensors.push((format!("m.{name}"), RawTensor::f32(shape.clone(), &m)));
            tensors.push((format!("v.{name}"), RawTensor::f32(shape, &v)));
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
        let progress = serde_json::to_string_pretty(progress)
            .map_err(|e| Error::Internal(format!("the progress does not serialise: {e}")))?;
        folder.write("progress.json", progress.as_bytes())?;
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
        let progress: Progress = read_json(&last.join("state/progress.json"))?;
        let store = TensorStore::open_files(&[last.join("state/optimizer.safetensors")])?;
        Ok(Some((ckpt, progress, store)))
    }
}

/// A resumed run must read the data it started with: the hashes `run.json` recorded for each
/// data file (`provenance.files`) are compared with the files given now. A run folder from a
/// version that recorded none is resumed as before.
pub fn check_resumed_data(run: &Path, provenance: &serde_json::Value) -> Result<()> {
    // A damaged run.json must not turn the check off.
    let path = run.join("run.json");
    let record = read_json::<serde_json::Value>(&path)?;
    if !record.is_object() {
        return Err(Error::Input {
            path,
            line: 1,
            msg: "not a run record (a JSON object); start the run again with --force".into(),
        });
    }
    let (Some(before), Some(now)) = (
        record["provenance"]["files"].as_object(),
        provenance["files"].as_object(),
    ) else {
        return Ok(());
    };
    for (role, old) in before {
        let new = &now.get(role).cloned().unwrap_or_default();
        if old["fnv1a64"] != new["fnv1a64"] {
            let shown = |v: &serde_json::Value| v["path"].as_str().unwrap_or("none").to_string();
            return Err(Error::Spec(format!(
                "{}: the run was started with --{role} {} (content hash {}), but --{role} {} differs; resume with the same data or start a new run",
                run.display(),
                shown(old),
                old["fnv1a64"].as_str().unwrap_or("?"),
                shown(new)
            )));
        }
    }
    Ok(())
}

/// A kill between the two renames of [`RunDir::save_last`] leaves the complete state in
/// `last.old` and no `last/`: put it back. Otherwise `last.old` and `last.staging` are leftovers.
/// A kill while best/ was replaced is repaired the same way.
fn recover_last(run: &Path) -> Result<()> {
    let (last, old, staging) = (
        run.join("last"),
        run.join("last.old"),
        run.join("last.staging"),
    );
    if !last.exists() && old.join("state/progress.json").is_file() {
        std::fs::rename(&old, &last).map_err(|e| Error::io(&old, e))?;
    }
    for leftover in [old, staging] {
        if leftover.exists() {
            std::fs::remove_dir_all(&leftover).map_err(|e| Error::io(&leftover, e))?;
        }
    }
    // The same for best/, replaced through a temporary sibling.
    crate::io::atomic::remove_stale_temporaries(&run.join("best"));
    Ok(())
}

/// The files of a run folder that starting a new run in it keeps: the lock this run holds, the
/// marker, and the recipe runner's record of which step the folder belongs to.
const KEPT: [&str; 3] = [LOCK_FILE, MARKER, ".step-pending.json"];

/// Empties a run folder for a new run, keeping only [`KEPT`].
fn clear_run(run: &Path) -> Result<()> {
    let entries = std::fs::read_dir(run).map_err(|e| Error::io(run, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(run, e))?;
        if KEPT.iter().any(|k| entry.file_name() == *k) {
            continue;
        }
        let path = entry.path();
        crate::io::atomic::remove_any(&path).map_err(|e| Error::io(&path, e))?;
    }
    Ok(())
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
        let mut moments = vec![];
        for prefix in ["m.", "v."] {
            let t: Tensor = store.load_f32(&format!("{prefix}{name}"), &Device::Cpu)?;
            if t.elem_count() != p.var.elem_count() {
                return Err(Error::Shape {
                    path: store.main_path().to_path_buf(),
                    key: format!("{prefix}{name}"),
                    expected: p.var.dims().to_vec(),
                    actual: t.dims().to_vec(),
                });
            }
            moments.push(t.flatten_all()?.to_vec1::<f32>()?);
        }
        let v = moments.pop().unwrap_or_default();
        let m = moments.pop().unwrap_or_default();
        p.set_moments(m, v)?;
        if p.external {
            p.var
                .set(&store.load_f32(&format!("value.{name}"), p.var.device())?)?;
        }
    }
    Ok(())
}
