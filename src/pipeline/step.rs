//! A recipe step as a library value: the typed command of every recipe kind (every surgery,
//! every training command, `eval`, `assert-budget`), parsed from a step's command line by clap
//! and run here, so running or planning a recipe needs no binary. The CLI flattens the same
//! commands into its own, so a recipe and a command line can never disagree.

use std::path::PathBuf;

use clap::{CommandFactory, Parser};

use crate::arch::Arch;
use crate::budget::{parse_count, Budget};
use crate::cuts::registry::SurgeryCommand;
use crate::cuts::Planned;
use crate::data::{read_dataset, LabelSet};
use crate::error::{Error, Result};
use crate::eval::{EvalArgs, EvalReport};
use crate::io::Checkpoint;
use crate::train::registry::TrainCommand;
use crate::train::trainer::TrainOutcome;

/// Fails (exit code 3) when a checkpoint's unique parameters exceed a budget.
#[derive(Debug, clap::Args)]
pub struct AssertBudgetArgs {
    /// Checkpoint folder.
    pub checkpoint: PathBuf,
    /// The budget in unique parameters (e.g. 20M, 750k, 20000000).
    #[arg(long, value_parser = parse_count)]
    pub max: u64,
}

/// Every command a recipe step can run.
#[derive(Debug, clap::Subcommand)]
pub enum StepCommand {
    /// Fail (exit code 3) when a checkpoint's unique parameters exceed a budget.
    AssertBudget(AssertBudgetArgs),
    /// Training: one subcommand per objective (fine-tuning, distillation, head gates, ...).
    #[command(subcommand)]
    Train(TrainCommand),
    /// Evaluate a checkpoint on labelled data (seqeval entity F1, per-type report, tokens/s).
    Eval(EvalArgs),
    #[command(flatten)]
    Surgery(SurgeryCommand),
}

/// The parser of a step's command line (the words after the program name).
#[derive(Parser)]
#[command(name = "surgery", no_binary_name = true)]
struct StepLine {
    #[command(subcommand)]
    command: StepCommand,
}

/// What a finished step made, for the caller to show.
pub enum StepOutput {
    Trained {
        outcome: TrainOutcome,
        /// The files the run wrote beside best/ and last/, as (label, path).
        outputs: Vec<(&'static str, PathBuf)>,
    },
    Cut {
        entry: crate::arch::HistoryEntry,
        report: serde_json::Value,
        output: PathBuf,
        /// The command asked for its report as JSON.
        json: bool,
    },
    Evaluated {
        evaluation: EvalReport,
        /// The command asked for JSON instead of the table.
        json: bool,
    },
    WithinBudget {
        unique: u64,
        max: u64,
    },
}

/// Why a step did not finish.
#[derive(Debug)]
pub enum StepError {
    /// `assert-budget`: the checkpoint has more unique parameters than allowed (exit code 3).
    OverBudget {
        unique: u64,
        max: u64,
    },
    Failed(Error),
}

impl From<Error> for StepError {
    fn from(e: Error) -> Self {
        StepError::Failed(e)
    }
}

impl StepCommand {
    /// Parses a step's command line (without the program name); the error is one line saying
    /// what is wrong.
    pub fn parse(argv: &[String]) -> std::result::Result<StepCommand, String> {
        StepLine::try_parse_from(argv)
            .map(|line| line.command)
            .map_err(|e| clap_problem(&e))
    }

    /// The clap definition of a recipe kind's command (`train distill`: its words in order).
    pub fn definition(kind_name: &str) -> Option<clap::Command> {
        let mut command = StepLine::command();
        for word in kind_name.split(' ') {
            command = command.find_subcommand(word)?.clone();
        }
        Some(command)
    }

    /// Runs the command. With `continue_run`, a training command continues from the `last/`
    /// state its output folder holds, if any (a recipe step a kill interrupted; the recipe
    /// runner makes the folder).
    pub fn run(mut self, continue_run: bool) -> std::result::Result<StepOutput, StepError> {
        match &mut self {
            StepCommand::Train(train) => {
                if continue_run {
                    train.resume_if_present();
                }
                let outcome = train.train()?;
                let out = &train.common().run.out;
                let outputs = train
                    .outputs()
                    .iter()
                    .map(|(label, file)| (*label, out.join(file)))
                    .collect();
                Ok(StepOutput::Trained { outcome, outputs })
            }
            StepCommand::Surgery(cut) => Ok(run_cut(cut)?),
            StepCommand::Eval(args) => Ok(StepOutput::Evaluated {
                evaluation: crate::eval::run_eval(&args.request()?)?,
                json: args.json,
            }),
            StepCommand::AssertBudget(args) => {
                let ckpt = Checkpoint::open(&args.checkpoint)?;
                let unique = Budget::of_checkpoint(&ckpt)?.unique;
                if unique > args.max {
                    return Err(StepError::OverBudget {
                        unique,
                        max: args.max,
                    });
                }
                Ok(StepOutput::WithinBudget {
                    unique,
                    max: args.max,
                })
            }
        }
    }

    /// The structure after the step, from the structure before it (no tensor is read); the
    /// error says why it is known only once the step has run.
    pub fn planned_arch(&self, arch: Arch) -> std::result::Result<Arch, String> {
        match self {
            StepCommand::Surgery(cut) => match cut.plan(&arch).map_err(|e| e.to_string())? {
                Planned::Exact(a) => Ok(a),
                Planned::Unknown(why) => Err(why),
            },
            StepCommand::Train(train) if arch.num_labels.is_none() => {
                // Fine-tuning adds a classifier for the training file's labels.
                let data = train.data();
                let sentences =
                    read_dataset(&data.train, &data.read_options()).map_err(|e| e.to_string())?;
                let labels = LabelSet::discover(&sentences).map_err(|e| e.to_string())?;
                Ok(Arch {
                    num_labels: Some(labels.len()),
                    ..arch
                })
            }
            _ => Ok(arch),
        }
    }
}

/// Runs one surgery: checks the output, reads IN, cuts, writes OUT.
fn run_cut(command: &SurgeryCommand) -> Result<StepOutput> {
    let io = command.io();
    let mut reads = command.reads();
    reads.push(&io.input);
    crate::io::output::check_output(&io.output, &reads, io.force)?;
    let input = Checkpoint::open(&io.input)?;
    let outcome = command.apply(&input)?;
    outcome.save(&io.output, io.force)?;
    Ok(StepOutput::Cut {
        entry: outcome.entry,
        report: outcome.report,
        output: io.output.clone(),
        json: io.json,
    })
}

/// One line for a clap error: unknown options with the closest known one, else clap's message.
fn clap_problem(e: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let text = |kind| match e.get(kind) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        Some(ContextValue::Strings(v)) => v.first().cloned(),
        _ => None,
    };
    if e.kind() == ErrorKind::UnknownArgument {
        let arg = text(ContextKind::InvalidArg).unwrap_or_default();
        let hint = text(ContextKind::SuggestedArg)
            .map(|s| format!(" (did you mean `{}`?)", s.trim_start_matches("--")))
            .unwrap_or_default();
        return format!("unknown option `{}`{hint}", arg.trim_start_matches("--"));
    }
    if let Some(problem) = recipe_value_problem(e) {
        return problem;
    }
    let rendered = e.render().to_string();
    rendered
        .lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ")
        .to_string()
}

/// Clap's messages for options missing, lacking a value or given one they cannot take, in a
/// recipe's words (`key = VALUE`), naming the options; `None` for every other error.
fn recipe_value_problem(e: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let strings = |kind| match e.get(kind) {
        Some(ContextValue::String(s)) => vec![s.clone()],
        Some(ContextValue::Strings(v)) => v.clone(),
        _ => vec![],
    };
    // `--keep <KEEP>` → `keep`
    let key = |arg: &str| {
        let arg = arg.trim_start_matches('-');
        arg.split([' ', '=']).next().unwrap_or(arg).to_string()
    };
    let arg = strings(ContextKind::InvalidArg).first().map(|a| key(a))?;
    let value = strings(ContextKind::InvalidValue).pop().unwrap_or_default();
    match e.kind() {
        ErrorKind::MissingRequiredArgument => {
            let missing: Vec<String> = strings(ContextKind::InvalidArg)
                .iter()
                .map(|a| format!("`{}`", key(a)))
                .collect();
            Some(format!(
                "missing required option(s) {} (add `{arg} = VALUE`)",
                missing.join(", ")
            ))
        }
        ErrorKind::InvalidValue if value.is_empty() => Some(format!(
            "option `{arg}` takes a value: write `{arg} = VALUE`, not `{arg} = true`"
        )),
        ErrorKind::TooManyValues | ErrorKind::NoEquals => Some(format!(
            "option `{arg}` is a switch and takes no value: write `{arg} = true` or `{arg} = false`, not `{}`",
            value
        )),
        _ => None,
    }
}
