//! `surgery train NAME`: every training command of the registry (`surgery::train::registry`).

use std::process::ExitCode;

pub use surgery::train::registry::TrainCommand;
use surgery::train::trainer::TrainOutcome;

pub fn run(command: TrainCommand) -> anyhow::Result<ExitCode> {
    let outcome = command.train()?;
    report(&outcome);
    for (label, file) in command.outputs() {
        let path = command.common().run.out.join(file);
        println!("{label}: {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
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
