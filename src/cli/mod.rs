//! Command-line interface (clap derive). Each subcommand arm calls one library function.

mod inspect;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use surgery::io::Checkpoint;

#[derive(Parser)]
#[command(name = "surgery", version, about = "Make BERT-style NER models small")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show the parameter budget of a checkpoint, per component and per layer.
    Inspect(inspect::InspectArgs),
    /// Run a checkpoint on pre-tokenised sentences and write ids, mask, hidden states and logits.
    Forward {
        /// Checkpoint folder.
        checkpoint: PathBuf,
        /// One sentence per line, words separated by single spaces.
        #[arg(long)]
        input: PathBuf,
        /// Output safetensors file.
        #[arg(long)]
        out: PathBuf,
        /// Sentences per batch.
        #[arg(long, default_value_t = 32)]
        batch_size: usize,
        /// Replace an existing output file.
        #[arg(long)]
        force: bool,
    },
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Inspect(args) => inspect::run(args),
        Command::Forward {
            checkpoint,
            input,
            out,
            batch_size,
            force,
        } => {
            let ckpt = open(&checkpoint)?;
            surgery::infer::forward_to_file(&ckpt, &input, &out, force, batch_size)
                .with_context(|| format!("forward {}", checkpoint.display()))?;
            println!("wrote {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn open(path: &std::path::Path) -> anyhow::Result<Checkpoint> {
    Ok(Checkpoint::open(path)?)
}

/// 2 for errors caused by the user's input, 1 for internal failures.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    let user = err
        .chain()
        .find_map(|e| e.downcast_ref::<surgery::Error>())
        .is_some_and(|e| e.is_user_error());
    if user {
        2
    } else {
        1
    }
}
