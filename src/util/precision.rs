//! The precision of matrix products: a run setting recorded in specs and evaluation records
//! (the kernels that honour it live in `kernels`).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Every product in f32 (the reference numbers).
    #[default]
    F32,
    /// The linears' products in bf16 with f32 accumulation (autocast).
    Bf16,
}

impl Precision {
    pub fn is_f32(&self) -> bool {
        *self == Precision::F32
    }
}
