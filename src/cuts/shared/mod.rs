//! What the surgeries share: the calibration options and the calibrator (the sentences read once, every
//! pass on the chosen device) and the statistics it serves, linear algebra, the solvers of the
//! sparse and low-rank cuts, structured units and their scores, layer-by-layer inputs and
//! held-out errors, the structured refit and sparse patterns. A surgery (a file beside this folder) depends on these,
//! never on another surgery.

pub mod calibrate;
pub(crate) mod layer_inputs;
pub mod linalg;
pub mod obs;
pub(crate) mod reconstruct;
pub(crate) mod sparse_pattern;
pub mod unit_scores;
pub(crate) mod units;
