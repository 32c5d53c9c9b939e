//! The setup every training command shares, written once: open the device and the run folder
//! (before any data is read), prepare the inputs, check the machine can hold the run, then fit.

use std::path::Path;

use candle_core::Device;

use crate::error::Result;
use crate::kernels::Kernels;
use crate::train::inputs::PreparedRun;
use crate::train::objective::Objective;
use crate::train::run_dir::RunDir;
use crate::train::spec::CommonArgs;
use crate::train::trainer::{fit, require_resources, LoopInputs, TrainOutcome};

/// The first step of every training command: opens the device and the run folder, before
/// any data is read or computed, so a refused output or a concurrent run fails at once.
/// `reads` are what the run reads besides the data files (the folder may be inside none).
pub(crate) fn open(common: &CommonArgs, reads: &[&Path]) -> Result<OpenRun> {
    let mut read = common.data.paths();
    read.extend_from_slice(reads);
    let options = common.run.options();
    let (device, kernels) = options.compute.open()?;
    let run = options.open(&common.run.out, &read)?;
    Ok(OpenRun {
        run,
        device,
        kernels,
    })
}

/// A run whose folder and device are open.
pub(crate) struct OpenRun {
    pub run: RunDir,
    pub device: Device,
    pub kernels: Kernels,
}

impl OpenRun {
    /// Refuses a run the machine cannot hold, given the model it trains (see
    /// [`require_resources`]); the prepared run is then ready to [`ReadyRun::fit`].
    pub fn ready(self, prepared: PreparedRun, common: &CommonArgs) -> Result<ReadyRun> {
        require_resources(&self.run, &prepared.ckpt.arch, &common.spec, &self.device)?;
        Ok(ReadyRun {
            open: self,
            prepared,
        })
    }
}

/// A run ready to train: its folder and device open, its inputs prepared and the machine's
/// memory and disk checked for them.
pub(crate) struct ReadyRun {
    pub open: OpenRun,
    pub prepared: PreparedRun,
}

impl ReadyRun {
    /// Runs the training loop with `objective`; `provenance` goes into run.json.
    pub fn fit(
        self,
        common: &CommonArgs,
        provenance: serde_json::Value,
        objective: &mut dyn Objective,
    ) -> Result<TrainOutcome> {
        let ReadyRun { open, prepared } = self;
        let inputs = LoopInputs {
            prepared,
            spec: common.spec.clone(),
            device: open.device,
            kernels: open.kernels,
            provenance,
        };
        fit(inputs, objective, open.run, common.run.stop_after)
    }
}
