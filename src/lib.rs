//! surgery: make BERT-style NER models small. Reads Hugging Face checkpoint folders, cuts them
//! with independent surgeries, counts their parameter budget, and runs them with candle.

pub mod arch;
pub mod budget;
pub mod calibrate;
pub mod data;
pub mod error;
pub mod eval;
pub mod generate;
pub mod infer;
pub mod io;
pub mod linalg;
pub mod metrics;
pub mod model;
pub mod plot;
pub mod predict;
pub mod quickstart;
pub mod recipe;
pub mod report;
pub mod score;
pub mod student;
pub mod surgery;
pub mod synthetic;
pub mod tokenize;
pub mod train;
pub mod util;

pub use error::{Error, Result};
