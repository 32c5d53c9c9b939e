//! The one list of surgeries. Each surgery implements [`Surgery`] (in `cuts/mod.rs`) in its own file (its name,
//! help, options, a tensor-free `plan` and the `apply` that cuts); the list below turns them into
//! the CLI's subcommands, the recipe kinds and the plan/apply agreement test. Adding a surgery is
//! its file plus one line here.

use std::path::{Path, PathBuf};

use crate::arch::Arch;
use crate::error::Result;
use crate::io::Checkpoint;

use super::{Outcome, Planned, Surgery};

/// What every surgery command reads and writes.
#[derive(Debug, Clone, clap::Args)]
pub struct InOut {
    /// Input checkpoint folder (never modified).
    pub input: PathBuf,
    /// Output checkpoint folder (written atomically).
    pub output: PathBuf,
    /// Replace an existing output folder (only one this tool wrote).
    #[arg(long)]
    pub force: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

macro_rules! registry {
    ($($variant:ident => $spec:ty),* $(,)?) => {
        /// Every surgery as a subcommand: `NAME IN OUT [--force] [--json]` and its options.
        #[derive(Debug, clap::Subcommand)]
        pub enum SurgeryCommand {
            $(
                #[command(name = <$spec as Surgery>::NAME, about = <$spec as Surgery>::ABOUT)]
                $variant {
                    #[command(flatten)]
                    io: InOut,
                    #[command(flatten)]
                    spec: $spec,
                },
            )*
        }

        /// The names of every surgery, in the order of the list.
        pub const NAMES: &[&str] = &[$(<$spec as Surgery>::NAME),*];

        /// Each surgery's example options, by name (see [`Surgery::EXAMPLE`]).
        pub const EXAMPLES: &[(&str, &[&str])] =
            &[$((<$spec as Surgery>::NAME, <$spec as Surgery>::EXAMPLE)),*];

        impl SurgeryCommand {
            pub fn name(&self) -> &'static str {
                match self { $(Self::$variant { .. } => <$spec as Surgery>::NAME),* }
            }

            pub fn io(&self) -> &InOut {
                match self { $(Self::$variant { io, .. } => io),* }
            }

            /// The files the cut reads besides the checkpoint.
            pub fn reads(&self) -> Vec<&Path> {
                match self { $(Self::$variant { spec, .. } => spec.reads()),* }
            }

            pub fn plan(&self, arch: &Arch) -> Result<Planned> {
                match self { $(Self::$variant { spec, .. } => spec.plan(arch)),* }
            }

            pub fn apply(&self, ckpt: &Checkpoint) -> Result<Outcome> {
                match self { $(Self::$variant { spec, .. } => spec.apply(ckpt)),* }
            }
        }
    };
}

registry! {
    FactorizeEmbeddings => super::factorize_embeddings::Spec,
    TieLayers => super::tie_layers::Spec,
    DropLayers => super::drop_layers::Spec,
    LowrankLayers => super::lowrank_layers::Spec,
    Sparsegpt => super::sparsegpt::Spec,
    RemoveHeads => super::remove_heads::Spec,
    PruneVocab => super::prune_vocab::Spec,
    Magnitude => super::magnitude::Spec,
    PruneNeurons => super::prune_neurons::Spec,
    PruneStructured => super::prune_structured::Spec,
}

#[cfg(test)]
mod tests {
    use crate::arch::{Arch, BertConfig, Layout};

    use super::Surgery;

    fn arch() -> Arch {
        let config = BertConfig::from_json(
            r#"{"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                "intermediate_size": 64, "vocab_size": 50, "max_position_embeddings": 16}"#,
        )
        .unwrap();
        Arch::resolve(&config, Layout::Bare, false, false).unwrap()
    }

    /// The command line requires one of a surgery's alternative options; a spec read from JSON
    /// (a recipe's history, a library caller) may have none, which is a user error, not a panic.
    #[test]
    fn a_spec_without_its_required_choice_is_refused() {
        let arch = arch();
        let remove_heads: super::super::remove_heads::Spec = serde_json::from_str(
            r#"{"threshold": 0.5, "by": "importance", "allow_empty": false,
                "calibration": {"calib_sentences": 8, "heldout_sentences": 8}}"#,
        )
        .unwrap();
        let lowrank: super::super::lowrank_layers::Spec = serde_json::from_str(
            r#"{"modules": ["query"], "method": "svd",
                "calibration": {"calib_sentences": 8, "damp": 0.01, "heldout_sentences": 8}}"#,
        )
        .unwrap();
        let structured: super::super::prune_structured::Spec = serde_json::from_str(
            r#"{"seq_len": 16, "no_reconstruct": false, "calibration": {"calib": "c.txt",
                "calib_sentences": 8, "damp": 0.01, "heldout_sentences": 8}}"#,
        )
        .unwrap();
        let errors = [
            remove_heads.plan(&arch).err(),
            lowrank.plan(&arch).err(),
            structured.plan(&arch).err(),
        ];
        for e in errors {
            let e = e.expect("refused");
            assert!(e.is_user_error(), "{e}");
            assert!(e.to_string().contains("give --"), "{e}");
        }
    }

    /// Each calibrated cut's own defaults reach its command line, `--calib` is required where
    /// the cut cannot work without it, and remove-heads' older `--data` names still parse.
    #[test]
    fn calibration_defaults_and_old_names_reach_the_command_line() {
        use clap::Parser;
        #[derive(clap::Parser)]
        #[command(no_binary_name = true)]
        struct Line {
            #[command(subcommand)]
            cut: super::SurgeryCommand,
        }
        let parse = |args: &str| Line::try_parse_from(args.split_whitespace()).map(|l| l.cut);
        let calibration = |args: &str| match parse(args).unwrap() {
            super::SurgeryCommand::Sparsegpt { spec, .. } => spec.calibration,
            super::SurgeryCommand::PruneStructured { spec, .. } => spec.calibration,
            super::SurgeryCommand::RemoveHeads { spec, .. } => spec.calibration,
            other => panic!("{} is not under test", other.name()),
        };
        let c = calibration("sparsegpt a b --sparsity 0.5 --calib c");
        assert_eq!(
            (c.calib_sentences, c.heldout_sentences, c.damp),
            (256, 256, None)
        );
        let c = calibration("prune-structured a b --flops 0.5 --calib c --damp 0.1");
        assert_eq!(
            (c.calib_sentences, c.heldout_sentences, c.damp),
            (2048, 512, Some(0.1))
        );
        let c = calibration("remove-heads a b --keep 2 --data c --data-sentences 7");
        assert_eq!(c.calib.as_deref(), Some(std::path::Path::new("c")));
        assert_eq!(c.calib_sentences, 7);
        assert!(
            parse("sparsegpt a b --sparsity 0.5").is_err(),
            "--calib is required"
        );
        assert!(
            parse("remove-heads a b --heads 0:1").is_ok(),
            "--calib is optional"
        );
    }
}
