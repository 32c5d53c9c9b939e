//! surgery: make BERT-style NER models small. Reads Hugging Face checkpoint folders, cuts them
//! with independent surgeries, counts their parameter budget, and runs them with candle.
//!
//! The modules are layers; each imports only the ones listed before it:
//! `util` → `arch` → `io` → `budget` → `data` → `metrics` → `kernels` → `model` → `eval` →
//! (`train`, `cuts`, `export`) → `pipeline`. The command-line interface lives in the binary (`src/cli`).

pub mod error;
pub mod util;

pub mod arch;
pub mod io;

pub mod budget;
pub mod data;
pub mod metrics;

pub mod kernels;
pub mod model;

pub mod cuts;
pub mod eval;
pub mod export;
pub mod train;

pub mod pipeline;

pub use error::{Error, Result};
