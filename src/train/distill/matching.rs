//! Intermediate matching for distillation: the hidden states and attention probabilities of
//! paired layers against the teacher's, run per batch. Hidden states are compared token by
//! token when both tokenise alike, else word by word (each word's first sub-token, on the
//! teacher's own tokens); attention needs the same tokens.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};

use crate::data::Example;
use crate::error::{Error, Result};
use crate::eval::{collate, BatchData, Prepared};
use crate::io::Checkpoint;
use crate::model::{Bert, ForwardOutput, Mode, Outputs};
use crate::train::optim::OptParam;

/// Parses `0:1,1:3` or builds the uniform map (student layer i ↔ teacher layer ⌈(i+1)·T/S⌉−1).
pub fn layer_pairs(
    text: Option<&str>,
    student: usize,
    teacher: usize,
) -> Result<Vec<(usize, usize)>> {
    let Some(text) = text else {
        return Ok((0..student)
            .map(|i| (i, ((i + 1) * teacher).div_ceil(student) - 1))
            .collect());
    };
    text.split(',')
        .map(|pair| {
            let (s, t) = pair
                .split_once(':')
                .and_then(|(s, t)| {
                    Some((
                        s.trim().parse::<usize>().ok()?,
                        t.trim().parse::<usize>().ok()?,
                    ))
                })
                .ok_or_else(|| {
                    Error::Spec(format!("--layer-map: `{pair}` is not student:teacher"))
                })?;
            if s >= student || t >= teacher {
                return Err(Error::Spec(format!(
                    "--layer-map {pair}: the student has layers 0..{}, the teacher 0..{}",
                    student.saturating_sub(1),
                    teacher.saturating_sub(1)
                )));
            }
            Ok((s, t))
        })
        .collect()
}

/// The weights of the matching terms (0 = off).
#[derive(Debug, Clone, Copy)]
pub struct Weights {
    pub hidden: f64,
    pub attention: f64,
}

impl Weights {
    /// What the forward passes must return for these terms.
    pub fn outputs(self) -> Outputs {
        Outputs {
            hidden_states: self.hidden > 0.0,
            attentions: self.attention > 0.0,
            ..Default::default()
        }
    }
}

/// The hidden-state and attention terms, with the teacher that is run for them.
pub struct Matching {
    weights: Weights,
    pairs: Vec<(usize, usize)>,
    teacher: Bert,
    teacher_pad: u32,
    /// Student → teacher width projection for hidden-state matching.
    projection: Option<Var>,
    /// Word-level alignment with the teacher's tokens when the tokenizers differ.
    word_level: Option<WordIndex>,
    device: Device,
}

/// The two models being matched.
pub struct Models<'a> {
    pub student: &'a Checkpoint,
    pub teacher: &'a Checkpoint,
    /// Student:teacher layer pairs the terms compare.
    pub pairs: Vec<(usize, usize)>,
}

impl Models<'_> {
    /// Whether both tokenise alike (the same tokenizer file).
    pub fn same_tokens(&self) -> bool {
        self.student.tokenizer_files.get("tokenizer.json")
            == self.teacher.tokenizer_files.get("tokenizer.json")
    }

    /// Attention is compared token by token, head by head: it needs the teacher's tokenizer
    /// and equal head counts in every pair.
    fn check_attention(&self, pairs: &[(usize, usize)]) -> Result<()> {
        if !self.same_tokens() {
            return Err(Error::Spec(
                "attention matching compares token by token and needs the teacher's tokenizer \
                 (hidden-state matching works across tokenizers, word by word)"
                    .into(),
            ));
        }
        let heads = |c: &Checkpoint, l: usize| c.arch.layers[c.arch.layer_map[l]].num_heads;
        for &(s, t) in pairs {
            let (hs, ht) = (heads(self.student, s), heads(self.teacher, t));
            if hs != ht {
                return Err(Error::Spec(format!(
                    "attention matching needs equal head counts: student layer {s} has {hs}, teacher layer {t} has {ht}"
                )));
            }
        }
        Ok(())
    }

    /// A trainable projection of the student's width onto the teacher's, when they differ.
    fn projection(&self, seed: u64, device: &Device) -> Result<Option<Var>> {
        let (ht, hs) = (self.teacher.arch.hidden, self.student.arch.hidden);
        if ht == hs {
            return Ok(None);
        }
        let mut rng = crate::util::rng::Rng::new(seed ^ 0xD15);
        let w: Vec<f32> = (0..ht * hs).map(|_| rng.normal() * 0.02).collect();
        Ok(Some(Var::from_tensor(&Tensor::from_vec(
            w,
            (ht, hs),
            device,
        )?)?))
    }
}

/// The teacher as the matching runs it: the model, its pad id and the training set in its
/// tokenisation (every word with a token).
pub struct Teacher {
    pub model: Bert,
    pub pad_id: u32,
    pub train: Prepared,
}

impl Matching {
    /// The matching terms for the models' layer pairs, or `None` when both weights are 0.
    /// Checks what the terms need of the two models.
    pub fn new(
        models: &Models,
        teacher: Teacher,
        weights: Weights,
        seed: u64,
    ) -> Result<Option<Matching>> {
        let pairs = models.pairs.clone();
        if weights.hidden <= 0.0 && weights.attention <= 0.0 {
            return Ok(None);
        }
        if weights.attention > 0.0 {
            models.check_attention(&pairs)?;
        }
        let device = teacher.model.device().clone();
        let projection = models.projection(seed, &device)?;
        let word_level = (!models.same_tokens()).then(|| WordIndex::new(teacher.train));
        Ok(Some(Matching {
            weights,
            pairs,
            teacher: teacher.model,
            teacher_pad: teacher.pad_id,
            projection,
            word_level,
            device,
        }))
    }

    /// The trainable projection, optimized with the run but never saved in the checkpoint.
    pub fn extra_params(&self) -> Vec<OptParam> {
        self.projection
            .iter()
            .map(|var| OptParam::external("distill.hidden_projection", var.clone(), true, 1.0))
            .collect()
    }

    /// Adds the matching terms of the student's forward pass `student` over `batch` to `total`.
    pub fn add_to(
        &self,
        mut total: Tensor,
        student: &ForwardOutput,
        batch: &BatchData,
        examples: &[&Example],
    ) -> Result<Tensor> {
        let (teacher, rows) = self.teacher_pass(batch, examples)?;
        let share = self.pairs.len() as f64;
        for &(s, t) in &self.pairs {
            if self.weights.hidden > 0.0 {
                let (hs, ht) = (&student.hidden_states[s + 1], &teacher.hidden_states[t + 1]);
                let mse = hidden_mse(hs, &ht.detach(), &rows, self.projection.as_ref())?;
                total = (total + (mse * (self.weights.hidden / share))?)?;
            }
            if self.weights.attention > 0.0 {
                let (a_s, a_t) = (&student.attentions[s], teacher.attentions[t].detach());
                let mse = attention_mse(a_s, &a_t, batch)?;
                total = (total + (mse * (self.weights.attention / share))?)?;
            }
        }
        Ok(total)
    }

    /// The teacher's forward pass for the batch, and the rows of the two passes to compare.
    fn teacher_pass(
        &self,
        batch: &BatchData,
        examples: &[&Example],
    ) -> Result<(ForwardOutput, Rows)> {
        let outputs = self.weights.outputs();
        let len = batch.labels.first().map_or(0, |r| r.len());
        let (teacher_batch, rows) = match &self.word_level {
            Some(index) => {
                let (t_batch, rows) =
                    index.teacher_batch(examples, len, self.teacher_pad, &self.device)?;
                (Some(t_batch), rows)
            }
            None => (None, Rows::tokens(examples, len, &self.device)?),
        };
        let input = teacher_batch.as_ref().unwrap_or(batch);
        let out = self
            .teacher
            .forward(&input.batch, &mut Mode::Eval, outputs)?;
        Ok((out, rows))
    }
}

/// Rows compared by the hidden-state term, pairwise: flat positions (batch × length) in the
/// student's pass and in the teacher's.
struct Rows {
    student: Tensor,
    teacher: Tensor,
    count: usize,
}

impl Rows {
    /// Every real token, in both passes (the same tokens).
    fn tokens(examples: &[&Example], len: usize, device: &Device) -> Result<Rows> {
        let positions: Vec<u32> = examples
            .iter()
            .enumerate()
            .flat_map(|(b, ex)| (0..ex.ids.len()).map(move |t| (b * len + t) as u32))
            .collect();
        let count = positions.len();
        let positions = Tensor::from_vec(positions, count, device)?;
        Ok(Rows {
            student: positions.clone(),
            teacher: positions,
            count,
        })
    }
}

/// The mean over rows and the teacher's width of the squared difference of hidden states
/// [B, L, H] at paired rows, the student's projected to the teacher's width.
fn hidden_mse(
    student: &Tensor,
    teacher: &Tensor,
    rows: &Rows,
    projection: Option<&Var>,
) -> Result<Tensor> {
    let width = student.dim(2)?;
    let hs = student
        .reshape(((), width))?
        .index_select(&rows.student, 0)?;
    let hs = match projection {
        Some(p) => hs.matmul(&p.as_tensor().t()?)?,
        None => hs,
    };
    let t_width = teacher.dim(2)?;
    let ht = teacher
        .reshape(((), t_width))?
        .index_select(&rows.teacher, 0)?;
    Ok(((hs - ht)?.sqr()?.sum_all()? / (rows.count * t_width) as f64)?)
}

/// The squared difference of attention probabilities [B, heads, L, L] summed over the real
/// queries, per real token and head.
fn attention_mse(student: &Tensor, teacher: &Tensor, batch: &BatchData) -> Result<Tensor> {
    let mask = batch.batch.attention_mask.to_dtype(DType::F32)?;
    let heads = student.dim(1)? as f64;
    let query_mask = mask.unsqueeze(1)?.unsqueeze(3)?;
    let diff = (student - teacher)?.broadcast_mul(&query_mask)?;
    Ok((diff.sqr()?.sum_all()? / (batch.real_tokens as f64 * heads))?)
}

/// Where each word of the training set starts in the teacher's own tokenisation, so that hidden
/// states can be compared word by word when the student tokenises differently.
struct WordIndex {
    teacher: Prepared,
    /// (sentence, word) → (teacher example, token position).
    starts: HashMap<(usize, usize), (usize, usize)>,
}

impl WordIndex {
    fn new(teacher: Prepared) -> Self {
        let mut starts = HashMap::new();
        for (e, ex) in teacher.examples.iter().enumerate() {
            for &(pos, word) in &ex.word_starts {
                starts.entry((ex.sentence, word)).or_insert((e, pos));
            }
        }
        WordIndex { teacher, starts }
    }

    /// The teacher's batch for the student's examples, and for every word start of the student
    /// batch (in order) its flat position in the student batch and in the teacher batch.
    fn teacher_batch(
        &self,
        examples: &[&Example],
        student_len: usize,
        pad_id: u32,
        device: &Device,
    ) -> Result<(BatchData, Rows)> {
        let mut rows: Vec<usize> = vec![];
        let mut pairs = vec![];
        for (b, ex) in examples.iter().enumerate() {
            for &(pos, word) in &ex.word_starts {
                // The teacher's logits were read at every word, so every word has a start.
                let &(e, t_pos) = self.starts.get(&(ex.sentence, word)).ok_or_else(|| {
                    Error::Internal(format!(
                        "word {word} of training sentence {} has no teacher token",
                        ex.sentence + 1
                    ))
                })?;
                let row = match rows.iter().position(|&r| r == e) {
                    Some(r) => r,
                    None => {
                        rows.push(e);
                        rows.len() - 1
                    }
                };
                pairs.push((b * student_len + pos, row, t_pos));
            }
        }
        let refs: Vec<&Example> = rows.iter().map(|&e| &self.teacher.examples[e]).collect();
        let batch = collate(&refs, pad_id, device)?;
        let t_len = refs.iter().map(|e| e.ids.len()).max().unwrap_or(0);
        let count = pairs.len();
        let s_pos = pairs.iter().map(|p| p.0 as u32).collect();
        let t_pos = pairs.iter().map(|p| (p.1 * t_len + p.2) as u32).collect();
        let rows = Rows {
            student: Tensor::from_vec(s_pos, count, device)?,
            teacher: Tensor::from_vec(t_pos, count, device)?,
            count,
        };
        Ok((batch, rows))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_layer_maps_end_at_the_last_layer() {
        assert_eq!(
            layer_pairs(None, 3, 6).unwrap(),
            vec![(0, 1), (1, 3), (2, 5)]
        );
        assert_eq!(
            layer_pairs(None, 4, 6).unwrap(),
            vec![(0, 1), (1, 2), (2, 4), (3, 5)]
        );
        assert_eq!(
            layer_pairs(Some("0:0,1:5"), 2, 6).unwrap(),
            vec![(0, 0), (1, 5)]
        );
        assert!(layer_pairs(Some("0:6"), 2, 6).is_err());
    }

    /// The one hidden-state term: token by token it is the mean squared difference over the
    /// real tokens (pads left out) and the width.
    #[test]
    fn the_hidden_state_term_averages_over_the_paired_rows() {
        let cpu = Device::Cpu;
        let s = Tensor::new(&[[[1f32, 2.0], [3.0, 4.0], [9.0, 9.0]]], &cpu).unwrap();
        let t = Tensor::new(&[[[1f32, 0.0], [0.0, 4.0], [0.0, 0.0]]], &cpu).unwrap();
        let rows = Rows {
            student: Tensor::new(&[0u32, 1], &cpu).unwrap(),
            teacher: Tensor::new(&[0u32, 1], &cpu).unwrap(),
            count: 2,
        };
        let mse = hidden_mse(&s, &t, &rows, None).unwrap();
        // (0 + 4 + 9 + 0) / (2 rows · 2 wide); the third (padding) row is not compared.
        assert_eq!(mse.to_scalar::<f32>().unwrap(), 13.0 / 4.0);
    }
}
