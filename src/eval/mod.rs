//! Evaluation and prediction at the word level: the prediction of a word is the argmax at its
//! first sub-token; windows of a split sentence are stitched back together; scores are seqeval's.

mod args;
pub mod infer;
pub mod predict;
mod run;
pub mod score;

pub use args::{matching, EvalArgs};
pub use run::{run_eval, EvalReport, EvalRequest};

use std::time::Instant;

use candle_core::{Device, Tensor};

use crate::data::align::IGNORE;
use crate::data::labels::UnknownLabels;
use crate::data::tokenize::WordTokenizer;
use crate::data::{encode_dataset, Alignment, Dataset, Example, LabelSet};
use crate::error::Result;
use crate::io::artefacts::EvalRecord;
use crate::metrics::{evaluate, Matching, Report};
use crate::model::{Batch, Bert, Mode, Outputs};

/// A dataset tokenised for a model.
pub struct Prepared {
    pub data: Dataset,
    pub examples: Vec<Example>,
}

impl Prepared {
    pub fn new(
        tokenizer: &WordTokenizer,
        data: Dataset,
        labels: &LabelSet,
        unknown: UnknownLabels,
        alignment: Alignment,
        max_len: usize,
    ) -> Result<Self> {
        let ids = labels.encode(&data, unknown)?;
        let examples = encode_dataset(tokenizer, &data, &ids, labels, alignment, max_len)?;
        Ok(Prepared { data, examples })
    }

    /// For running a model over text rather than training it: unknown tags read as O, labels
    /// on first sub-tokens.
    pub fn for_inference(
        tokenizer: &WordTokenizer,
        data: Dataset,
        labels: &LabelSet,
        max_len: usize,
    ) -> Result<Self> {
        Prepared::new(
            tokenizer,
            data,
            labels,
            UnknownLabels::Outside,
            Alignment::FirstSubtoken,
            max_len,
        )
    }

    pub fn lengths(&self) -> Vec<usize> {
        self.examples.iter().map(|e| e.ids.len()).collect()
    }

    /// Real (non-pad) tokens over all examples.
    pub fn num_tokens(&self) -> usize {
        self.examples.iter().map(|e| e.ids.len()).sum()
    }
}

/// A padded batch of examples plus its label rows.
pub struct BatchData {
    pub batch: Batch,
    pub labels: Vec<Vec<i64>>,
    pub real_tokens: usize,
}

/// Pads the given examples into one batch.
pub fn collate(examples: &[&Example], pad_id: u32, device: &Device) -> Result<BatchData> {
    let len = examples.iter().map(|e| e.ids.len()).max().unwrap_or(0);
    let b = examples.len();
    let mut ids = Vec::with_capacity(b * len);
    let mut mask = Vec::with_capacity(b * len);
    let mut labels = Vec::with_capacity(b);
    for e in examples {
        ids.extend(
            e.ids
                .iter()
                .copied()
                .chain(std::iter::repeat_n(pad_id, len - e.ids.len())),
        );
        mask.extend((0..len).map(|j| if j < e.ids.len() { 1f32 } else { 0.0 }));
        labels.push(
            e.labels
                .iter()
                .copied()
                .chain(std::iter::repeat_n(IGNORE, len - e.ids.len()))
                .collect(),
        );
    }
    Ok(BatchData {
        batch: Batch {
            input_ids: Tensor::from_vec(ids, (b, len), device)?,
            attention_mask: Tensor::from_vec(mask, (b, len), device)?,
        },
        labels,
        real_tokens: examples.iter().map(|e| e.ids.len()).sum(),
    })
}

/// Predicted label id of every word of every sentence, with softmax probabilities.
pub struct WordPredictions {
    pub ids: Vec<Vec<usize>>,
    pub scores: Vec<Vec<f32>>,
    pub seconds: f64,
    pub tokens: usize,
}

/// Runs the model over the examples (bucketed by length) and calls `visit(sentence, word,
/// logits)` at the first sub-token of every word. Returns the seconds spent.
pub fn for_each_word(
    model: &Bert,
    prepared: &Prepared,
    pad_id: u32,
    batch_size: usize,
    device: &Device,
    mut visit: impl FnMut(usize, usize, &[f32]),
) -> Result<f64> {
    crate::util::options::require_positive("--batch-size", batch_size)?;
    let start = Instant::now();
    let plan = crate::data::bucket_batches(&prepared.lengths(), batch_size, None);
    for batch in &plan.batches {
        let examples: Vec<&Example> = batch.iter().map(|&i| &prepared.examples[i]).collect();
        let data = collate(&examples, pad_id, device)?;
        let out = model.forward(&data.batch, &mut Mode::Eval, Outputs::default())?;
        let logits = out.logits.ok_or_else(|| {
            crate::Error::Internal("the checkpoint has no classifier to predict with".into())
        })?;
        let logits = logits.to_vec3::<f32>()?;
        for (row, ex) in logits.iter().zip(&examples) {
            for &(pos, word) in &ex.word_starts {
                visit(ex.sentence, word, &row[pos]);
            }
        }
    }
    Ok(start.elapsed().as_secs_f64())
}

/// Runs the model over the examples (bucketed by length) and reads word predictions.
pub fn predict_words(
    model: &Bert,
    prepared: &Prepared,
    pad_id: u32,
    batch_size: usize,
    device: &Device,
) -> Result<WordPredictions> {
    let sentences = &prepared.data.sentences;
    let mut ids: Vec<Vec<usize>> = sentences.iter().map(|s| vec![0; s.words.len()]).collect();
    let mut scores: Vec<Vec<f32>> = sentences.iter().map(|s| vec![0.0; s.words.len()]).collect();
    let seconds = for_each_word(
        model,
        prepared,
        pad_id,
        batch_size,
        device,
        |s, w, logits| {
            let (best, p) = argmax_softmax(logits);
            ids[s][w] = best;
            scores[s][w] = p;
        },
    )?;
    Ok(WordPredictions {
        ids,
        scores,
        seconds,
        tokens: prepared.num_tokens(),
    })
}

fn argmax_softmax(logits: &[f32]) -> (usize, f32) {
    let (best, max) =
        logits
            .iter()
            .copied()
            .enumerate()
            .fold(
                (0, f32::NEG_INFINITY),
                |a, (i, v)| if v > a.1 { (i, v) } else { a },
            );
    let sum: f32 = logits.iter().map(|v| (v - max).exp()).sum();
    (best, 1.0 / sum)
}

/// An evaluation: the report, the predicted tags, and the speed.
pub struct Evaluation {
    pub report: Report,
    pub predicted: Vec<Vec<String>>,
    pub tokens_per_second: f64,
    pub seconds: f64,
    /// The precision the model's linears ran in.
    pub matmul_precision: crate::util::precision::Precision,
}

impl Evaluation {
    /// The evaluation as written to `eval --save-json` and a run's `test.json`.
    pub fn record(&self, checkpoint: &std::path::Path, data: &std::path::Path) -> EvalRecord {
        EvalRecord {
            written_by: format!("surgery {} eval", crate::util::build_info::VERSION),
            checkpoint: checkpoint.to_path_buf(),
            data: data.to_path_buf(),
            f1: self.report.f1(),
            precision: self.report.micro.precision,
            recall: self.report.micro.recall,
            report: serde_json::to_value(&self.report).expect("reports serialise"),
            tokens_per_s: self.tokens_per_second,
            seconds: self.seconds,
            matmul_precision: self.matmul_precision,
        }
    }
}

/// Scores a model on a prepared dataset against its gold tags.
pub fn evaluate_model(
    model: &Bert,
    prepared: &Prepared,
    labels: &LabelSet,
    pad_id: u32,
    batch_size: usize,
    mode: Matching,
    device: &Device,
) -> Result<Evaluation> {
    let words = predict_words(model, prepared, pad_id, batch_size, device)?;
    let predicted: Vec<Vec<String>> = words
        .ids
        .iter()
        .map(|s| s.iter().map(|&i| labels.name(i).to_string()).collect())
        .collect();
    let gold: Vec<&Vec<String>> = prepared.data.sentences.iter().map(|s| &s.tags).collect();
    let gold: Vec<Vec<String>> = gold.into_iter().cloned().collect();
    let report = evaluate(&gold, &predicted, mode)?;
    Ok(Evaluation {
        report,
        predicted,
        tokens_per_second: words.tokens as f64 / words.seconds.max(1e-9),
        seconds: words.seconds,
        matmul_precision: model.precision(),
    })
}
