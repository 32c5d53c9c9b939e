//! Calibration statistics for data-aware surgeries: the Gram matrix XᵀX of the inputs of every
//! linear, accumulated over the real (non-pad) tokens of a few hundred sentences.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::Tensor;
use faer::Mat;

use crate::data::tokenize::WordTokenizer;
use crate::data::{read_dataset, LabelSet, ReadOptions};
use crate::error::{Error, Result};
use crate::eval::{collate, Prepared};
use crate::io::Checkpoint;
use crate::kernels::Compute;
use crate::model::{Bert, Mode, Outputs};

/// Which input a linear reads (query, key and value share one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Input {
    Attention,
    Context,
    Ffn,
    FfnActivation,
}

impl Input {
    pub fn of(slot: crate::arch::LinearSlot) -> Input {
        use crate::arch::LinearSlot::*;
        match slot {
            Query | Key | Value => Input::Attention,
            AttentionOutput => Input::Context,
            Intermediate => Input::Ffn,
            Output => Input::FfnActivation,
        }
    }
}

/// XᵀX per (stored layer, input), in f64.
pub struct Calibration {
    pub grams: BTreeMap<(usize, Input), Mat<f64>>,
    /// Real tokens the statistics were taken over.
    pub tokens: usize,
    pub sentences: usize,
    /// Set when the file had fewer sentences than asked.
    pub note: Option<String>,
}

/// Reads up to `n` sentences of `path` and accumulates the Gram matrices of the checkpoint's
/// linear inputs (the forward passes on `compute`'s device, the sums on the host).
pub fn collect(ckpt: &Checkpoint, path: &Path, n: usize, compute: Compute) -> Result<Calibration> {
    let (prepared, tokenizer, note) = calibration_examples(ckpt, path, n)?;
    let available = prepared.data.sentences.len();
    let (device, kernels) = compute.open()?;
    let model = Bert::load(ckpt, &device)?.with_kernels(kernels);
    let mut grams: BTreeMap<(usize, Input), Mat<f64>> = BTreeMap::new();
    let mut tokens = 0;
    let outputs = Outputs {
        linear_inputs: true,
        ..Default::default()
    };
    let examples: Vec<_> = prepared.examples.iter().collect();
    let progress =
        crate::util::progress::Progress::new("calibration", examples.len() as u64, "sentences");
    for chunk in examples.chunks(32) {
        progress.inc(chunk.len() as u64);
        let batch = collate(chunk, tokenizer.pad_id(), &device)?;
        let real: Vec<u32> = batch
            .batch
            .attention_mask
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .enumerate()
            .filter(|(_, m)| **m > 0.0)
            .map(|(i, _)| i as u32)
            .collect();
        tokens += real.len();
        let rows = Tensor::from_vec(real.clone(), real.len(), &device)?;
        let out = model.forward(&batch.batch, &mut Mode::Eval, outputs)?;
        for (logical, inputs) in out.linear_inputs.iter().enumerate() {
            let stored = ckpt.arch.layer_map[logical];
            let mut add = |kind: Input, x: &Tensor| -> Result<()> {
                let x = x.index_select(&rows, 0)?;
                let g = x.t()?.matmul(&x)?;
                let (d, _) = g.dims2()?;
                let v = g.flatten_all()?.to_vec1::<f32>()?;
                let entry = grams
                    .entry((stored, kind))
                    .or_insert_with(|| Mat::zeros(d, d));
                for i in 0..d {
                    for j in 0..d {
                        entry[(i, j)] += v[i * d + j] as f64;
                    }
                }
                Ok(())
            };
            add(Input::Attention, &inputs.attention)?;
            if let Some(c) = &inputs.context {
                add(Input::Context, c)?;
            }
            add(Input::Ffn, &inputs.ffn)?;
            add(Input::FfnActivation, &inputs.ffn_activation)?;
        }
    }
    Ok(Calibration {
        grams,
        tokens,
        sentences: available,
        note,
    })
}

/// The first `n` sentences of `path` tokenised for `ckpt` (tags are ignored), the tokenizer, and
/// a note when the file has fewer sentences than asked. No sentence at all is an error.
pub fn calibration_examples(
    ckpt: &Checkpoint,
    path: &Path,
    n: usize,
) -> Result<(Prepared, WordTokenizer, Option<String>)> {
    // Tags do not matter here: every tag is read as O.
    let labels = LabelSet::new(vec!["O".into()])?;
    let data = read_dataset(path, &ReadOptions::default())?;
    examples(ckpt, path, n, data, &labels)
}

/// [`calibration_examples`] with the tags read as `labels`, for surgeries scored on the task
/// loss: a tag the model does not know is refused (as `eval` refuses it), since reading it as O
/// would rank heads and neurons against wrong targets.
pub fn labelled_examples(
    ckpt: &Checkpoint,
    path: &Path,
    n: usize,
    labels: &LabelSet,
) -> Result<(Prepared, WordTokenizer, Option<String>)> {
    let mut data = read_dataset(path, &ReadOptions::default())?;
    data.sentences.truncate(n);
    check_known_tags(&data, labels)?;
    examples(ckpt, path, n, data, labels)
}

/// Refuses a labelled calibration file with a tag outside the model's labels, naming file:line.
pub fn check_known_tags(data: &crate::data::Dataset, labels: &LabelSet) -> Result<()> {
    match labels.first_unknown(data) {
        Some((line, tag)) => Err(Error::Input {
            path: data.path.clone(),
            line,
            msg: format!(
                "tag `{tag}` is not one of the model's labels ({}); the scores are computed \
                 on the task loss, so calibration tags must be the model's",
                labels.labels().join(", ")
            ),
        }),
        None => Ok(()),
    }
}

/// The first `n` sentences of `data` tokenised for `ckpt` with `labels`, and a note when there
/// are fewer; no sentence at all is an error.
fn examples(
    ckpt: &Checkpoint,
    path: &Path,
    n: usize,
    mut data: crate::data::Dataset,
    labels: &LabelSet,
) -> Result<(Prepared, WordTokenizer, Option<String>)> {
    let available = data.sentences.len();
    let note = (available < n).then(|| {
        format!(
            "{} has {available} sentences, fewer than the {n} asked; using all of them",
            path.display()
        )
    });
    data.sentences.truncate(n);
    let tokenizer = WordTokenizer::from_checkpoint(ckpt)?;
    let max_len = ckpt.arch.max_positions.min(128);
    let prepared = Prepared::for_inference(&tokenizer, data, labels, max_len)?;
    if prepared.examples.is_empty() {
        return Err(Error::Input {
            path: path.to_path_buf(),
            line: 0,
            msg: "no calibration sentences".into(),
        });
    }
    Ok((prepared, tokenizer, note))
}
