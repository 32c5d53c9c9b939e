//! `surgery export`: write a checkpoint as an ONNX model folder for deployment.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, ValueEnum};

use surgery::budget::group;
use surgery::export::{export_onnx, refuse_exported, ExportOptions, LinearStorage, DEFAULT_OPSET};
use surgery::io::Checkpoint;

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    /// One .onnx file with tokenizer.json, labels.json and config.json beside it.
    Onnx,
}

#[derive(Clone, Copy, ValueEnum)]
enum Quantize {
    /// Int8 weights per output channel for the encoder's linears, activations quantized at run time.
    Int8,
}

#[derive(Args)]
pub struct ExportArgs {
    /// Checkpoint folder.
    checkpoint: PathBuf,
    /// Output folder (model.onnx, tokenizer.json, labels.json, config.json).
    out: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "onnx")]
    format: Format,
    /// ONNX opset (17 to 21).
    #[arg(long, default_value_t = DEFAULT_OPSET)]
    opset: i64,
    /// Quantize the encoder's linear layers.
    #[arg(long, value_enum)]
    quantize: Option<Quantize>,
    /// Replace an existing output folder this tool wrote.
    #[arg(long)]
    force: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let Format::Onnx = args.format;
    refuse_exported(&args.checkpoint)?;
    let ckpt = Checkpoint::open(&args.checkpoint)?;
    let options = ExportOptions {
        opset: args.opset,
        linears: match args.quantize {
            None => LinearStorage::F32,
            Some(Quantize::Int8) => LinearStorage::DynamicInt8,
        },
    };
    let summary = export_onnx(&ckpt, &args.out, options, args.force)
        .with_context(|| format!("export {}", args.checkpoint.display()))?;
    if args.json {
        let out = serde_json::json!({
            "model": summary.model_file, "file_bytes": summary.file_bytes,
            "inputs": summary.inputs, "output": summary.output, "opset": args.opset,
            "linears": format!("{:?}", options.linears),
            "stored_parameters": summary.stored_parameters, "nodes": summary.nodes,
            "sparse_linears_stored_dense": summary.sparse_stored_dense,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "wrote {} ({:.1} MB, opset {}, {} nodes, {} stored parameters, linears {:?})",
            summary.model_file.display(),
            summary.file_bytes as f64 / 1e6,
            args.opset,
            summary.nodes,
            group(summary.stored_parameters),
            options.linears
        );
        println!(
            "inputs: {}; output: {}",
            summary.inputs.join(", "),
            summary.output
        );
        if summary.sparse_stored_dense > 0 {
            println!(
                "note: {} sparse linear(s) are stored dense (ONNX MatMul has no sparse weights): the file does not shrink with sparsity",
                summary.sparse_stored_dense
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
