//! What a training command is: its name, help and own options, and how it trains. Each objective
//! implements [`TrainingCommand`] in its own file; [`crate::train::registry`] lists them.

use crate::error::Result;
pub use crate::train::spec::CommonArgs;
use crate::train::trainer::TrainOutcome;

/// A `train` subcommand: the objective's options (its input checkpoint first) and how it
/// trains with them.
pub trait TrainingCommand: clap::Args {
    /// `train NAME`: the CLI's words, the recipe kind and the `op` the run records.
    const NAME: &'static str;
    /// One line of help.
    const ABOUT: &'static str;
    /// The objective's own options for a short valid run on the tiny test models (`{teacher}`
    /// stands for a fine-tuned tiny checkpoint); the registry's test trains every command with
    /// them, resumes it, and writes it as a recipe step.
    const EXAMPLE: &'static [&'static str];
    /// Files the run writes beside best/ and last/, printed after it as `label: path`.
    const OUTPUTS: &'static [(&'static str, &'static str)] = &[];

    /// Reads the inputs, builds the objective and trains it in `common.run.out`.
    fn train(&self, common: &CommonArgs) -> Result<TrainOutcome>;
}
