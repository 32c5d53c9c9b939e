//! `surgery export`: a checkpoint of any structure [`crate::arch::Arch`] describes written as one
//! ONNX file (opset 17+), with the tokenizer, the labels and the config beside it, optionally
//! with int8 linear layers (dynamic quantization), so the compressed model runs in ONNX Runtime.

mod bert;
mod graph;
#[allow(clippy::all, missing_docs)]
pub mod onnx_proto;
mod quantize;

use std::path::{Path, PathBuf};

use prost::Message;

use crate::arch::LinearKind;
use crate::error::{Error, Result};
use crate::io::{atomic::AtomicDir, output, Checkpoint};
pub use bert::LinearStorage;

/// The opsets this exporter writes: LayerNormalization needs 17; every op used is unchanged up to 21.
pub const OPSETS: std::ops::RangeInclusive<i64> = 17..=21;
/// The default opset: the oldest that has LayerNormalization, so older runtimes load the file.
pub const DEFAULT_OPSET: i64 = 17;
/// The name of the model file inside the output folder.
pub const MODEL_FILE: &str = "model.onnx";
/// Protobuf messages are limited to 2 GiB; larger models would need external data files.
const PROTOBUF_LIMIT: usize = (2 << 30) - (1 << 20);

/// What to write.
#[derive(Debug, Clone, Copy)]
pub struct ExportOptions {
    pub opset: i64,
    pub linears: LinearStorage,
}

/// What was written.
#[derive(Debug, Clone)]
pub struct ExportSummary {
    pub model_file: PathBuf,
    pub file_bytes: u64,
    pub inputs: Vec<&'static str>,
    pub output: &'static str,
    /// Elements of the parameter initializers (each shared parameter once).
    pub stored_parameters: u64,
    pub nodes: usize,
    /// Linears whose zeros are stored as dense values (ONNX has no sparse MatMul weight).
    pub sparse_stored_dense: usize,
}

/// The IR version that goes with an opset (onnx/helper.py's VERSION_TABLE).
fn ir_version(opset: i64) -> i64 {
    match opset {
        ..=18 => 8,
        19 | 20 => 9,
        _ => 10,
    }
}

/// Refuses a folder that is already an export (it holds `model.onnx`): export reads checkpoints.
pub fn refuse_exported(dir: &Path) -> Result<()> {
    if dir.join(MODEL_FILE).is_file() {
        return Err(Error::Unsupported {
            path: dir.to_path_buf(),
            msg: format!(
                "it is already an export ({MODEL_FILE}); export reads a checkpoint folder (config.json + model.safetensors)"
            ),
        });
    }
    Ok(())
}

/// Exports `ckpt` to the folder `out` atomically; an existing `out` is replaced only under
/// `force` and only when this tool wrote it.
pub fn export_onnx(
    ckpt: &Checkpoint,
    out: &Path,
    options: ExportOptions,
    force: bool,
) -> Result<ExportSummary> {
    let source = ckpt.source();
    if !OPSETS.contains(&options.opset) {
        return Err(Error::Unsupported {
            path: source,
            msg: format!(
                "opset {} is not supported; this exporter writes opsets {}–{} (LayerNormalization needs 17)",
                options.opset,
                OPSETS.start(),
                OPSETS.end()
            ),
        });
    }
    // An export runs on raw text: without the tokenizer it could not be used.
    if !ckpt.tokenizer_files.contains_key("tokenizer.json") {
        return Err(Error::Unsupported {
            path: source,
            msg: "the checkpoint has no tokenizer.json, which an export carries beside model.onnx to turn text into input ids".into(),
        });
    }
    let inputs: Vec<&Path> = ckpt.dir.iter().map(|d| d.as_path()).collect();
    output::check_output(out, &inputs, force)?;
    let progress = crate::util::progress::Progress::new("export", 3, "stages");
    progress.set_message("lowering the graph");
    let (builder, inputs) = bert::lower(ckpt, options.linears)?;
    progress.inc(1);
    if builder.initializer_bytes() > PROTOBUF_LIMIT {
        return Err(Error::Unsupported {
            path: source,
            msg: format!(
                "its weights take {} bytes, more than a single ONNX file can hold (2 GiB); external data files are not supported",
                builder.initializer_bytes()
            ),
        });
    }
    let graph = builder.finish("surgery_bert");
    let stored_parameters = graph
        .initializer
        .iter()
        .filter(|t| !t.name.as_deref().unwrap_or("").starts_with("const/"))
        .filter(|t| !t.name.as_deref().unwrap_or("").ends_with(".scale"))
        .filter(|t| !t.name.as_deref().unwrap_or("").ends_with(".zero_point"))
        .map(|t| t.dims.iter().product::<i64>() as u64)
        .sum();
    let nodes = graph.node.len();
    let output_name = if ckpt.arch.num_labels.is_some() {
        "logits"
    } else {
        "last_hidden_state"
    };
    let model = onnx_proto::ModelProto {
        ir_version: Some(ir_version(options.opset)),
        opset_import: vec![onnx_proto::OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(options.opset),
        }],
        producer_name: Some("surgery".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        doc_string: Some(format!("exported from {}", source.display())),
        graph: Some(graph),
        metadata_props: metadata(ckpt, options),
        ..Default::default()
    };
    progress.set_message("encoding");
    let bytes = model.encode_to_vec();
    progress.inc(1);
    progress.set_message("writing");
    let sparse_stored_dense = ckpt
        .arch
        .layers
        .iter()
        .flat_map(|l| l.linears.values())
        .filter(|k| matches!(k, LinearKind::Sparse { .. }))
        .count();

    let folder = AtomicDir::create(out, force)?;
    folder.write(MODEL_FILE, &bytes)?;
    for (name, content) in &ckpt.tokenizer_files {
        folder.write(name, content)?;
    }
    folder.write("config.json", ckpt.config.to_json().as_bytes())?;
    let labels = serde_json::json!({
        "written_by": format!("surgery {}", env!("CARGO_PKG_VERSION")),
        "labels": ckpt.classifier_labels(),
        "inputs": inputs.names,
        "output": output_name,
        "opset": options.opset,
        "linears": format!("{:?}", options.linears),
    });
    folder.write(
        "labels.json",
        serde_json::to_string_pretty(&labels)
            .expect("json")
            .as_bytes(),
    )?;
    output::mark(&folder.path(""), "onnx-export")?;
    folder.commit()?;
    progress.inc(1);
    progress.finish();
    Ok(ExportSummary {
        model_file: out.join(MODEL_FILE),
        file_bytes: bytes.len() as u64,
        inputs: inputs.names,
        output: output_name,
        stored_parameters,
        nodes,
        sparse_stored_dense,
    })
}

/// Model metadata: where it came from and how its linears are stored.
fn metadata(ckpt: &Checkpoint, options: ExportOptions) -> Vec<onnx_proto::StringStringEntryProto> {
    let entry = |k: &str, v: String| onnx_proto::StringStringEntryProto {
        key: Some(k.into()),
        value: Some(v),
    };
    let mut props = vec![
        entry("source", ckpt.source().display().to_string()),
        entry("linears", format!("{:?}", options.linears)),
    ];
    if let Some(labels) = ckpt.classifier_labels() {
        props.push(entry("labels", labels.join(",")));
    }
    // Per logical layer: heads and FFN sizes may differ after structured pruning.
    let arch = &ckpt.arch;
    let per_layer = |size: &dyn Fn(usize) -> usize| -> String {
        let sizes: Vec<String> = arch
            .layer_map
            .iter()
            .map(|&s| size(s).to_string())
            .collect();
        sizes.join(",")
    };
    props.push(entry(
        "heads_per_layer",
        per_layer(&|s| arch.layers[s].num_heads),
    ));
    props.push(entry(
        "intermediate_per_layer",
        per_layer(&|s| arch.layers[s].intermediate),
    ));
    props
}
