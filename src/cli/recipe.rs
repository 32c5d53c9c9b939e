//! `surgery run RECIPE.toml`: the library's recipe runner (`surgery::pipeline::runner`) with
//! its progress and each step's output printed, and the plan of `--dry-run` printed as a table.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use surgery::budget::group;
use surgery::pipeline::dry_run::{dry_run, SizeAfter, StepState};
use surgery::pipeline::runner::{self, Outcome, Plan, Progress};
use surgery::util::exit::ExitStatus;
use surgery::util::shell::shell_words;

#[derive(Args)]
pub struct RunArgs {
    /// Recipe file (TOML): [recipe], [vars] and [[step]] tables.
    recipe: PathBuf,
    /// Re-run from this step (name or number) on, even where outputs exist.
    #[arg(long)]
    from: Option<String>,
    /// Print the plan and the predicted parameter budget after every step; run nothing.
    #[arg(long)]
    dry_run: bool,
    /// Set a variable, overriding the recipe's [vars] (repeatable), e.g. --set data=DIR.
    #[arg(long = "set", value_parser = parse_var)]
    set: Vec<(String, String)>,
    /// Folder that holds the recipe's run folder (runs/<recipe-name>/NN-step/).
    #[arg(long, default_value = "runs")]
    runs: PathBuf,
}

impl RunArgs {
    /// Run a whole recipe with these variables, under `runs`.
    pub fn new(recipe: PathBuf, set: Vec<(String, String)>, runs: PathBuf) -> Self {
        RunArgs {
            recipe,
            from: None,
            dry_run: false,
            set,
            runs,
        }
    }
}

fn parse_var(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .ok_or_else(|| format!("`{text}`: expected NAME=VALUE"))
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let mut plan = Plan::check(&args.recipe, &args.set, &args.runs)?;
    let start = args
        .from
        .as_deref()
        .map(|key| plan.start_at(key))
        .transpose()?;
    if args.dry_run {
        return print_dry_run(&plan, start);
    }
    execute(&mut plan, start)
}

/// Prints each step, its state and the predicted unique parameters after it.
fn print_dry_run(plan: &Plan, start: Option<usize>) -> anyhow::Result<ExitCode> {
    let planned = dry_run(plan, start);
    println!(
        "recipe `{}`: {} steps → {}",
        plan.recipe.name,
        planned.steps.len(),
        plan.root.display()
    );
    let w = planned
        .steps
        .iter()
        .map(|s| s.name.chars().count())
        .max()
        .unwrap_or(4)
        .max(4);
    println!(
        "{:>3}  {:<w$} {:<21} {:<w2$} {:>13}  state",
        "#",
        "step",
        "kind",
        "reads",
        "unique params",
        w2 = w.max(16) + 1
    );
    for step in &planned.steps {
        let mut state = match &step.state {
            StepState::WillRunFrom => "will run (--from)".to_string(),
            StepState::Skipped => "done, will be skipped".to_string(),
            StepState::WillRun => "will run".to_string(),
            StepState::WillRunAgain(why) => format!("will run again: {why}"),
        };
        if let Some(b) = step.budget {
            state = if b.over() {
                format!("OVER BUDGET by {}", group(b.unique - b.max))
            } else {
                format!(
                    "{state}; within budget ({} to spare)",
                    group(b.max - b.unique)
                )
            };
        }
        let reads = if step.reads.starts_with('@') {
            step.reads.clone()
        } else {
            short(&step.reads)
        };
        let params = match &step.size_after {
            SizeAfter::Known(unique) => group(*unique),
            SizeAfter::UnknownAfterStep(origin) => {
                state = format!("{state}; size known after step {}", origin + 1);
                "?".into()
            }
            SizeAfter::UnknownUntilRun => "?".into(),
        };
        println!(
            "{:>3}  {:<w$} {:<21} {:<w2$} {:>13}  {state}",
            step.index + 1,
            step.name,
            step.kind,
            reads,
            params,
            w2 = w.max(16) + 1
        );
        if let Some(why) = &step.why_unknown {
            println!("{:>5}size unknown until it runs: {why}", "");
        }
    }
    Ok(if planned.over_budget() {
        ExitStatus::OverBudget.into()
    } else {
        ExitCode::SUCCESS
    })
}

/// The last path component, at most 24 characters, for the plan table.
fn short(path: &str) -> String {
    let name = Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.to_string());
    if name.chars().count() > 24 {
        format!(
            "…{}",
            name.chars()
                .skip(name.chars().count() - 23)
                .collect::<String>()
        )
    } else {
        name
    }
}

/// Runs the checked plan, printing each step's progress and output, and how it ended; a failed
/// step's exit status is the run's.
fn execute(plan: &mut Plan, start: Option<usize>) -> anyhow::Result<ExitCode> {
    let recipe_path = plan.recipe.path.clone();
    let names: Vec<String> = plan.recipe.steps.iter().map(|s| s.name.clone()).collect();
    match runner::execute(plan, start, &mut print_progress)? {
        Outcome::Finished(summary) => {
            println!(
                "\nrecipe `{}` finished in {:.1} s",
                summary.recipe, summary.wall_seconds
            );
            for s in &summary.steps {
                println!("  {:<28} {:<8} {:>9.1} s", s.step, s.status, s.seconds);
            }
            Ok(ExitCode::SUCCESS)
        }
        Outcome::Failed {
            step,
            seconds,
            error,
        } => {
            let (code, error) = super::step::failure(error);
            eprintln!(
                "step {} ({}) failed after {seconds:.1} s; the earlier steps' outputs stay valid and \
                 `surgery run {}` resumes at this step",
                step + 1,
                names[step],
                recipe_path.display()
            );
            if let Some(error) = error {
                eprintln!("error: {error:#}");
            }
            Ok(code)
        }
    }
}

fn print_progress(event: Progress<'_>) {
    match event {
        Progress::Stale { step, why } => println!(
            "── {} ({}): done before, but {why}; running it again",
            step.name,
            step.kind.name()
        ),
        Progress::Skipped { step, total } => println!(
            "── {}/{total} {} ({}): done, skipped",
            step.index + 1,
            step.name,
            step.kind.name()
        ),
        Progress::Running { step, total, argv } => println!(
            "── {}/{total} {} ({}): surgery {}",
            step.index + 1,
            step.name,
            step.kind.name(),
            shell_words(argv)
        ),
        Progress::Continuing { dir } => {
            println!("   continuing the interrupted run in {}", dir.display())
        }
        Progress::Output { output, .. } => super::step::print_output(output),
        Progress::Finished { step, seconds } => {
            println!("   {} finished in {seconds:.1} s", step.name)
        }
    }
}
