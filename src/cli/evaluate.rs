//! `surgery eval`, `surgery score` and `surgery predict`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use surgery::data::labels::UnknownLabels;
use surgery::data::tokenize::WordTokenizer;
use surgery::data::{read_dataset, Alignment, LabelSet, ReadOptions};
use surgery::eval::{evaluate_model, Prepared};
use surgery::io::output::{check_file_output, FileKind};
use surgery::io::text_input::Lines;
use surgery::io::Checkpoint;
use surgery::kernels::Compute;
use surgery::metrics::{format_report, Matching};
use surgery::model::{Bert, Precision};
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

fn checkpoint_labels(ckpt: &Checkpoint) -> anyhow::Result<LabelSet> {
    Ok(LabelSet::new(ckpt.require_labels()?)?)
}

pub fn eval(args: EvalArgs) -> anyhow::Result<ExitCode> {
    let ckpt = Checkpoint::open(&args.checkpoint)?;
    let labels = checkpoint_labels(&ckpt)?;
    let unknown = match args.unknown_labels.as_str() {
        "error" => UnknownLabels::Error,
        "o" | "O" => UnknownLabels::Outside,
        other => {
            return Err(surgery::Error::Spec(format!(
                "--unknown-labels `{other}`: expected error or o"
            ))
            .into())
        }
    };
    let options = ReadOptions {
        iob1_to_iob2: args.iob1,
        tag_names: (!args.tag_names.is_empty()).then(|| args.tag_names.clone()),
    };
    let outputs = [
        (&args.save_json, FileKind::EvalJson),
        (&args.write_predictions, FileKind::Predictions),
    ];
    for (out, kind) in outputs {
        if let Some(out) = out {
            check_file_output(out, &[&args.checkpoint, &args.data], args.force, kind)?;
        }
    }
    let data = read_dataset(&args.data, &options)?;
    let tokenizer = WordTokenizer::from_checkpoint(&ckpt)?;
    let max_len = match args.max_len {
        Some(n) => {
            options::check_max_len("--max-len", n, ckpt.arch.max_positions)?;
            n
        }
        None => ckpt.arch.max_positions.min(128),
    };
    let prepared = Prepared::new(
        &tokenizer,
        data,
        &labels,
        unknown,
        Alignment::FirstSubtoken,
        max_len,
    )?;
    let (device, kernels) = args.compute.open()?;
    let model = Bert::load(&ckpt, &device)?
        .with_precision(args.precision)
        .with_kernels(kernels);
    let e = evaluate_model(
        &model,
        &prepared,
        &labels,
        tokenizer.pad_id(),
        args.batch_size,
        mode(args.strict),
        &device,
    )?;
    if let Some(path) = &args.write_predictions {
        let mut text = String::new();
        for (s, pred) in prepared.data.sentences.iter().zip(&e.predicted) {
            for ((w, g), p) in s.words.iter().zip(&s.tags).zip(pred) {
                text.push_str(&format!("{w} {g} {p}\n"));
            }
            text.push('\n');
        }
        surgery::io::atomic::write_text(path, &text)?;
    }
    let record = e.record(&args.checkpoint, &args.data);
    if let Some(path) = &args.save_json {
        surgery::io::artefacts::write_json(path, &record)?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&record)?);
    } else {
        print!("{}", format_report(&e.report));
        println!(
            "\n{} sentences, {:.0} tokens/s ({:.2} s)",
            prepared.data.sentences.len(),
            e.tokens_per_second,
            e.seconds
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
    let ckpt = Checkpoint::open(&args.checkpoint)?;
    let (device, kernels) = args.compute.open()?;
    let model = Bert::load(&ckpt, &device)?
        .with_precision(args.precision)
        .with_kernels(kernels);
    let tag = |lines: &[String]| -> anyhow::Result<()> {
        let predictions =
            surgery::eval::predict::predict_lines(&ckpt, &model, lines, args.batch_size)?;
        let mut out = std::io::stdout().lock();
        for p in predictions {
            writeln!(out, "{}", serde_json::to_string(&p)?)?;
        }
        out.flush()?;
        Ok(())
    };
    match &args.input {
        Some(path) => tag_as_they_arrive(Lines::open(path)?, args.batch_size, tag)?,
        None => {
            let stdin = std::io::BufReader::new(std::io::stdin());
            let lines = Lines::new(stdin, std::path::Path::new("<stdin>"));
            tag_as_they_arrive(lines, args.batch_size, tag)?
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Tags lines as they arrive: a batch ends when it is full or when no more input is waiting, so
/// an interactive session gets each answer at once. Raw text may hold NUL (it is dropped).
fn tag_as_they_arrive<R: std::io::Read>(
    lines: Lines<std::io::BufReader<R>>,
    batch_size: usize,
    tag: impl Fn(&[String]) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut lines = lines.allow_nul();
    let mut batch = vec![];
    while let Some(line) = lines.next() {
        batch.push(line?);
        if batch.len() >= batch_size || !lines.has_buffered() {
            tag(&std::mem::take(&mut batch))?;
        }
    }
    if !batch.is_empty() {
        tag(&batch)?;
    }
    Ok(())
}
