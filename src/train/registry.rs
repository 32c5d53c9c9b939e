//! The one list of training commands. Each implements [`TrainingCommand`] in its own file (its
//! name, help, options, an example and how it trains); the list below turns them into the
//! `train` subcommands, the recipe kinds, the recipe runner's resume hook and the registry's
//! test. Adding an objective is its file plus one line here (and its `pub mod`).

use crate::error::Result;
use crate::train::command::{CommonArgs, TrainingCommand};
use crate::train::spec::DataSpec;
use crate::train::trainer::TrainOutcome;

/// The subcommand of `train NAME`.
fn subcommand(name: &'static str) -> &'static str {
    name.strip_prefix("train ").unwrap_or(name)
}

macro_rules! registry {
    ($($variant:ident => $command:ty),* $(,)?) => {
        /// Every training command as a subcommand of `train`: `NAME INPUT --out RUN`, the data,
        /// the hyper-parameters and its objective's own options.
        #[derive(Debug, clap::Subcommand)]
        pub enum TrainCommand {
            $(
                #[command(
                    name = subcommand(<$command as TrainingCommand>::NAME),
                    about = <$command as TrainingCommand>::ABOUT
                )]
                $variant {
                    #[command(flatten)]
                    command: $command,
                    #[command(flatten)]
                    common: CommonArgs,
                },
            )*
        }

        /// Every training command's name (`train NAME`), in the order of the list.
        pub const NAMES: &[&str] = &[$(<$command as TrainingCommand>::NAME),*];

        /// Each command's example options, by name (see [`TrainingCommand::EXAMPLE`]).
        pub const EXAMPLES: &[(&str, &[&str])] =
            &[$((<$command as TrainingCommand>::NAME, <$command as TrainingCommand>::EXAMPLE)),*];

        impl TrainCommand {
            /// `train NAME`.
            pub fn name(&self) -> &'static str {
                match self { $(Self::$variant { .. } => <$command as TrainingCommand>::NAME),* }
            }

            pub fn common(&self) -> &CommonArgs {
                match self { $(Self::$variant { common, .. } => common),* }
            }

            fn common_mut(&mut self) -> &mut CommonArgs {
                match self { $(Self::$variant { common, .. } => common),* }
            }

            /// Trains (see [`TrainingCommand::train`]).
            pub fn train(&self) -> Result<TrainOutcome> {
                match self { $(Self::$variant { command, common } => command.train(common)),* }
            }

            /// The files the run writes beside best/ and last/, as `(label, file in the run
            /// folder)`.
            pub fn outputs(&self) -> &'static [(&'static str, &'static str)] {
                match self { $(Self::$variant { .. } => <$command as TrainingCommand>::OUTPUTS),* }
            }
        }
    };
}

registry! {
    Finetune => crate::train::finetune::FinetuneArgs,
    Distill => crate::train::distill::DistillArgs,
    Gates => crate::train::gates::GatesArgs,
    Focal => crate::train::focal::FocalArgs,
}

impl TrainCommand {
    /// Makes the run continue what its folder holds (a recipe step interrupted earlier).
    pub fn resume_if_present(&mut self) {
        self.common_mut().run.resume_if_present = true;
    }

    /// The data the run trains on (the recipe runner reads its labels for --dry-run).
    pub fn data(&self) -> &DataSpec {
        &self.common().data
    }
}
