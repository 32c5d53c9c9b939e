//! Command-line interface (clap derive). Each subcommand arm calls one library function.

mod compress;
mod evaluate;
mod export;
mod inspect;
mod recipe;
mod report;
mod step;
mod students;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use surgery::io::Checkpoint;
use surgery::kernels::threads::{self, Workload};
use surgery::pipeline::step::StepCommand;
use surgery::util::exit::ExitStatus;
use surgery::util::options;

#[derive(Parser)]
#[command(name = "surgery", version, about = "Make BERT-style NER models small")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Show no progress (no bars on a terminal, no progress lines in logs).
    #[arg(long, global = true)]
    quiet: bool,
}

#[derive(Subcommand)]
enum Command {
    /// The embedded default job: synthetic NER data, a tiny BERT, fine-tuning, test report, budget.
    Quickstart {
        /// Output folder (data, initial model, training run).
        #[arg(long, default_value = "runs/quickstart")]
        out: PathBuf,
        /// Replace an existing output folder.
        #[arg(long)]
        force: bool,
    },
    /// Show the parameter budget of a checkpoint, per component and per layer.
    Inspect(inspect::InspectArgs),
    /// Every command a recipe step can run: assert-budget, train, eval and the surgeries.
    #[command(flatten)]
    Step(StepCommand),
    /// Score a file of gold and predicted tags (conlleval layout).
    Score(evaluate::ScoreArgs),
    /// Tag plain text, one passage per line; prints entities as JSON lines.
    Predict(evaluate::PredictArgs),
    /// Write a checkpoint as an ONNX model (optionally with int8 linears) for deployment.
    Export(export::ExportArgs),
    /// Find the best model for a budget (parameters, FLOPs or speed) by searching chains of cuts
    /// and recoveries; writes the model, compress.json, a report and the recipe that reproduces it.
    Compress(surgery::pipeline::compress::CompressArgs),
    /// Run a recipe: an ordered list of steps, each one of the commands, resumable.
    Run(recipe::RunArgs),
    /// Write a Markdown report with plots (F1 vs parameters, curves, gates, speed) from run folders.
    Report(report::ReportArgs),
    /// Write a randomly initialised student with a teacher's tokenizer and labels.
    InitStudent(students::InitStudentArgs),
    /// List student shapes that fit a parameter budget.
    Plan(students::PlanArgs),
    /// Check that a device (and its kernels) computes what the CPU computes: logits, every
    /// gradient and a fine-tuning loss curve of tiny models of every structure (exit 1 if not).
    CheckDevice {
        #[command(flatten)]
        compute: surgery::kernels::Compute,
        /// Fine-tuning steps compared.
        #[arg(long, default_value_t = 20, value_parser = options::positive)]
        steps: usize,
        /// Print the results as JSON.
        #[arg(long)]
        json: bool,
    },
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
        #[arg(long, default_value_t = 32, value_parser = options::positive)]
        batch_size: usize,
        /// Replace an existing output file.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        compute: surgery::kernels::Compute,
    },
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    surgery::util::progress::set_quiet(cli.quiet);
    run_command(cli.command)
}

fn run_command(command: Command) -> anyhow::Result<ExitCode> {
    // Before the first tensor op: candle reads its thread settings once.
    let workload = match command {
        Command::Step(StepCommand::Eval(_)) | Command::Predict(_) | Command::Forward { .. } => {
            Some(Workload::Inference)
        }
        Command::Step(StepCommand::Train(_))
        | Command::Run(_)
        | Command::Compress(_)
        | Command::Quickstart { .. } => Some(Workload::Training),
        _ => None,
    };
    if let Some(workload) = workload {
        threads::apply_defaults(workload);
    }
    match command {
        Command::Quickstart { out, force } => quickstart(&out, force),
        Command::Inspect(args) => inspect::run(args),
        Command::Step(command) => step::run(command),
        Command::Run(args) => recipe::run(args),
        Command::Compress(args) => compress::run(args),
        Command::Export(args) => export::run(args),
        Command::Report(args) => report::report(args),
        Command::InitStudent(args) => students::init(args),
        Command::Plan(args) => students::plan_cmd(args),
        Command::Score(args) => evaluate::score(args),
        Command::Predict(args) => evaluate::predict(args),
        Command::CheckDevice {
            compute,
            steps,
            json,
        } => check_device(compute, steps, json),
        Command::Forward {
            checkpoint,
            input,
            out,
            batch_size,
            force,
            compute,
        } => {
            let ckpt = open(&checkpoint)?;
            surgery::eval::infer::forward_to_file(&ckpt, &input, &out, force, batch_size, compute)
                .with_context(|| format!("forward {}", checkpoint.display()))?;
            println!("wrote {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn check_device(
    compute: surgery::kernels::Compute,
    steps: usize,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let check = surgery::pipeline::device_check::check(compute, steps).context("check-device")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&check)?);
    } else {
        println!(
            "{} ({:?} kernels) against the CPU's fused kernels; relative differences:",
            check.device, check.kernels
        );
        println!("structure      logits  gradients  losses  ok   worst gradient");
        for s in &check.structures {
            println!(
                "{:<12} {:>8.1e} {:>10.1e} {:>7.1e}  {:<4} {}",
                s.structure,
                s.logits,
                s.gradients,
                s.losses,
                if s.ok { "yes" } else { "NO" },
                s.worst_gradient
            );
        }
    }
    Ok(if check.ok {
        ExitCode::SUCCESS
    } else {
        surgery::util::exit::ExitStatus::Failure.into()
    })
}

fn quickstart(out: &std::path::Path, force: bool) -> anyhow::Result<ExitCode> {
    let prepared = surgery::pipeline::quickstart::prepare(out, force)?;
    let recipe_path = out.join("quickstart.toml");
    std::fs::write(&recipe_path, surgery::pipeline::quickstart::RECIPE)
        .with_context(|| format!("writing {}", recipe_path.display()))?;
    let code = recipe::run(recipe::RunArgs::new(
        recipe_path.clone(),
        vec![("dir".into(), out.display().to_string())],
        out.to_path_buf(),
    ))?;
    if code != ExitCode::SUCCESS {
        return Ok(code);
    }
    let run_dir = out.join("quickstart");
    report::report(report::ReportArgs::new(
        vec![run_dir.clone()],
        out.join("report"),
    ))?;
    let best = run_dir.join("03-recover").join("best");
    println!();
    inspect::run(inspect::InspectArgs::for_checkpoint(best.clone()))?;
    println!(
        "\nsynthetic data: {}\nthe recipe: {} (run it again: surgery run {} --set dir={} --runs {})\nnext: surgery eval {} --data {}",
        prepared.data_dir.display(),
        recipe_path.display(),
        recipe_path.display(),
        out.display(),
        out.display(),
        best.display(),
        prepared.data_dir.join("test.txt").display()
    );
    Ok(ExitCode::SUCCESS)
}

fn open(path: &std::path::Path) -> anyhow::Result<Checkpoint> {
    Ok(Checkpoint::open(path)?)
}

/// The exit status of a failed command: the library error's own, or 1 for anything else.
pub fn exit_status(err: &anyhow::Error) -> ExitStatus {
    err.chain()
        .find_map(|e| e.downcast_ref::<surgery::Error>())
        .map_or(ExitStatus::Failure, |e| e.exit_status())
}
