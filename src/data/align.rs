//! Tokenisation with label alignment. Each sentence becomes one or more examples (windows that
//! fit the model); the first sub-token of a word carries its label (or, with
//! `Alignment::AllSubtokens`, every sub-token does, continuations of `B-X` as `I-X`); special
//! tokens and other sub-tokens get the ignore index. Sentences are split, never dropped or cut.

use crate::data::tokenize::WordTokenizer;
use crate::data::{Dataset, LabelSet};
use crate::error::{Error, Result};

/// The label id of tokens the loss and the metric ignore (as PyTorch's -100).
pub const IGNORE: i64 = -100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Alignment {
    #[default]
    FirstSubtoken,
    AllSubtokens,
}

/// One model input: a window of a sentence.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub ids: Vec<u32>,
    /// Training label per token (IGNORE where not trained).
    pub labels: Vec<i64>,
    /// Token position of the first sub-token of each word in this window, with the word's index
    /// in its sentence: where predictions are read and where distillation compares.
    pub word_starts: Vec<(usize, usize)>,
    pub sentence: usize,
}

/// Tokenises every sentence and aligns labels; windows hold at most `max_len` tokens.
pub fn encode_dataset(
    tokenizer: &WordTokenizer,
    data: &Dataset,
    label_ids: &[Vec<usize>],
    labels: &LabelSet,
    alignment: Alignment,
    max_len: usize,
) -> Result<Vec<Example>> {
    if max_len < 3 {
        return Err(Error::Spec(format!(
            "max length {max_len} leaves no room for words"
        )));
    }
    let unk = [tokenizer.unk_id()];
    let mut examples = vec![];
    for (index, (sentence, tags)) in data.sentences.iter().zip(label_ids).enumerate() {
        let words: Vec<&str> = sentence.words.iter().map(|s| s.as_str()).collect();
        let encoded = tokenizer.encode_words(&words)?;
        // Sub-tokens of each word; specials are the tokens without a word.
        let mut pieces: Vec<Vec<u32>> = vec![vec![]; words.len()];
        let mut prefix = vec![];
        let mut suffix = vec![];
        for (pos, (&id, word)) in encoded.ids.iter().zip(&encoded.word_ids).enumerate() {
            match word {
                Some(w) => pieces[*w].push(id),
                None if pos == 0 || pieces.iter().all(|p| p.is_empty()) => prefix.push(id),
                None => suffix.push(id),
            }
        }
        let room = max_len.saturating_sub(prefix.len() + suffix.len()).max(1);
        let mut start = 0;
        while start < words.len() {
            // Greedily take words while they fit; a single over-long word keeps its first `room`
            // sub-tokens so it is still scored.
            let mut end = start;
            let mut used = 0;
            while end < words.len() {
                let n = pieces[end].len().max(1);
                if used + n > room && end > start {
                    break;
                }
                used += n.min(room);
                end += 1;
            }
            let mut ex = Example {
                ids: prefix.clone(),
                labels: vec![IGNORE; prefix.len()],
                word_starts: vec![],
                sentence: index,
            };
            for w in start..end {
                // A word the tokenizer drops entirely (e.g. a lone control character) becomes
                // [UNK]: it must still be scored.
                let word_pieces: &[u32] = if pieces[w].is_empty() {
                    &unk
                } else {
                    &pieces[w][..pieces[w].len().min(room)]
                };
                ex.word_starts.push((ex.ids.len(), w));
                for (k, &id) in word_pieces.iter().enumerate() {
                    ex.ids.push(id);
                    let label = match (k, alignment) {
                        (0, _) => tags[w] as i64,
                        (_, Alignment::FirstSubtoken) => IGNORE,
                        (_, Alignment::AllSubtokens) => continuation(labels, tags[w]) as i64,
                    };
                    ex.labels.push(label);
                }
            }
            ex.ids.extend_from_slice(&suffix);
            ex.labels.extend(std::iter::repeat_n(IGNORE, suffix.len()));
            examples.push(ex);
            start = end;
        }
    }
    Ok(examples)
}

/// The label of a continuation sub-token: `B-X` → `I-X` when the set has it.
fn continuation(labels: &LabelSet, id: usize) -> usize {
    match labels.name(id).strip_prefix("B-") {
        Some(kind) => labels.id(&format!("I-{kind}")).unwrap_or(id),
        None => id,
    }
}
