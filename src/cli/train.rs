//! `surgery train finetune`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use surgery::train::distill::{distill, DistillSpec};
use surgery::train::finetune::{finetune, supervised};
use surgery::train::gates::{train_gates, GateSpec};
use surgery::train::label_smoothing::LabelSmoothing;
use surgery::train::run_dir::Resume;
use surgery::train::spec::{DataSpec, RunOptions, TrainSpec};
use surgery::train::trainer::TrainOutcome;

#[derive(Subcommand)]
pub enum TrainCommand {
    /// Fine-tune a checkpoint on NER data (cross-entropy on the aligned labels).
    Finetune(FinetuneArgs),
    /// Distill a teacher into a student (KL·τ² on softened logits + hard CE, optional
    /// hidden-state / attention matching).
    Distill(DistillArgs),
    /// Learn hard-concrete head gates with an L0 penalty (writes gates.json and gates.svg).
    Gates(GatesArgs),
}

#[derive(Args)]
pub struct GatesArgs {
    /// Fine-tuned checkpoint folder.
    checkpoint: PathBuf,
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    data: DataSpec,
    #[command(flatten)]
    spec: TrainSpec,
    #[command(flatten)]
    gates: GateSpec,
}

#[derive(Args)]
pub struct DistillArgs {
    /// Student checkpoint folder (from init-student or any surgery).
    student: PathBuf,
    /// Fine-tuned teacher checkpoint folder.
    #[arg(long)]
    teacher: PathBuf,
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    data: DataSpec,
    #[command(flatten)]
    spec: TrainSpec,
    #[command(flatten)]
    distill: DistillSpec,
}

#[derive(Args)]
pub struct RunArgs {
    /// Run folder: run.json, metrics.jsonl, best/ and last/ checkpoints.
    #[arg(long)]
    out: PathBuf,
    /// Continue an interrupted run from out/last.
    #[arg(long)]
    resume: bool,
    /// Replace an existing run folder (only a run folder this tool wrote).
    #[arg(long)]
    force: bool,
    /// Stop after N optimizer steps as if interrupted (continue later with --resume).
    #[arg(long)]
    stop_after: Option<usize>,
    /// Also write the metrics as TensorBoard event files into OUT/tensorboard (watch them live with
    /// `tensorboard --logdir OUT`).
    #[arg(long)]
    tensorboard: bool,
    /// Set by the recipe runner: continue the run the folder holds, if any.
    #[arg(skip)]
    resume_if_present: bool,
    #[command(flatten)]
    compute: surgery::kernels::Compute,
}

impl RunArgs {
    fn options(&self) -> RunOptions {
        RunOptions {
            resume: match (self.resume, self.resume_if_present) {
                (true, _) => Resume::Required,
                (false, true) => Resume::IfPresent,
                (false, false) => Resume::No,
            },
            force: self.force,
            stop_after: self.stop_after,
            tensorboard: self.tensorboard,
            compute: self.compute,
        }
    }
}

#[derive(Args)]
pub struct FinetuneArgs {
    /// Checkpoint folder to start from (a classifier is added if it has none).
    checkpoint: PathBuf,
    /// Smooth the targets: (1−ε)·one-hot + ε/C (0 = plain cross-entropy).
    #[arg(long, default_value_t = 0.0, value_parser = surgery::util::options::fraction_below_one)]
    label_smoothing: f64,
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    data: DataSpec,
    #[command(flatten)]
    spec: TrainSpec,
}

impl TrainCommand {
    /// Makes the run continue what its folder holds (a recipe step interrupted earlier).
    pub fn resume_if_present(&mut self) {
        let run = match self {
            TrainCommand::Finetune(a) => &mut a.run,
            TrainCommand::Distill(a) => &mut a.run,
            TrainCommand::Gates(a) => &mut a.run,
        };
        run.resume_if_present = true;
    }

    /// The data the run trains on (the recipe runner reads its labels for --dry-run).
    pub fn data(&self) -> &DataSpec {
        match self {
            TrainCommand::Finetune(a) => &a.data,
            TrainCommand::Distill(a) => &a.data,
            TrainCommand::Gates(a) => &a.data,
        }
    }
}

pub fn run(command: TrainCommand) -> anyhow::Result<ExitCode> {
    match command {
        TrainCommand::Finetune(a) => {
            let outcome = if a.label_smoothing != 0.0 {
                let mut objective = LabelSmoothing::new(a.label_smoothing)?;
                let (input, out) = (&a.checkpoint, &a.run.out);
                supervised(
                    input,
                    &a.data,
                    &a.spec,
                    out,
                    a.run.options(),
                    &mut objective,
                )?
            } else {
                finetune(&a.checkpoint, &a.data, &a.spec, &a.run.out, a.run.options())?
            };
            report(&outcome);
            Ok(ExitCode::SUCCESS)
        }
        TrainCommand::Gates(a) => {
            let outcome = train_gates(
                &a.checkpoint,
                &a.data,
                &a.spec,
                &a.gates,
                &a.run.out,
                a.run.options(),
            )?;
            report(&outcome);
            println!("gates: {}", a.run.out.join("gates.json").display());
            Ok(ExitCode::SUCCESS)
        }
        TrainCommand::Distill(a) => {
            let outcome = distill(
                &a.student,
                &a.teacher,
                &a.data,
                &a.spec,
                &a.distill,
                &a.run.out,
                a.run.options(),
            )?;
            report(&outcome);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Prints the outcome of a training run.
fn report(outcome: &TrainOutcome) {
    println!(
        "best dev F1 {:.4} at step {} of {}; best checkpoint: {}",
        outcome.best_dev_f1,
        outcome.best_step,
        outcome.steps,
        outcome.run_dir.join("best").display()
    );
    if let Some(test) = &outcome.test {
        println!("test F1 {:.4} (best checkpoint)", test.f1());
    }
    println!(
        "training throughput {:.0} real tokens/s, padding {:.1}%, {:.0} s",
        outcome.train_tokens_per_second,
        outcome.padding_ratio * 100.0,
        outcome.seconds
    );
}
