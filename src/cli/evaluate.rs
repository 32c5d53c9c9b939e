//! `surgery score` and `surgery predict`: options in, the library's call, output printed
//! (`eval` is a step command: `cli/step.rs`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use surgery::eval::matching;
use surgery::eval::predict::{Prediction, Predictor};
use surgery::io::text_input::Lines;
use surgery::kernels::Compute;
use surgery::metrics::format_report;
use surgery::model::Precision;
use surgery::util::options;

#[derive(Args)]
pub struct ScoreArgs {
    /// CoNLL layout whose last two columns are the gold and the predicted tag.
    file: PathBuf,
    #[arg(long)]
    strict: bool,
    #[arg(long)]
    json: bool,
}

pub fn score(args: ScoreArgs) -> anyhow::Result<ExitCode> {
    let report = surgery::eval::score::score_file(&args.file, matching(args.strict))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", format_report(&report));
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct PredictArgs {
    /// Checkpoint folder with a classifier.
    checkpoint: PathBuf,
    /// Text file, one passage per line (default: standard input).
    #[arg(long)]
    input: Option<PathBuf>,
    #[arg(long, default_value_t = 32, value_parser = options::positive)]
    batch_size: usize,
    /// Precision of the encoder linears' products (bf16: autocast with f32 accumulation).
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    precision: Precision,
    #[command(flatten)]
    compute: Compute,
}

pub fn predict(args: PredictArgs) -> anyhow::Result<ExitCode> {
    let predictor = Predictor::open(
        &args.checkpoint,
        args.precision,
        args.compute,
        args.batch_size,
    )?;
    let print = |predictions: Vec<Prediction>| -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        for p in predictions {
            writeln!(out, "{}", serde_json::to_string(&p)?)?;
        }
        out.flush()?;
        Ok(())
    };
    match &args.input {
        Some(path) => predictor.predict_stream(Lines::open(path)?, print)?,
        None => {
            let stdin = std::io::BufReader::new(std::io::stdin());
            predictor.predict_stream(Lines::new(stdin, std::path::Path::new("<stdin>")), print)?
        }
    }
    Ok(ExitCode::SUCCESS)
}
