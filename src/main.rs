//! The `surgery` binary: parse the command line, run it, print the error chain on failure.
//! Exit codes: 0 ok, 1 internal failure, 2 user error (bad path, input or option), 3 over budget.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            let mut message = format!("error: {err}");
            for cause in err.chain().skip(1) {
                message.push_str(&format!(": {cause}"));
            }
            eprintln!("{message}");
            ExitCode::from(cli::exit_code(&err))
        }
    }
}

mod cli;
