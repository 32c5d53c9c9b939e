//! `surgery eval`, `surgery score` and `surgery predict`: options in, the library's call, output
//! printed.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use surgery::data::labels::UnknownLabels;
use surgery::data::ReadOptions;
use surgery::eval::predict::{Prediction, Predictor};
use surgery::eval::EvalRequest;
use surgery::io::text_input::Lines;
use surgery::kernels::Compute;
use surgery::metrics::{format_report, Matching};
use surgery::model::Precision;
use surgery::util::options;

#[derive(Args)]
pub struct EvalArgs {
    /// Checkpoint folder with a classifier.
    checkpoint: PathBuf,
    /// Labelled data (CoNLL or JSONL).
    #[arg(long)]
    data: PathBuf,
    /// Print JSON instead of the report table.
    #[arg(long)]
    json: bool,
    /// seqeval's strict mode with the IOB2 scheme.
    #[arg(long)]
    strict: bool,
    /// Write `word gold predicted` lines (CoNLL layout, for `surgery score`).
    #[arg(long)]
    write_predictions: Option<PathBuf>,
    /// Also write the JSON report to this file.
    #[arg(long)]
    save_json: Option<PathBuf>,
    #[arg(long, default_value_t = 64, value_parser = options::positive)]
    batch_size: usize,
    /// Tokens per window (default: 128, or the model's positions when fewer).
    #[arg(long, value_parser = options::max_len)]
    max_len: Option<usize>,
    /// Convert IOB1 tags to IOB2 while reading.
    #[arg(long)]
    iob1: bool,
    /// Tags the checkpoint does not know: `error` or `o` (treated as O for alignment).
    #[arg(long, default_value = "error")]
    unknown_labels: String,
    /// Label names for JSONL files whose `ner_tags` are integers, in id order.
    #[arg(long, value_delimiter = ',')]
    tag_names: Vec<String>,
    /// Replace existing --save-json / --write-predictions files (only ones surgery wrote).
    #[arg(long)]
    force: bool,
    /// Precision of the encoder linears' products (bf16: autocast with f32 accumulation).
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    precision: Precision,
    #[command(flatten)]
    compute: Compute,
}

fn mode(strict: bool) -> Matching {
    if strict {
        Matching::StrictIob2
    } else {
        Matching::Default
    }
}

/// `--unknown-labels`: `error` or `o`.
fn unknown_labels(text: &str) -> anyhow::Result<UnknownLabels> {
    match text {
        "error" => Ok(UnknownLabels::Error),
        "o" | "O" => Ok(UnknownLabels::Outside),
        other => Err(surgery::Error::Spec(format!(
            "--unknown-labels `{other}`: expected error or o"
        ))
        .into()),
    }
}

pub fn eval(args: EvalArgs) -> anyhow::Result<ExitCode> {
    let request = EvalRequest {
        unknown_labels: unknown_labels(&args.unknown_labels)?,
        read: ReadOptions {
            iob1_to_iob2: args.iob1,
            tag_names: (!args.tag_names.is_empty()).then_some(args.tag_names),
        },
        matching: mode(args.strict),
        checkpoint: args.checkpoint,
        data: args.data,
        batch_size: args.batch_size,
        max_len: args.max_len,
        precision: args.precision,
        compute: args.compute,
        write_predictions: args.write_predictions,
        save_json: args.save_json,
        force: args.force,
    };
    let e = surgery::eval::run_eval(&request)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&e.record)?);
    } else {
        print!("{}", format_report(&e.report));
        println!(
            "\n{} sentences, {:.0} tokens/s ({:.2} s)",
            e.sentences, e.tokens_per_second, e.seconds
        );
    }
    Ok(ExitCode::SUCCESS)
}

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
    let report = surgery::eval::score::score_file(&args.file, mode(args.strict))?;
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
