//! Runs a recipe: its steps in order under `runs/<recipe>/NN-step/`, skipping the steps whose
//! folder holds a finished output with the same spec hash and whose files read and written are
//! unchanged (`step_check`), so a rerun resumes and a changed step re-runs with everything
//! downstream; continuing a training step a kill interrupted, removing what a failed step
//! leaves, and recording each output's provenance and `summary.json`.
//!
//! A step's command line is parsed into a [`StepCommand`], the same typed command the CLI runs,
//! so a recipe and a command line can never disagree; the runner runs it itself.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::error::{Error, Result};
use crate::io::artefacts::{read_json, write_json, PendingStep, RunSummary, StepRecord};
use crate::io::artefacts::{StepStatus, StepSummary};
use crate::io::lock::FolderLock;
use crate::pipeline::recipe::{did_you_mean, Arg, Kind, Recipe, Step, PLACEMENT_OPTIONS};
use crate::pipeline::step::{StepCommand, StepError, StepOutput};
use crate::pipeline::step_check;

/// The runner's progress through the steps.
pub enum Progress<'a> {
    /// A finished step with the same spec hash whose files changed since: it runs again.
    Stale {
        step: &'a Step,
        why: &'a str,
    },
    /// A finished step with the same spec hash and unchanged files, left as it is.
    Skipped {
        step: &'a Step,
        total: usize,
    },
    /// A step about to run this command line.
    Running {
        step: &'a Step,
        total: usize,
        argv: &'a [String],
    },
    /// The training of a step a kill interrupted continues in `dir`.
    Continuing {
        dir: &'a Path,
    },
    /// What the step's command made (what the command prints on its own).
    Output {
        step: &'a Step,
        output: &'a StepOutput,
    },
    Finished {
        step: &'a Step,
        seconds: f64,
    },
}

/// How a run ended.
pub enum Outcome {
    /// Every step is done; the summary is also in `summary.json`.
    Finished(RunSummary),
    /// Step `step` failed after `seconds`; the steps before it keep their outputs and a rerun
    /// starts at it.
    Failed {
        step: usize,
        seconds: f64,
        error: StepError,
    },
}

/// A checked recipe: every step's command line parsed, every file it names present.
pub struct Plan {
    pub recipe: Recipe,
    /// The recipe's run folder, `runs/<recipe>`.
    pub root: PathBuf,
    /// Each step's command line.
    argv: Vec<Vec<String>>,
    /// Each valid step's command, parsed from its command line; taken when it runs.
    commands: Vec<Option<StepCommand>>,
    /// What the steps read that exists before the run (the recipe file, inputs, data): the run
    /// folder must not overlap it.
    reads: Vec<PathBuf>,
    /// Each step's input paths, earlier steps' outputs included (recorded in its step.json).
    inputs: Vec<Vec<PathBuf>>,
}

impl Plan {
    /// Reads the recipe and parses every step's command; every problem of the recipe is
    /// reported together, before anything runs.
    pub fn check(path: &Path, vars: &[(String, String)], runs: &Path) -> Result<Plan> {
        let (recipe, mut problems) = Recipe::load_lenient(path, vars)?;
        let mut plan = Plan {
            root: runs.join(&recipe.name),
            reads: vec![recipe.path.clone()],
            argv: vec![],
            commands: vec![],
            inputs: vec![],
            recipe,
        };
        for step in &plan.recipe.steps {
            if !step.is_valid() {
                plan.argv.push(vec![]);
                plan.commands.push(None);
                plan.inputs.push(vec![]);
                continue;
            }
            let label = format!("step {} ({})", step.index + 1, step.name);
            let argv = plan.command_line(step);
            let parsed = StepCommand::parse(&argv);
            plan.argv.push(argv);
            let inputs = step_check::input_paths(step, &|a| plan.resolve(a), &|key| {
                is_path_option(step, key)
            });
            plan.inputs.push(inputs);
            match parsed {
                Ok(command) => plan.commands.push(Some(command)),
                Err(problem) => {
                    plan.commands.push(None);
                    problems.push(format!("{label}: {problem}"));
                    continue;
                }
            }
            for (key, value) in read_paths(step) {
                if !Path::new(&value).exists() {
                    problems.push(format!("{label}: {key}: `{value}` does not exist"));
                }
                plan.reads.push(PathBuf::from(value));
            }
        }
        if !problems.is_empty() {
            return Err(Error::Recipe {
                path: path.to_path_buf(),
                problems,
            });
        }
        Ok(plan)
    }

    /// The step `--from KEY` names (by name or 1-based number).
    pub fn start_at(&self, key: &str) -> Result<usize> {
        self.recipe.find_step(key).ok_or_else(|| {
            let steps = self.recipe.steps.len();
            Error::Spec(match key.parse::<usize>() {
                Ok(_) => format!(
                    "--from {key}: the recipe has {steps} step(s); give a number in 1..={steps} or a step's name"
                ),
                Err(_) => format!(
                    "--from `{key}`: no such step{}",
                    did_you_mean(key, self.recipe.steps.iter().map(|s| s.name.as_str()))
                ),
            })
        })
    }

    /// A step's folder, `runs/<recipe>/NN-name`.
    pub fn dir(&self, index: usize) -> PathBuf {
        self.root.join(self.recipe.steps[index].folder_name())
    }

    /// A step's command line (without the program name).
    pub fn argv(&self, index: usize) -> &[String] {
        &self.argv[index]
    }

    /// A step's parsed command (`None` once it has run, or for a step with problems).
    pub fn command(&self, index: usize) -> Option<&StepCommand> {
        self.commands.get(index).and_then(Option::as_ref)
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

    pub(crate) fn resolve(&self, arg: &Arg) -> String {
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
    fn command_line(&self, step: &Step) -> Vec<String> {
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

    /// True when the step's folder holds a finished output with the step's current hash, and
    /// the files it read and wrote are unchanged (see [`check_done`](Self::check_done)).
    pub fn is_done(&self, index: usize) -> bool {
        self.check_done(index).is_ok()
    }

    /// `Ok` when the step is done: a finished output with the step's current hash, still there,
    /// and the files it read and wrote unchanged. `Err(Some(why))` when it finished with these
    /// options but a file changed since; `Err(None)` when it never finished with them.
    pub fn check_done(&self, index: usize) -> std::result::Result<(), Option<String>> {
        let record = read_json::<StepRecord>(&self.dir(index).join("step.json"))
            .ok()
            .filter(|step| step.hash == self.recipe.steps[index].hash)
            .ok_or(None)?;
        if !self.outputs_present(index) {
            return Err(Some("its output is missing".into()));
        }
        step_check::verify(record.files.as_ref()).map_err(Some)
    }

    /// What a step writes that a later run checks: the checkpoint of a surgery or a training,
    /// the evaluation of `eval`.
    fn written(&self, index: usize) -> Vec<PathBuf> {
        let kind = self.recipe.steps[index].kind;
        if kind.is_surgery() || kind.is_training() {
            vec![self.output_checkpoint(index)]
        } else if kind == Kind::Eval {
            vec![self.dir(index).join("eval.json")]
        } else {
            vec![]
        }
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

    /// Creates and locks the recipe's run folder for the whole run. It must not overlap what the
    /// recipe reads, and an existing one must be a recipe run this tool wrote.
    fn lock_root(&self) -> Result<FolderLock> {
        let reads: Vec<&Path> = self.reads.iter().map(|p| p.as_path()).collect();
        crate::io::output::check_no_overlap(&self.root, &reads)?;
        if self.root.exists() && !is_recipe_root(&self.root) {
            return Err(Error::NotOurs {
                path: self.root.clone(),
            });
        }
        std::fs::create_dir_all(&self.root).map_err(|e| Error::io(&self.root, e))?;
        crate::io::output::mark(&self.root, "recipe run")?;
        FolderLock::acquire(&self.root)
    }
}

/// Whether the step's command has the option `--key`.
fn takes_option(step: &Step, key: &str) -> bool {
    StepCommand::definition(step.kind.name())
        .is_some_and(|c| c.get_arguments().any(|a| a.get_long() == Some(key)))
}

/// Whether the step's option `--key` names a file or folder.
fn is_path_option(step: &Step, key: &str) -> bool {
    StepCommand::definition(step.kind.name()).is_some_and(|c| {
        c.get_arguments()
            .any(|a| a.get_long() == Some(key) && a.get_value_hint() == clap::ValueHint::AnyPath)
    })
}

/// The step's literal path arguments that it reads (its input and every path option but the
/// ones it writes); paths from earlier steps are not listed, they do not exist yet.
fn read_paths(step: &Step) -> Vec<(String, String)> {
    let mut out = vec![];
    if let Arg::Text(t) = &step.input {
        out.push(("input".to_string(), t.clone()));
    }
    for option in &step.options {
        if step_check::WRITTEN.contains(&option.key.as_str()) || !is_path_option(step, &option.key)
        {
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

/// Runs the steps in order from a checked plan; `start` forces the steps from it on to run
/// again. A failed step leaves no folder (but a training run's resumable state), so a rerun
/// starts at it.
pub fn execute(
    plan: &mut Plan,
    start: Option<usize>,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<Outcome> {
    let _lock = plan.lock_root()?;
    let mut commands = std::mem::take(&mut plan.commands);
    let plan = &*plan;
    let started = Instant::now();
    let mut steps = vec![];
    let total = plan.recipe.steps.len();
    // Steps run in this invocation: a step reading one of them cannot continue an old run.
    let mut ran = BTreeSet::new();
    for step in &plan.recipe.steps {
        let dir = plan.dir(step.index);
        let forced = start.is_some_and(|s| step.index >= s);
        let done = if forced {
            Err(None)
        } else {
            plan.check_done(step.index)
        };
        if let Err(Some(why)) = &done {
            progress(Progress::Stale { step, why });
        }
        if done.is_ok() {
            progress(Progress::Skipped { step, total });
            steps.push(StepSummary {
                step: step.folder_name(),
                kind: step.kind.name().to_string(),
                status: StepStatus::Skipped,
                seconds: recorded_seconds(&dir),
            });
            continue;
        }
        let argv = plan.argv(step.index);
        progress(Progress::Running { step, total, argv });
        let pending = dir.join(PendingStep::FILE);
        let interrupted = step.kind.is_training()
            && !forced
            && step.dependencies().is_disjoint(&ran)
            && pending_hash(&pending).as_deref() == Some(step.hash.as_str());
        if interrupted {
            progress(Progress::Continuing { dir: &dir });
        } else if dir.exists() {
            // Not while another process (a manual `train --resume` into it) works there.
            let _step_lock = FolderLock::acquire(&dir)?;
            std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        ran.insert(step.index);
        if step.kind.is_training() {
            // The step's folder records which step it belongs to, so a rerun after a kill
            // continues its training from last/ instead of starting it again.
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            crate::io::output::mark(&dir, "recipe step")?;
            write_json(
                &pending,
                &PendingStep {
                    hash: step.hash.clone(),
                },
            )?;
        }
        if !step.kind.is_surgery() && !step.kind.is_training() {
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        let step_start = Instant::now();
        let result = match commands[step.index].take() {
            // The step's folder holds a training's last/ only when the runner continues it.
            Some(command) => command.run(true),
            None => Err(StepError::Failed(Error::Internal(format!(
                "step {} was not checked",
                step.index + 1
            )))),
        };
        let seconds = step_start.elapsed().as_secs_f64();
        let output = match result {
            Ok(output) => output,
            Err(error) => {
                // An interrupted training keeps its last/ so that the rerun continues it.
                let resumable =
                    step.kind.is_training() && dir.join("last/state/progress.json").is_file();
                // A folder another process holds is not the runner's to remove.
                let in_use = matches!(error, StepError::Failed(Error::Locked { .. }));
                if dir.exists() && !in_use && !resumable {
                    if let Ok(_step_lock) = FolderLock::acquire(&dir) {
                        std::fs::remove_dir_all(&dir).ok();
                    }
                }
                return Ok(Outcome::Failed {
                    step: step.index,
                    seconds,
                    error,
                });
            }
        };
        progress(Progress::Output {
            step,
            output: &output,
        });
        let files = step_check::record(&plan.inputs[step.index], &plan.written(step.index))?;
        crate::pipeline::provenance::record(
            &plan.recipe,
            step,
            &dir,
            &plan.output_checkpoint(step.index),
            argv,
            seconds,
            files,
        )?;
        if pending.exists() {
            std::fs::remove_file(&pending).map_err(|e| Error::io(&pending, e))?;
        }
        progress(Progress::Finished { step, seconds });
        steps.push(StepSummary {
            step: step.folder_name(),
            kind: step.kind.name().to_string(),
            status: StepStatus::Ran,
            seconds,
        });
    }
    let summary = RunSummary {
        recipe: plan.recipe.name.clone(),
        wall_seconds: started.elapsed().as_secs_f64(),
        steps,
    };
    write_json(&plan.root.join(RunSummary::FILE), &summary)?;
    Ok(Outcome::Finished(summary))
}

/// The spec hash a training step's folder was started for, if a run of it was interrupted.
fn pending_hash(path: &Path) -> Option<String> {
    read_json::<PendingStep>(path).ok().map(|p| p.hash)
}

/// A recipe run folder: marked, or (written before the marker existed) empty but for hidden
/// files, or holding `summary.json` or step folders with `step.json`.
fn is_recipe_root(root: &Path) -> bool {
    if crate::io::output::is_tool_output(root) || root.join(RunSummary::FILE).is_file() {
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

/// The seconds a skipped step took when it ran (NaN when its record is unreadable).
fn recorded_seconds(dir: &Path) -> f64 {
    read_json::<StepRecord>(&dir.join("step.json")).map_or(f64::NAN, |step| step.seconds)
}
