//! Plain text in, entities out: raw text is split into words (whitespace and punctuation, as
//! BERT's basic tokenizer does), tagged word by word, and entities are read from the tags.

use std::io::{BufReader, Read};
use std::path::Path;

use serde::Serialize;

use crate::data::tokenize::WordTokenizer;
use crate::data::{Dataset, LabelSet, Sentence};
use crate::error::Result;
use crate::eval::{predict_words, Prepared};
use crate::io::text_input::Lines;
use crate::io::Checkpoint;
use crate::kernels::Compute;
use crate::metrics::entities_default;
use crate::model::{Bert, Precision};

/// A word of raw text with its character span.
#[derive(Debug, Clone, PartialEq)]
pub struct Word {
    pub text: String,
    pub start: usize,
    pub end: usize,
}

/// Characters BERT's normalizer removes from raw text (`clean_text`): control, format,
/// unassigned and private-use characters (NUL, BEL, zero-width space, BOM, bidi marks, joiners)
/// and the replacement character. Tab and line breaks are whitespace instead.
pub fn is_dropped(c: char) -> bool {
    use unicode_categories::UnicodeCategories;
    !c.is_whitespace() && (c.is_other() || c == '\u{fffd}')
}

/// Splits text on whitespace and around punctuation; spans are in characters of `text`.
/// Characters BERT's normalizer drops ([`is_dropped`]) are skipped: they neither form a word nor
/// split one.
pub fn split_words(text: &str) -> Vec<Word> {
    let mut words = vec![];
    let mut current = String::new();
    let mut start = 0;
    let chars: Vec<char> = text.chars().collect();
    let flush = |current: &mut String, start: usize, end: usize, words: &mut Vec<Word>| {
        if !current.is_empty() {
            words.push(Word {
                text: std::mem::take(current),
                start,
                end,
            });
        }
    };
    for (i, &c) in chars.iter().enumerate() {
        if is_dropped(c) {
            continue;
        }
        if c.is_whitespace() {
            flush(&mut current, start, i, &mut words);
        } else if c.is_ascii_punctuation() || (!c.is_alphanumeric() && !c.is_whitespace()) {
            flush(&mut current, start, i, &mut words);
            words.push(Word {
                text: c.to_string(),
                start: i,
                end: i + 1,
            });
        } else {
            if current.is_empty() {
                start = i;
            }
            current.push(c);
        }
    }
    flush(&mut current, start, chars.len(), &mut words);
    words
}

#[derive(Debug, Clone, Serialize)]
pub struct Entity {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: String,
    /// Character offsets in the input line.
    pub start: usize,
    pub end: usize,
    /// Mean probability of the entity's word predictions.
    pub score: f32,
}

#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    pub text: String,
    pub entities: Vec<Entity>,
}

/// A checkpoint loaded for tagging text (`surgery predict`).
pub struct Predictor {
    ckpt: Checkpoint,
    model: Bert,
    batch_size: usize,
}

impl Predictor {
    /// Opens the checkpoint and loads its model where `compute` says.
    pub fn open(
        checkpoint: &Path,
        precision: Precision,
        compute: Compute,
        batch_size: usize,
    ) -> Result<Self> {
        crate::util::options::require_positive("--batch-size", batch_size)?;
        let ckpt = Checkpoint::open(checkpoint)?;
        let (device, kernels) = compute.open()?;
        let model = Bert::load(&ckpt, &device)?
            .with_precision(precision)
            .with_kernels(kernels);
        Ok(Predictor {
            ckpt,
            model,
            batch_size,
        })
    }

    /// The entities of each line.
    pub fn predict(&self, lines: &[String]) -> Result<Vec<Prediction>> {
        predict_lines(&self.ckpt, &self.model, lines, self.batch_size)
    }

    /// Tags lines as they arrive and hands each batch's predictions to `emit`: a batch ends when
    /// it is full or when no more input is waiting, so an interactive session gets each answer
    /// at once. Raw text may hold NUL (it is dropped).
    pub fn predict_stream<R: Read, E: From<crate::Error>>(
        &self,
        lines: Lines<BufReader<R>>,
        mut emit: impl FnMut(Vec<Prediction>) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let mut lines = lines.allow_nul();
        let mut batch = vec![];
        while let Some(line) = lines.next() {
            batch.push(line?);
            if batch.len() >= self.batch_size || !lines.has_buffered() {
                emit(self.predict(&std::mem::take(&mut batch))?)?;
            }
        }
        if !batch.is_empty() {
            emit(self.predict(&batch)?)?;
        }
        Ok(())
    }
}

/// Tags each line of text and returns its entities.
pub fn predict_lines(
    ckpt: &Checkpoint,
    model: &Bert,
    lines: &[String],
    batch_size: usize,
) -> Result<Vec<Prediction>> {
    let labels = LabelSet::new(ckpt.require_labels()?)?;
    let tokenizer = WordTokenizer::from_checkpoint(ckpt)?;
    let split: Vec<Vec<Word>> = lines.iter().map(|l| split_words(l)).collect();
    let outside = labels.labels()[0].clone();
    let sentences: Vec<Sentence> = split
        .iter()
        .enumerate()
        .map(|(i, words)| Sentence {
            words: words.iter().map(|w| w.text.clone()).collect(),
            tags: vec![outside.clone(); words.len()],
            line: i + 1,
        })
        .collect();
    let non_empty: Vec<usize> = (0..sentences.len())
        .filter(|&i| !sentences[i].words.is_empty())
        .collect();
    let data = Dataset {
        path: "<input>".into(),
        sentences: non_empty.iter().map(|&i| sentences[i].clone()).collect(),
        one_word_per_line: false,
    };
    let mut results: Vec<Prediction> = lines
        .iter()
        .map(|l| Prediction {
            text: l.clone(),
            entities: vec![],
        })
        .collect();
    if data.sentences.is_empty() {
        return Ok(results);
    }
    let max_len = ckpt.arch.max_positions.min(512);
    let prepared = Prepared::for_inference(&tokenizer, data, &labels, max_len)?;
    let words = predict_words(
        model,
        &prepared,
        tokenizer.pad_id(),
        batch_size,
        model.device(),
    )?;
    for (k, &line) in non_empty.iter().enumerate() {
        let tags: Vec<&str> = words.ids[k].iter().map(|&i| labels.name(i)).collect();
        let chars: Vec<char> = lines[line].chars().collect();
        for (kind, first, last) in entities_default(&tags) {
            let (start, end) = (split[line][first].start, split[line][last].end);
            let probs = &words.scores[k][first..=last];
            results[line].entities.push(Entity {
                kind,
                text: chars[start..end].iter().collect(),
                start,
                end,
                score: probs.iter().sum::<f32>() / probs.len() as f32,
            });
        }
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_split_on_space_and_punctuation_with_spans() {
        let w = split_words("Hi, J.K. Rowling!");
        let texts: Vec<&str> = w.iter().map(|w| w.text.as_str()).collect();
        assert_eq!(texts, vec!["Hi", ",", "J", ".", "K", ".", "Rowling", "!"]);
        assert_eq!((w[6].start, w[6].end), (9, 16));
    }

    #[test]
    fn control_and_format_characters_form_no_words() {
        let w = split_words("\u{7}\u{0} \u{feff}\u{200b}\u{200e}Jo\u{200b}hn \u{200d}");
        let texts: Vec<&str> = w.iter().map(|w| w.text.as_str()).collect();
        assert_eq!(texts, vec!["John"]);
        assert_eq!((w[0].start, w[0].end), (6, 11));
    }
}
