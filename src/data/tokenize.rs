//! Tokenisation of pre-split words with the checkpoint's `tokenizer.json` (WordPiece, byte-level
//! BPE, SentencePiece Unigram: whatever the file's model is), as transformers does with
//! `is_split_into_words=True`: one encoding per sentence, special tokens added, and for every
//! token the index of the word it came from (`word_ids()`).

use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::io::Checkpoint;

/// A sentence as token ids plus, for each token, the word it belongs to (None for specials).
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub word_ids: Vec<Option<usize>>,
}

pub struct WordTokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    pad_id: u32,
}

impl WordTokenizer {
    /// The tokenizer stored with a checkpoint (padding and truncation settings removed: batching
    /// pads, and long sentences are split by the caller, never silently cut).
    pub fn from_checkpoint(ckpt: &Checkpoint) -> Result<Self> {
        let path = ckpt.source().join("tokenizer.json");
        let bytes = ckpt
            .tokenizer_files
            .get("tokenizer.json")
            .ok_or_else(|| Error::Tokenizer {
                path: path.clone(),
                msg: "the checkpoint has no tokenizer.json".into(),
            })?;
        Self::from_bytes(bytes, path, ckpt.config.pad_token_id as u32)
    }

    pub fn from_bytes(bytes: &[u8], path: PathBuf, default_pad: u32) -> Result<Self> {
        let bad = |msg: String| Error::Tokenizer {
            path: path.clone(),
            msg,
        };
        let mut inner = tokenizers::Tokenizer::from_bytes(bytes)
            .map_err(|e| bad(format!("cannot read tokenizer: {e}")))?;
        // Every word would become no piece at all, and be predicted from nothing.
        if inner.get_vocab_size(true) == 0 {
            return Err(bad("the tokenizer's vocabulary is empty".into()));
        }
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| bad(format!("cannot disable truncation: {e}")))?;
        let pad_id = ["[PAD]", "<pad>"]
            .iter()
            .find_map(|t| inner.token_to_id(t))
            .unwrap_or(default_pad);
        Ok(WordTokenizer {
            inner,
            path,
            pad_id,
        })
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// The id of `[UNK]` / `<unk>` (the pad id when the vocabulary has none).
    pub fn unk_id(&self) -> u32 {
        ["[UNK]", "<unk>"]
            .iter()
            .find_map(|t| self.inner.token_to_id(t))
            .unwrap_or(self.pad_id)
    }

    /// Tokenises one sentence given as words.
    pub fn encode_words(&self, words: &[&str]) -> Result<Encoded> {
        let encoding = self
            .inner
            .encode(words, true)
            .map_err(|e| Error::Tokenizer {
                path: self.path.clone(),
                msg: format!("cannot tokenise {:?}: {e}", words.join(" ")),
            })?;
        Ok(Encoded {
            ids: encoding.get_ids().to_vec(),
            word_ids: encoding
                .get_word_ids()
                .iter()
                .map(|w| w.map(|w| w as usize))
                .collect(),
        })
    }
}
