//! The parameters of a checkpoint keyed by typed tensor name: candle `Var`s for training, or
//! plain tensors (no autograd tracking) for a model that only runs forward.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor, Var};

use crate::arch::Key;
use crate::error::Result;
use crate::io::Checkpoint;

/// One tensor per parameter of the structure (shared layers have one set).
pub struct Params {
    tensors: BTreeMap<Key, Tensor>,
    /// The same tensors as `Var`s when they are trained; empty for a frozen model.
    vars: BTreeMap<Key, Var>,
}

impl Params {
    /// Loads every parameter of the checkpoint's structure onto `device` as a trainable `Var`.
    pub fn from_checkpoint(ckpt: &Checkpoint, device: &Device) -> Result<Self> {
        let mut vars = BTreeMap::new();
        let mut tensors = BTreeMap::new();
        for (key, _) in ckpt.arch.expected_tensors() {
            let var = Var::from_tensor(&ckpt.tensor(key, device)?)?;
            tensors.insert(key, var.as_tensor().clone());
            vars.insert(key, var);
        }
        Ok(Params { tensors, vars })
    }

    /// Loads every parameter onto `device` as a constant: gradients never flow into it.
    pub fn frozen(ckpt: &Checkpoint, device: &Device) -> Result<Self> {
        let mut tensors = BTreeMap::new();
        for (key, _) in ckpt.arch.expected_tensors() {
            tensors.insert(key, ckpt.tensor(key, device)?);
        }
        Ok(Params {
            tensors,
            vars: BTreeMap::new(),
        })
    }

    /// The tensor of a parameter; panics if the structure has no such key (a programming error:
    /// the model asks only for keys of its own `Arch`, and loading checked they all exist).
    pub fn get(&self, key: Key) -> Tensor {
        self.tensors
            .get(&key)
            .unwrap_or_else(|| panic!("parameter {key} not loaded"))
            .clone()
    }

    /// The trainable variables (none for frozen parameters).
    pub fn vars(&self) -> impl Iterator<Item = (&Key, &Var)> {
        self.vars.iter()
    }

    /// Writes a copy of the current values back into the checkpoint (in RAM).
    pub fn store_into(&self, ckpt: &mut Checkpoint) -> Result<()> {
        for (key, t) in &self.tensors {
            let copy = if t.device().is_cpu() {
                t.copy()?
            } else {
                t.to_device(&Device::Cpu)?
            };
            ckpt.set_tensor(*key, copy);
        }
        Ok(())
    }
}
