//! `run --dry-run` as a value: each step of a checked plan, what it reads, whether it will run,
//! and the unique parameters after it, predicted from the structure alone (a finished step's
//! output is read instead). The binary only prints the table.

use std::path::Path;

use crate::arch::Arch;
use crate::budget::Budget;
use crate::io::Checkpoint;
use crate::pipeline::recipe::Arg;
use crate::pipeline::runner::Plan;
use crate::pipeline::step::StepCommand;

/// Whether a step will run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepState {
    WillRun,
    /// Finished with these options, but a file it read or wrote changed since (why).
    WillRunAgain(String),
    /// Forced by `--from`.
    WillRunFrom,
    /// Finished with the same spec hash.
    Skipped,
}

/// The unique parameters after a step, when the plan can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SizeAfter {
    Known(u64),
    /// Unknown until this step itself runs.
    UnknownUntilRun,
    /// Unknown until an earlier step (its index) has run.
    UnknownAfterStep(usize),
}

/// An `assert-budget` step's verdict on the predicted size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetVerdict {
    pub unique: u64,
    pub max: u64,
}

impl BudgetVerdict {
    pub fn over(&self) -> bool {
        self.unique > self.max
    }
}

/// One row of the plan.
#[derive(Debug, Clone)]
pub struct PlannedStep {
    pub index: usize,
    pub name: String,
    pub kind: &'static str,
    /// `@step` for an earlier step's output, else the path as written.
    pub reads: String,
    pub state: StepState,
    pub size_after: SizeAfter,
    /// For `assert-budget` steps whose input size is known.
    pub budget: Option<BudgetVerdict>,
    /// Why the size (or the input's) is known only once the step runs.
    pub why_unknown: Option<String>,
    /// The structure after the step, when known.
    pub arch: Option<Arch>,
}

/// The whole plan of a recipe run.
#[derive(Debug, Clone)]
pub struct DryRun {
    pub steps: Vec<PlannedStep>,
}

impl DryRun {
    /// True when an `assert-budget` step would fail.
    pub fn over_budget(&self) -> bool {
        self.steps
            .iter()
            .any(|s| s.budget.is_some_and(|b| b.over()))
    }
}

/// Plans every step of a checked recipe; `start` is `--from`.
pub fn dry_run(plan: &Plan, start: Option<usize>) -> DryRun {
    let steps = &plan.recipe.steps;
    // Per step: the structure after it, or the step whose outcome is not known in advance.
    let mut archs: Vec<Result<Arch, usize>> = vec![];
    let mut rows = vec![];
    for step in steps {
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
        let after = match (finished, plan.command(step.index)) {
            (Some(ckpt), _) => Ok(ckpt.arch),
            (None, Some(command)) => input.and_then(|arch| {
                command.planned_arch(arch).map_err(|e| {
                    why = Some(e);
                    step.index
                })
            }),
            (None, None) => Err(step.index),
        };
        let state = match (start, plan.check_done(step.index)) {
            (Some(s), _) if step.index >= s => StepState::WillRunFrom,
            (_, Ok(())) => StepState::Skipped,
            (_, Err(Some(why))) => StepState::WillRunAgain(why),
            (_, Err(None)) => StepState::WillRun,
        };
        let budget = match (plan.command(step.index), &after) {
            (Some(StepCommand::AssertBudget(a)), Ok(arch)) => Some(BudgetVerdict {
                unique: Budget::of_arch(arch).unique,
                max: a.max,
            }),
            _ => None,
        };
        let reads = match &step.input {
            Arg::Step { index, .. } => format!("@{}", steps[*index].name),
            Arg::Text(t) => t.clone(),
        };
        let size_after = match &after {
            Ok(arch) => SizeAfter::Known(Budget::of_arch(arch).unique),
            Err(origin) if *origin != step.index => SizeAfter::UnknownAfterStep(*origin),
            Err(_) => SizeAfter::UnknownUntilRun,
        };
        rows.push(PlannedStep {
            index: step.index,
            name: step.name.clone(),
            kind: step.kind.name(),
            reads,
            state,
            size_after,
            budget,
            why_unknown: why,
            arch: after.as_ref().ok().cloned(),
        });
        archs.push(after);
    }
    DryRun { steps: rows }
}
