//! Checkpoint input/output: memory-mapped safetensors, atomic writers, the `Checkpoint` type.

pub mod artefacts;
pub mod atomic;
pub(crate) mod capacity;
pub mod checkpoint;
pub(crate) mod hf_code;
pub mod lock;
pub mod output;
pub mod store;
pub mod tensor_file;
pub mod tensorboard;
pub mod text_input;

pub use checkpoint::Checkpoint;
pub use store::TensorStore;
