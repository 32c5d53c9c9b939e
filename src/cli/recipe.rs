//! `surgery run RECIPE.toml`: runs a recipe's steps in order, each through the CLI's own parser,
//! skipping the steps whose output is complete with the same spec hash (so a rerun resumes), and
//! writes the provenance of every output (step.json, recipe-step.toml, README.md model card).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, CommandFactory, Parser};

use surgery::arch::Arch;
use surgery::budget::{group, Budget};
use surgery::data::{read_dataset, LabelSet};
use surgery::io::artefacts::{read_json, StepRecord};
use surgery::io::lock::FolderLock;
use surgery::io::Checkpoint;
use surgery::pipeline::recipe::{did_you_mean, Arg, Kind, Recipe, Step, PLACEMENT_OPTIONS};
use surgery::surgery::Planned;
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

/// A checked recipe: every step's command line parsed by the CLI.
pub struct Plan {
    pub recipe: Recipe,
    pub root: PathBuf,
    commands: Vec<Option<Command>>,
}

/// Options the runner fills in, or that name files a step writes (not checked for existence).
const WRITTEN: [&str; 5] = [
    "out",
    "output",
    "save-json",
    "write-predictions",
    "cache-teacher",
];

impl Plan {
    /// Reads the recipe and parses every step; all problems are reported together.
    pub fn new(path: &Path, vars: &[(String, String)], runs: &Path) -> anyhow::Result<Plan> {
        let (recipe, mut problems) = Recipe::load_lenient(path, vars)?;
        let root = runs.join(&recipe.name);
        let mut plan = Plan {
            recipe,
            root,
            commands: vec![],
        };
        for step in &plan.recipe.steps {
            if !step.is_valid() {
                plan.commands.push(None);
                continue;
            }
            let label = format!("step {} ({})", step.index + 1, step.name);
            let argv = plan.argv(step);
            match Cli::try_parse_from(std::iter::once("surgery".to_string()).chain(argv)) {
                Ok(cli) => plan.commands.push(Some(cli.command)),
                Err(e) => {
                    problems.push(format!("{label}: {}", clap_problem(&e)));
                    plan.commands.push(None);
                    continue;
                }
            }
            for (key, value) in plan.read_paths(step) {
                if !Path::new(&value).exists() {
                    problems.push(format!("{label}: {key}: `{value}` does not exist"));
                }
            }
        }
        if !problems.is_empty() {
            return Err(surgery::Error::Recipe {
                path: path.to_path_buf(),
                problems,
            }
            .into());
        }
        Ok(plan)
    }

    pub fn dir(&self, index: usize) -> PathBuf {
        self.root.join(self.recipe.steps[index].folder_name())
    }

    /// The checkpoint a step hands on: its folder, its run's best/, or (eval, assert-budget)
    /// its own input.
    pub fn output_checkpoint(&self, index: usize) -> PathBuf {
        let step = &self.recipe.steps[index];
        match step.kind {
            _ if !step.is_valid() => self.dir(index),
            k if k.is_surgery() => self.dir(index),
            k if k.is_training() => self.dir(index).join("best"),
            _ => PathBuf::from(self.resolve(&step.input)),
        }
    }

    fn resolve(&self, arg: &Arg) -> String {
        match arg {
            Arg::Text(t) => t.clone(),
            Arg::Step { index, sub } if sub.is_empty() => {
                self.output_checkpoint(*index).display().to_string()
            }
            Arg::Step { index, sub } => self.dir(*index).join(sub).display().to_string(),
        }
    }

    /// The step's command line; the `device` and `kernels` variables, when the recipe has them,
    /// go to every step whose command takes them (and that does not set them itself).
    pub fn argv(&self, step: &Step) -> Vec<String> {
        let mut argv = step.argv(&self.dir(step.index), &|a| self.resolve(a));
        for key in PLACEMENT_OPTIONS {
            let Some(value) = self.recipe.vars.get(key) else {
                continue;
            };
            let set_by_step = step.options.iter().any(|o| o.key == key);
            if !set_by_step && takes_option(step, key) {
                argv.extend([format!("--{key}"), value.clone()]);
            }
        }
        argv
    }

    /// The step's literal path arguments that it reads (its input and every path option but the
    /// ones it writes); paths from earlier steps are not checked, they do not exist yet.
    fn read_paths(&self, step: &Step) -> Vec<(String, String)> {
        let sub = kind_command(step);
        let is_path = |key: &str| {
            sub.get_arguments().any(|a| {
                a.get_long() == Some(key) && a.get_value_hint() == clap::ValueHint::AnyPath
            })
        };
        let mut out = vec![];
        if let Arg::Text(t) = &step.input {
            out.push(("input".to_string(), t.clone()));
        }
        for option in &step.options {
            if WRITTEN.contains(&option.key.as_str()) || !is_path(&option.key) {
                continue;
            }
            for v in &option.values {
                if let Arg::Text(t) = v {
                    out.push((option.key.clone(), t.clone()));
                }
            }
        }
        out
    }

    /// Creates and locks the recipe's run folder for the whole run. It must not overlap what the
    /// recipe reads, and an existing one must be a recipe run this tool wrote.
    fn lock_root(&self) -> anyhow::Result<FolderLock> {
        let mut reads = vec![self.recipe.path.clone()];
        for step in &self.recipe.steps {
            reads.extend(
                self.read_paths(step)
                    .into_iter()
                    .map(|(_, v)| PathBuf::from(v)),
            );
        }
        let reads: Vec<&Path> = reads.iter().map(|p| p.as_path()).collect();
        surgery::io::output::check_no_overlap(&self.root, &reads)?;
        if self.root.exists() && !is_recipe_root(&self.root) {
            return Err(surgery::Error::NotOurs {
                path: self.root.clone(),
            }
            .into());
        }
        std::fs::create_dir_all(&self.root).map_err(|source| surgery::Error::Io {
            path: self.root.clone(),
            source,
        })?;
        surgery::io::output::mark(&self.root, "recipe run")?;
        Ok(FolderLock::acquire(&self.root)?)
    }

    /// True when the step's folder holds a finished output with the step's current hash, and
    /// the output is still there (a deleted `model.safetensors` makes the step run again).
    fn is_done(&self, index: usize) -> bool {
        read_json::<StepRecord>(&self.dir(index).join("step.json"))
            .is_ok_and(|step| step.hash == self.recipe.steps[index].hash)
            && self.outputs_present(index)
    }

    /// The files a finished step leaves: a checkpoint (config and weights) for surgeries and
    /// training, `eval.json` for an evaluation; `assert-budget` writes nothing.
    fn outputs_present(&self, index: usize) -> bool {
        let kind = self.recipe.steps[index].kind;
        if kind.is_surgery() || kind.is_training() {
            let ckpt = self.output_checkpoint(index);
            ckpt.join("config.json").is_file()
                && (ckpt.join("model.safetensors").is_file()
                    || ckpt.join("model.safetensors.index.json").is_file())
        } else if kind == Kind::Eval {
            self.dir(index).join("eval.json").is_file()
        } else {
            true
        }
    }
}

/// One line for a clap error: unknown options with the closest known one, else clap's message.
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

/// Whether a step's command has the option `--key`.
fn takes_option(step: &Step, key: &str) -> bool {
    kind_command(step)
        .get_arguments()
        .any(|a| a.get_long() == Some(key))
}

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
    let rendered = e.render().to_string();
    rendered
        .lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ")
        .to_string()
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let plan = Plan::new(&args.recipe, &args.set, &args.runs)?;
    let start = match &args.from {
        Some(key) => Some(plan.recipe.find_step(key).ok_or_else(|| {
            let steps = plan.recipe.steps.len();
            surgery::Error::Spec(match key.parse::<usize>() {
                Ok(_) => format!(
                    "--from {key}: the recipe has {steps} step(s); give a number in 1..={steps} or a step's name"
                ),
                Err(_) => format!(
                    "--from `{key}`: no such step{}",
                    did_you_mean(key, plan.recipe.steps.iter().map(|s| s.name.as_str()))
                ),
            })
        })?),
        None => None,
    };
    if args.dry_run {
        return dry_run(&plan, start);
    }
    execute(plan, start)
}

/// Prints each step, its state and the predicted unique parameters after it.
fn dry_run(plan: &Plan, start: Option<usize>) -> anyhow::Result<ExitCode> {
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
        let command = plan.commands[step.index].as_ref().expect("checked");
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
        let mut state = match start {
            Some(s) if step.index >= s => "will run (--from)".to_string(),
            _ if plan.is_done(step.index) => "done, will be skipped".to_string(),
            _ => "will run".to_string(),
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

/// Runs the steps in order; a failed step leaves no folder, so a rerun starts at it.
fn execute(mut plan: Plan, start: Option<usize>) -> anyhow::Result<ExitCode> {
    let _lock = plan.lock_root()?;
    // The commands parsed when the plan was checked, each run once.
    let mut commands = std::mem::take(&mut plan.commands);
    let plan = &plan;
    let started = Instant::now();
    let mut summary = vec![];
    let total = plan.recipe.steps.len();
    // Steps run in this invocation: a step reading one of them cannot continue an old run.
    let mut ran = std::collections::BTreeSet::new();
    for step in &plan.recipe.steps {
        let dir = plan.dir(step.index);
        let forced = start.is_some_and(|s| step.index >= s);
        if !forced && plan.is_done(step.index) {
            println!(
                "── {}/{total} {} ({}): done, skipped",
                step.index + 1,
                step.name,
                step.kind.name()
            );
            summary.push(
                serde_json::json!({"step": step.folder_name(), "kind": step.kind.name(),
                "status": "skipped", "seconds": recorded_seconds(&dir)}),
            );
            continue;
        }
        let argv = plan.argv(step);
        println!(
            "── {}/{total} {} ({}): surgery {}",
            step.index + 1,
            step.name,
            step.kind.name(),
            shell_words(&argv)
        );
        let mut command = commands[step.index]
            .take()
            .expect("every step of a checked plan parsed");
        let pending = dir.join(PENDING);
        let interrupted = step.kind.is_training()
            && !forced
            && step.dependencies().is_disjoint(&ran)
            && pending_hash(&pending).as_deref() == Some(step.hash.as_str());
        if interrupted {
            println!("   continuing the interrupted run in {}", dir.display());
        } else if dir.exists() {
            // Not while another process (a manual `train --resume` into it) works there.
            let _step_lock = FolderLock::acquire(&dir)?;
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("removing the stale {}", dir.display()))?;
        }
        ran.insert(step.index);
        if let Command::Train(train) = &mut command {
            // The step's folder records which step it belongs to, so a rerun after a kill
            // continues its training from last/ instead of starting it again.
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            surgery::io::output::mark(&dir, "recipe step")?;
            let text = serde_json::json!({"hash": step.hash}).to_string();
            surgery::io::atomic::write_text(&pending, &text)?;
            train.resume_if_present();
        }
        if !step.kind.is_surgery() && !step.kind.is_training() {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let step_start = Instant::now();
        let result = super::run_command(command);
        let seconds = step_start.elapsed().as_secs_f64();
        // The exit code, and the error when the command returned one (a failed budget check
        // prints its own message and returns exit code 3).
        let failure = match result {
            Ok(code) if code == ExitCode::SUCCESS => None,
            Ok(code) => Some((code, None)),
            Err(e) => Some((super::exit_status(&e).into(), Some(e))),
        };
        if let Some((code, err)) = failure {
            // A folder another process holds is not ours to remove; an interrupted training
            // keeps its last/ so that the rerun continues it.
            let locked = err.as_ref().is_some_and(|e| {
                e.chain()
                    .any(|c| matches!(c.downcast_ref(), Some(surgery::Error::Locked { .. })))
            });
            let resumable =
                step.kind.is_training() && dir.join("last/state/progress.json").is_file();
            if dir.exists() && !locked && !resumable {
                if let Ok(_step_lock) = FolderLock::acquire(&dir) {
                    std::fs::remove_dir_all(&dir).ok();
                }
            }
            eprintln!(
                "step {} ({}) failed after {seconds:.1} s; the earlier steps' outputs stay valid and \
                 `surgery run {}` resumes at this step",
                step.index + 1,
                step.name,
                plan.recipe.path.display()
            );
            if let Some(err) = err {
                eprintln!("error: {err:#}");
            }
            return Ok(code);
        }
        surgery::pipeline::provenance::record(
            &plan.recipe,
            step,
            &dir,
            &plan.output_checkpoint(step.index),
            &argv,
            seconds,
        )
        .with_context(|| format!("writing the provenance of {}", dir.display()))?;
        if pending.exists() {
            std::fs::remove_file(&pending)
                .with_context(|| format!("removing {}", pending.display()))?;
        }
        println!("   {} finished in {seconds:.1} s", step.name);
        summary.push(
            serde_json::json!({"step": step.folder_name(), "kind": step.kind.name(),
            "status": "ran", "seconds": seconds}),
        );
    }
    let wall = started.elapsed().as_secs_f64();
    println!("\nrecipe `{}` finished in {wall:.1} s", plan.recipe.name);
    for s in &summary {
        println!(
            "  {:<28} {:<8} {:>9.1} s",
            s["step"].as_str().unwrap_or_default(),
            s["status"].as_str().unwrap_or_default(),
            s["seconds"].as_f64().unwrap_or(f64::NAN)
        );
    }
    let json =
        serde_json::json!({"recipe": plan.recipe.name, "wall_seconds": wall, "steps": summary});
    surgery::io::atomic::write_text(
        &plan.root.join("summary.json"),
        &serde_json::to_string_pretty(&json).expect("json"),
    )?;
    Ok(ExitCode::SUCCESS)
}

/// The file in a training step's folder that names the step it belongs to while it runs.
const PENDING: &str = ".step-pending.json";

fn pending_hash(path: &Path) -> Option<String> {
    let value: serde_json::Value = read_json(path).ok()?;
    value["hash"].as_str().map(String::from)
}

/// A recipe run folder: marked, or (written before the marker existed) empty but for hidden
/// files, or holding `summary.json` or step folders with `step.json`.
fn is_recipe_root(root: &Path) -> bool {
    if surgery::io::output::is_tool_output(root) || root.join("summary.json").is_file() {
        return true;
    }
    let Ok(entries) = std::fs::read_dir(root) else {
        return false;
    };
    let visible: Vec<_> = entries
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    visible.is_empty() || visible.iter().any(|e| e.path().join("step.json").is_file())
}

fn recorded_seconds(dir: &Path) -> f64 {
    read_json::<StepRecord>(&dir.join("step.json")).map_or(f64::NAN, |step| step.seconds)
}
