//! The trainable parameters of a checkpoint as candle `Var`s, keyed by typed tensor name.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor, Var};

use crate::arch::Key;
use crate::error::Result;
use crate::io::Checkpoint;

/// One `Var` per parameter tensor of the structure (shared layers have one set of Vars).
pub struct Params {
    vars: BTreeMap<Key, Var>,
}

impl Params {
    /// Loads every parameter of the checkpoint's structure onto `device`.
    pub fn from_checkpoint(ckpt: &Checkpoint, device: &Device) -> Result<Self> {
        let mut vars = BTreeMap::new();
        for (key, _) in ckpt.arch.expected_tensors() {
            let t = ckpt.tensor(key, device)?;
            vars.insert(key, Var::from_tensor(&t)?);
        }
        Ok(Params { vars })
    }

    /// The tensor of a parameter; panics if the structure has no such key (a programming error:
    /// the model asks only for keys of its own `Arch`, and loading checked they all exist).
    pub fn get(&self, key: Key) -> Tensor {
        self.vars
            .get(&key)
            .unwrap_or_else(|| panic!("parameter {key} not loaded"))
            .as_tensor()
            .clone()
    }

    pub fn vars(&self) -> impl Iterator<Item = (&Key, &Var)> {
        self.vars.iter()
    }

    /// Writes the current values back into the checkpoint (in memory).
    pub fn store_into(&self, ckpt: &mut Checkpoint) -> Result<()> {
        for (key, var) in &self.vars {
            ckpt.set_tensor(*key, var.as_tensor().copy()?);
        }
        Ok(())
    }
}
