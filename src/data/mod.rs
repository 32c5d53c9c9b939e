//! NER data: CoNLL and JSONL readers, the label set, tokenisation with label alignment, and
//! length-bucketed batches.

pub mod align;
pub mod augment;
pub(crate) mod batches;
pub mod labels;
pub mod reader;
pub mod synthetic;
pub use crate::arch::tags;
pub mod tokenize;

pub use align::{encode_dataset, Alignment, Example};
pub use batches::{bucket_batches, BatchPlan};
pub use labels::LabelSet;
pub use reader::{read_dataset, Dataset, ReadOptions, Sentence};
