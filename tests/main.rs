//! The one integration-test binary: a module per area, helpers in `util`.

mod bad_input;
mod budget;
mod checkpoint_io;
mod compress;
mod data;
mod distill;
mod export;
mod families;
mod fuzz;
mod golden;
mod heads;
mod hostile_inputs;
mod kernels;
mod layers;
mod metrics;
mod model;
mod parity;
mod progress;
mod recipe;
mod reliability;
mod sparsegpt;
mod structured;
mod surgeries;
mod train;
mod transformers;
mod util;
