//! The commands a recipe step can run (`surgery::pipeline::step`), run alone: the library runs
//! them, this prints what they made, the same way whether a command line or a recipe ran it.

use std::process::ExitCode;

use surgery::budget::group;
use surgery::metrics::format_report;
use surgery::pipeline::step::{StepCommand, StepError, StepOutput};
use surgery::train::trainer::TrainOutcome;
use surgery::util::exit::ExitStatus;

/// Runs one step command and prints its output.
pub fn run(command: StepCommand) -> anyhow::Result<ExitCode> {
    match command.run(false) {
        Ok(output) => {
            print_output(&output);
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => match failure(error) {
            (code, None) => Ok(code),
            (_, Some(error)) => Err(error),
        },
    }
}

/// A failed step's exit status, and the error to print unless the step has printed why
/// (a failed budget check prints its verdict and exits 3).
pub fn failure(error: StepError) -> (ExitCode, Option<anyhow::Error>) {
    match error {
        StepError::OverBudget { unique, max } => {
            eprintln!(
                "over budget: {} unique parameters > {} (by {})",
                group(unique),
                group(max),
                group(unique - max)
            );
            (ExitStatus::OverBudget.into(), None)
        }
        StepError::Failed(e) => (e.exit_status().into(), Some(e.into())),
    }
}

/// Prints what a step made, as its command does on its own.
pub fn print_output(output: &StepOutput) {
    match output {
        StepOutput::Trained { outcome, outputs } => {
            print_training(outcome);
            for (label, path) in outputs {
                println!("{label}: {}", path.display());
            }
        }
        StepOutput::Cut {
            entry: e,
            report,
            output,
            json,
        } => {
            if *json {
                let out = serde_json::json!({"op": e.op, "args": e.args,
                    "params_before": e.params_before, "params_after": e.params_after,
                    "report": report, "output": output});
                println!(
                    "{}",
                    serde_json::to_string_pretty(&out).expect("JSON values serialise")
                );
            } else {
                let change = 100.0 * (e.params_after as f64 / e.params_before as f64 - 1.0);
                println!(
                    "{}: unique parameters {} → {} ({change:+.1}%)",
                    e.op,
                    group(e.params_before),
                    group(e.params_after)
                );
                if let Some(map) = report.as_object() {
                    for (k, v) in map {
                        println!("  {k}: {v}");
                    }
                }
                println!("wrote {}", output.display());
            }
        }
        StepOutput::Evaluated {
            evaluation: e,
            json,
        } => {
            if *json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&e.record).expect("records serialise")
                );
            } else {
                print!("{}", format_report(&e.report));
                println!(
                    "\n{} sentences, {:.0} tokens/s ({:.2} s)",
                    e.sentences, e.tokens_per_second, e.seconds
                );
            }
        }
        StepOutput::WithinBudget { unique, max } => println!(
            "within budget: {} ≤ {} ({} to spare)",
            group(*unique),
            group(*max),
            group(max - unique)
        ),
    }
}

/// Prints the outcome of a training run.
fn print_training(outcome: &TrainOutcome) {
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
