//! `surgery run RECIPE.toml`: the recipe runner of `surgery::pipeline::runner` with the CLI's
//! own parser for the steps' command lines, and the plan of `--dry-run` (the predicted budget
//! after every step).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser};

use surgery::arch::Arch;
use surgery::budget::{group, Budget};
use surgery::cuts::Planned;
use surgery::data::{read_dataset, LabelSet};
use surgery::io::Checkpoint;
use surgery::pipeline::recipe::{Arg, Step};
use surgery::pipeline::runner::{self, Outcome, Plan, Progress, StepCommands, StepFailure};
use surgery::util::exit::ExitStatus;
use surgery::util::shell::shell_words;

use super::{Cli, Command};

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

/// The CLI's side of a recipe run: each step parsed by the CLI's own parser, run by
/// [`super::run_command`], its progress printed.
#[derive(Default)]
struct CliSteps {
    /// The commands parsed when the plan was checked, by step; each runs once.
    commands: BTreeMap<usize, Command>,
}

/// A failed step's exit status, and its error when the command returned one (a failed budget
/// check prints its own message and returns exit code 3).
type StepFailed = (ExitCode, Option<anyhow::Error>);

impl StepCommands for CliSteps {
    type Failure = StepFailed;

    fn check(&mut self, step: &Step, argv: &[String]) -> Result<(), String> {
        let cli =
            Cli::try_parse_from(std::iter::once("surgery").chain(argv.iter().map(String::as_str)))
                .map_err(|e| clap_problem(&e))?;
        self.commands.insert(step.index, cli.command);
        Ok(())
    }

    fn takes_option(&self, step: &Step, key: &str) -> bool {
        kind_command(step)
            .get_arguments()
            .any(|a| a.get_long() == Some(key))
    }

    fn is_path_option(&self, step: &Step, key: &str) -> bool {
        kind_command(step)
            .get_arguments()
            .any(|a| a.get_long() == Some(key) && a.get_value_hint() == clap::ValueHint::AnyPath)
    }

    fn run(&mut self, step: &Step, _argv: &[String]) -> Result<(), StepFailure<StepFailed>> {
        let Some(mut command) = self.commands.remove(&step.index) else {
            let err = surgery::Error::Internal(format!("step {} was not checked", step.index + 1));
            return Err(StepFailure {
                failure: (ExitStatus::Failure.into(), Some(err.into())),
                folder_in_use: false,
            });
        };
        if let Command::Train(train) = &mut command {
            // A step's folder holds a training's last/ only when the runner continues it.
            train.resume_if_present();
        }
        let failure = match super::run_command(command) {
            Ok(code) if code == ExitCode::SUCCESS => return Ok(()),
            Ok(code) => (code, None),
            Err(e) => (super::exit_status(&e).into(), Some(e)),
        };
        // A folder another process holds is not the runner's to remove.
        let folder_in_use = failure.1.as_ref().is_some_and(|e| {
            e.chain()
                .any(|c| matches!(c.downcast_ref(), Some(surgery::Error::Locked { .. })))
        });
        Err(StepFailure {
            failure,
            folder_in_use,
        })
    }

    fn progress(&mut self, event: Progress<'_>) {
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
            Progress::Finished { step, seconds } => {
                println!("   {} finished in {seconds:.1} s", step.name)
            }
        }
    }
}

/// The CLI's definition of a step's command.
fn kind_command(step: &Step) -> clap::Command {
    let mut command = Cli::command();
    for word in step.kind.name().split(' ') {
        command = command
            .find_subcommand(word)
            .expect("every kind is a subcommand")
            .clone();
    }
    command
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

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let mut steps = CliSteps::default();
    let plan = Plan::check(&args.recipe, &args.set, &args.runs, &mut steps)?;
    let start = args
        .from
        .as_deref()
        .map(|key| plan.start_at(key))
        .transpose()?;
    if args.dry_run {
        return dry_run(&plan, &steps, start);
    }
    execute(&plan, start, &mut steps)
}

/// Prints each step, its state and the predicted unique parameters after it.
fn dry_run(plan: &Plan, parsed: &CliSteps, start: Option<usize>) -> anyhow::Result<ExitCode> {
    let steps = &plan.recipe.steps;
    println!(
        "recipe `{}`: {} steps → {}",
        plan.recipe.name,
        steps.len(),
        plan.root.display()
    );
    let w = steps
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
    // Per step: the structure after it, or the step whose outcome is not known in advance.
    let mut archs: Vec<Result<Arch, usize>> = vec![];
    let mut over_budget = false;
    for step in steps {
        let command = &parsed.commands[&step.index];
        let mut why = None;
        let input = match &step.input {
            Arg::Step { index, .. } => archs[*index].clone(),
            Arg::Text(path) => Checkpoint::open(Path::new(path))
                .map(|c| c.arch)
                .map_err(|e| {
                    why = Some(e.to_string());
                    step.index
                }),
        };
        // A finished step's output is read (its header) instead of predicted.
        let finished = plan
            .is_done(step.index)
            .then(|| Checkpoint::open(&plan.output_checkpoint(step.index)).ok())
            .flatten();
        let after = match finished {
            Some(ckpt) => Ok(ckpt.arch),
            None => input.and_then(|arch| {
                planned_arch(command, arch).map_err(|e| {
                    why = Some(e);
                    step.index
                })
            }),
        };
        let mut state = match (start, plan.check_done(step.index)) {
            (Some(s), _) if step.index >= s => "will run (--from)".to_string(),
            (_, Ok(())) => "done, will be skipped".to_string(),
            (_, Err(Some(why))) => format!("will run again: {why}"),
            (_, Err(None)) => "will run".to_string(),
        };
        if let (Command::AssertBudget(a), Ok(arch)) = (command, &after) {
            let unique = Budget::of_arch(arch).unique;
            if unique > a.max() {
                over_budget = true;
                state = format!("OVER BUDGET by {}", group(unique - a.max()));
            } else {
                state = format!(
                    "{state}; within budget ({} to spare)",
                    group(a.max() - unique)
                );
            }
        }
        let reads = match &step.input {
            Arg::Step { index, .. } => format!("@{}", steps[*index].name),
            Arg::Text(t) => short(t),
        };
        let params = match &after {
            Ok(arch) => group(Budget::of_arch(arch).unique),
            Err(origin) if *origin != step.index => {
                state = format!("{state}; size known after step {}", origin + 1);
                "?".into()
            }
            Err(_) => "?".into(),
        };
        println!(
            "{:>3}  {:<w$} {:<21} {:<w2$} {:>13}  {state}",
            step.index + 1,
            step.name,
            step.kind.name(),
            reads,
            params,
            w2 = w.max(16) + 1
        );
        if let Some(why) = why {
            println!("{:>5}size unknown until it runs: {why}", "");
        }
        archs.push(after);
    }
    Ok(if over_budget {
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

/// The structure after a step, from the structure before it.
fn planned_arch(command: &Command, arch: Arch) -> Result<Arch, String> {
    match command {
        Command::Surgery(cut) => match cut.plan(&arch).map_err(|e| e.to_string())? {
            Planned::Exact(a) => Ok(a),
            Planned::Unknown(why) => Err(why),
        },
        Command::Train(train) if arch.num_labels.is_none() => {
            // Fine-tuning adds a classifier for the training file's labels.
            let path = &train.data().train;
            let data =
                read_dataset(path, &train.data().read_options()).map_err(|e| e.to_string())?;
            let labels = LabelSet::discover(&data).map_err(|e| e.to_string())?;
            Ok(Arch {
                num_labels: Some(labels.len()),
                ..arch
            })
        }
        _ => Ok(arch),
    }
}

/// Runs the checked plan and prints how it ended; a failed step's exit status is the run's.
fn execute(plan: &Plan, start: Option<usize>, steps: &mut CliSteps) -> anyhow::Result<ExitCode> {
    match runner::execute(plan, start, steps)? {
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
            failure: (code, err),
        } => {
            eprintln!(
                "step {} ({}) failed after {seconds:.1} s; the earlier steps' outputs stay valid and \
                 `surgery run {}` resumes at this step",
                step + 1,
                plan.recipe.steps[step].name,
                plan.recipe.path.display()
            );
            if let Some(err) = err {
                eprintln!("error: {err:#}");
            }
            Ok(code)
        }
    }
}
