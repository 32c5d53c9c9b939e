//! Running a checkpoint on pre-tokenised sentences: the `forward` debugging/parity interface.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::data::tokenize::WordTokenizer;
use crate::error::{Error, Result};
use crate::io::tensor_file::{write_safetensors, RawTensor};
use crate::io::{atomic, Checkpoint};
use crate::kernels::Compute;
use crate::model::{Batch, Bert, Mode, Outputs};

/// Sentences tokenised and padded to the longest one.
pub struct PaddedInputs {
    /// [N, L] token ids.
    pub ids: Vec<Vec<u32>>,
    /// [N, L] 1 for real tokens.
    pub mask: Vec<Vec<u32>>,
    pub max_len: usize,
}

/// Reads one sentence per line, words separated by single spaces. Empty lines are an error.
pub fn read_sentences(path: &Path) -> Result<Vec<Vec<String>>> {
    let text = crate::io::text_input::read_text(path)?;
    let text = crate::io::text_input::normalize_line_ends(&text);
    let mut sentences = vec![];
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            return Err(Error::Input {
                path: path.to_path_buf(),
                line: i + 1,
                msg: "empty line (one sentence per line expected)".into(),
            });
        }
        sentences.push(
            line.split(' ')
                .filter(|w| !w.is_empty())
                .map(String::from)
                .collect(),
        );
    }
    if sentences.is_empty() {
        return Err(Error::Input {
            path: path.to_path_buf(),
            line: 0,
            msg: "no sentences".into(),
        });
    }
    Ok(sentences)
}

/// Tokenises sentences and pads them to the longest; errors if one exceeds the model's limit.
pub fn pad_sentences(
    tokenizer: &WordTokenizer,
    sentences: &[Vec<String>],
    max_positions: usize,
) -> Result<PaddedInputs> {
    let mut encoded = vec![];
    for (i, words) in sentences.iter().enumerate() {
        let refs: Vec<&str> = words.iter().map(|s| s.as_str()).collect();
        let e = tokenizer.encode_words(&refs)?;
        if e.ids.len() > max_positions {
            return Err(Error::Spec(format!(
                "sentence {} has {} tokens, the model takes at most {max_positions}",
                i + 1,
                e.ids.len()
            )));
        }
        encoded.push(e.ids);
    }
    let max_len = encoded.iter().map(|e| e.len()).max().unwrap_or(0);
    let pad = tokenizer.pad_id();
    let mask = encoded
        .iter()
        .map(|e| (0..max_len).map(|j| u32::from(j < e.len())).collect())
        .collect();
    let ids = encoded
        .into_iter()
        .map(|mut e| {
            e.resize(max_len, pad);
            e
        })
        .collect();
    Ok(PaddedInputs { ids, mask, max_len })
}

/// The inference model of a checkpoint on `device` ([`Bert::load`]).
pub fn load_model(ckpt: &Checkpoint, device: &Device) -> Result<Bert> {
    Bert::load(ckpt, device)
}

/// A batch tensor from rows of ids and masks.
pub fn make_batch(ids: &[Vec<u32>], mask: &[Vec<u32>], device: &Device) -> Result<Batch> {
    let (b, l) = (ids.len(), ids.first().map_or(0, |r| r.len()));
    let flat_ids: Vec<u32> = ids.iter().flatten().copied().collect();
    let flat_mask: Vec<f32> = mask.iter().flatten().map(|&m| m as f32).collect();
    Ok(Batch {
        input_ids: Tensor::from_vec(flat_ids, (b, l), device)?,
        attention_mask: Tensor::from_vec(flat_mask, (b, l), device)?,
    })
}

/// Runs the checkpoint over the padded sentences in batches; returns (last_hidden, logits) as
/// [N, L, H] and [N, L, C] tensors.
pub fn forward_padded(
    model: &Bert,
    inputs: &PaddedInputs,
    batch_size: usize,
    device: &Device,
) -> Result<(Tensor, Option<Tensor>)> {
    let mut hidden = vec![];
    let mut logits = vec![];
    for start in (0..inputs.ids.len()).step_by(batch_size.max(1)) {
        let end = (start + batch_size).min(inputs.ids.len());
        let batch = make_batch(&inputs.ids[start..end], &inputs.mask[start..end], device)?;
        let out = model.forward(&batch, &mut Mode::Eval, Outputs::default())?;
        hidden.push(out.last_hidden_state);
        if let Some(l) = out.logits {
            logits.push(l);
        }
    }
    let hidden = Tensor::cat(&hidden, 0)?;
    let logits = if logits.is_empty() {
        None
    } else {
        Some(Tensor::cat(&logits, 0)?)
    };
    Ok((hidden, logits))
}

/// The `forward` command: tokenise, run on `compute`'s device, and write ids, mask, hidden
/// states and logits.
pub fn forward_to_file(
    ckpt: &Checkpoint,
    input: &Path,
    out: &Path,
    force: bool,
    batch_size: usize,
    compute: Compute,
) -> Result<()> {
    crate::util::options::require_positive("--batch-size", batch_size)?;
    use crate::io::output::{check_file_output, FileKind};
    check_file_output(
        out,
        &[input, &ckpt.source()],
        force,
        FileKind::ForwardOutput,
    )?;
    let (device, kernels) = compute.open()?;
    let sentences = read_sentences(input)?;
    let tokenizer = WordTokenizer::from_checkpoint(ckpt)?;
    let inputs = pad_sentences(&tokenizer, &sentences, ckpt.arch.max_positions)?;
    let model = Bert::load(ckpt, &device)?.with_kernels(kernels);
    let (hidden, logits) = forward_padded(&model, &inputs, batch_size, &device)?;
    let (n, l) = (inputs.ids.len(), inputs.max_len);
    let as_i64 =
        |rows: &[Vec<u32>]| -> Vec<i64> { rows.iter().flatten().map(|&v| v as i64).collect() };
    let mut tensors = vec![
        (
            "input_ids".to_string(),
            RawTensor::i64(vec![n, l], &as_i64(&inputs.ids)),
        ),
        (
            "attention_mask".to_string(),
            RawTensor::i64(vec![n, l], &as_i64(&inputs.mask)),
        ),
        (
            "last_hidden_state".to_string(),
            RawTensor::from_tensor(&hidden)?,
        ),
    ];
    if let Some(logits) = logits {
        tensors.push((
            "logits".to_string(),
            RawTensor::from_tensor(&logits.to_dtype(DType::F32)?)?,
        ));
    }
    let mut metadata = HashMap::new();
    metadata.insert("checkpoint".into(), ckpt.source().display().to_string());
    metadata.insert(
        "surgery_tool".into(),
        format!("surgery {}", env!("CARGO_PKG_VERSION")),
    );
    atomic::write_file(out, force, |tmp| write_safetensors(tmp, tensors, metadata))
}
