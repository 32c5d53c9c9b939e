//! The surgery subcommands: read IN, apply, print the budget before → after, write OUT.

use std::process::ExitCode;

use surgery::budget::group;
use surgery::cuts::registry::SurgeryCommand;
use surgery::io::Checkpoint;

/// Runs one surgery: checks the output, reads IN, cuts, writes OUT, prints the budget change.
pub fn run(command: SurgeryCommand) -> anyhow::Result<ExitCode> {
    let io = command.io();
    let mut reads = command.reads();
    reads.push(&io.input);
    surgery::io::output::check_output(&io.output, &reads, io.force)?;
    let input = Checkpoint::open(&io.input)?;
    let outcome = command.apply(&input)?;
    outcome.save(&io.output, io.force)?;
    let e = &outcome.entry;
    if io.json {
        let out = serde_json::json!({"op": e.op, "args": e.args, "params_before": e.params_before,
            "params_after": e.params_after, "report": outcome.report, "output": io.output});
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        let change = 100.0 * (e.params_after as f64 / e.params_before as f64 - 1.0);
        println!(
            "{}: unique parameters {} → {} ({change:+.1}%)",
            e.op,
            group(e.params_before),
            group(e.params_after)
        );
        if let Some(map) = outcome.report.as_object() {
            for (k, v) in map {
                println!("  {k}: {v}");
            }
        }
        println!("wrote {}", io.output.display());
    }
    Ok(ExitCode::SUCCESS)
}
