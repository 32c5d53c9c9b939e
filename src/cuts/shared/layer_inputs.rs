//! Calibration sentences run through a model layer by layer, for the cuts that fit each layer
//! to its own inputs (SparseGPT, the structured refit) and the held-out layer errors.

use std::collections::BTreeMap;

use candle_core::Tensor;

use super::calibrate::{Calibrator, Input, Sentences};
use crate::error::Result;
use crate::eval::{collate, BatchData};
use crate::io::Checkpoint;
use crate::model::{Bert, Mode};

/// Sentences run layer by layer: their batches, the rows of real tokens, and each batch's
/// current hidden states (the output of the layers pruned so far), detached from the graph so
/// that memory stays one layer's worth however many sentences calibrate.
pub(crate) struct LayerInputs {
    pub(crate) batches: Vec<BatchData>,
    pub(crate) real_rows: Vec<Tensor>,
    pub(crate) tokens: usize,
    pub(crate) sentences: usize,
    pub(crate) xs: Vec<Tensor>,
}

impl LayerInputs {
    pub(crate) fn new(sentences: &Sentences, model: &Bert) -> Result<Self> {
        let device = model.device().clone();
        let prepared = &sentences.prepared;
        let plan = crate::data::bucket_batches(&prepared.lengths(), 32, None);
        let batches: Vec<BatchData> = plan
            .batches
            .iter()
            .map(|b| {
                collate(
                    &b.iter().map(|&i| &prepared.examples[i]).collect::<Vec<_>>(),
                    sentences.pad_id,
                    &device,
                )
            })
            .collect::<Result<_>>()?;
        let real_rows: Vec<Tensor> = batches
            .iter()
            .map(|b| {
                let mask = b.batch.attention_mask.flatten_all()?.to_vec1::<f32>()?;
                let rows: Vec<u32> = (0..mask.len() as u32)
                    .filter(|&i| mask[i as usize] > 0.0)
                    .collect();
                Ok(Tensor::from_vec(rows.clone(), rows.len(), &device)?)
            })
            .collect::<Result<_>>()?;
        let xs = batches
            .iter()
            .map(|b| Ok(model.embed(&b.batch, &mut Mode::Eval)?.detach()))
            .collect::<candle_core::Result<_>>()?;
        Ok(LayerInputs {
            tokens: real_rows.iter().map(|r| r.elem_count()).sum(),
            sentences: prepared.data.sentences.len(),
            batches,
            real_rows,
            xs,
        })
    }

    /// XᵀX of the real tokens at every linear input of logical layer `logical`.
    pub(crate) fn grams(
        &self,
        model: &Bert,
        logical: usize,
    ) -> Result<BTreeMap<Input, Option<Tensor>>> {
        let mut grams: BTreeMap<Input, Option<Tensor>> = BTreeMap::new();
        for ((x, batch), rows) in self.xs.iter().zip(&self.batches).zip(&self.real_rows) {
            let (_, inputs) = model.run_layer(logical, x, &batch.batch, true)?;
            let inputs = inputs.expect("captured");
            accumulate(
                grams.entry(Input::Attention).or_default(),
                &inputs.attention,
                rows,
            )?;
            if let Some(c) = &inputs.context {
                accumulate(grams.entry(Input::Context).or_default(), c, rows)?;
            }
            accumulate(grams.entry(Input::Ffn).or_default(), &inputs.ffn, rows)?;
            accumulate(
                grams.entry(Input::FfnActivation).or_default(),
                &inputs.ffn_activation,
                rows,
            )?;
        }
        Ok(grams)
    }

    /// Moves the hidden states through logical layer `logical` (as pruned so far).
    pub(crate) fn advance(&mut self, model: &Bert, logical: usize) -> Result<()> {
        self.xs = self
            .xs
            .iter()
            .zip(&self.batches)
            .map(|(x, b)| Ok(model.run_layer(logical, x, &b.batch, false)?.0.detach()))
            .collect::<Result<_>>()?;
        Ok(())
    }
}

/// Per logical layer, Σ‖y′ − y‖² / Σ‖y‖² of its output over the real tokens of the calibrator's
/// held-out sentences, for each of `cuts` against the calibrator's original (each from the
/// embeddings through its own layers; the original runs once). None without `--heldout`.
pub(crate) fn heldout_errors(
    calibrator: &Calibrator,
    cuts: &[&Checkpoint],
) -> Result<Option<Vec<Vec<f64>>>> {
    let Some(sentences) = calibrator.heldout() else {
        return Ok(None);
    };
    let original = calibrator.frozen(calibrator.original())?;
    let models = cuts
        .iter()
        .map(|c| calibrator.frozen(c))
        .collect::<Result<Vec<_>>>()?;
    let mut xo = LayerInputs::new(sentences, &original)?;
    let mut xps = models
        .iter()
        .map(|m| LayerInputs::new(sentences, m))
        .collect::<Result<Vec<_>>>()?;
    let mut errors = vec![vec![]; cuts.len()];
    for logical in 0..calibrator.original().arch.num_layers() {
        xo.advance(&original, logical)?;
        for ((xp, model), per_layer) in xps.iter_mut().zip(&models).zip(&mut errors) {
            xp.advance(model, logical)?;
            let (mut diff, mut norm) = (0.0, 0.0);
            for ((a, b), rows) in xp.xs.iter().zip(&xo.xs).zip(&xo.real_rows) {
                let (bsz, l, h) = b.dims3()?;
                let a = a.reshape((bsz * l, h))?.index_select(rows, 0)?;
                let b = b.reshape((bsz * l, h))?.index_select(rows, 0)?;
                diff += (a - &b)?.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
                norm += b.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
            }
            per_layer.push(diff / norm.max(1e-30));
        }
    }
    Ok(Some(errors))
}

/// Accumulates XᵀX of the real tokens of a batch into `gram`. Detached: the weights are
/// candle variables, and a tracked result would keep every batch's whole graph alive.
fn accumulate(gram: &mut Option<Tensor>, x: &Tensor, rows: &Tensor) -> Result<()> {
    let x = x.detach().index_select(rows, 0)?;
    let g = x.t()?.matmul(&x)?;
    *gram = Some(match gram.take() {
        Some(acc) => (acc + g)?,
        None => g,
    });
    Ok(())
}
