//! prune-vocab: keep the word pieces the tokenizer produces on a corpus, every special token and
//! every single-character piece (so every word still tokenises), renumber them in their original
//! order, slice the embedding rows, and write a matching `tokenizer.json` (and `vocab.txt`).

use std::collections::BTreeSet;
use std::path::PathBuf;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::registry::Surgery;
use super::{cpu, Outcome, Planned};
use crate::arch::{Arch, Key};
use crate::data::tokenize::WordTokenizer;
use crate::data::{read_dataset, ReadOptions};
use crate::error::{Error, Result};
use crate::io::Checkpoint;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// A corpus file (CoNLL or JSONL) whose word pieces are kept; repeat for several.
    #[arg(long, required = true)]
    pub corpus: Vec<PathBuf>,
    /// A file to report coverage on (share of its pieces that survive); repeat for several.
    #[arg(long)]
    #[serde(default)]
    pub coverage: Vec<PathBuf>,
}

/// Ids of every piece the tokenizer produces on the files' sentences.
fn used_ids(
    tokenizer: &WordTokenizer,
    files: &[PathBuf],
) -> Result<(BTreeSet<u32>, Vec<Vec<u32>>)> {
    let mut used = BTreeSet::new();
    let mut sentences = vec![];
    for path in files {
        let data = read_dataset(path, &ReadOptions::default())?;
        for s in &data.sentences {
            let words: Vec<&str> = s.words.iter().map(|w| w.as_str()).collect();
            let ids = tokenizer.encode_words(&words)?.ids;
            used.extend(ids.iter().copied());
            sentences.push(ids);
        }
    }
    Ok((used, sentences))
}

pub fn apply(ckpt: &Checkpoint, spec: &Spec) -> Result<Outcome> {
    let tokenizer_path = ckpt.source().join("tokenizer.json");
    let bytes = ckpt
        .tokenizer_files
        .get("tokenizer.json")
        .ok_or_else(|| Error::Tokenizer {
            path: tokenizer_path.clone(),
            msg: "prune-vocab needs the checkpoint's tokenizer.json".into(),
        })?;
    let bad = |msg: String| Error::Tokenizer {
        path: tokenizer_path.clone(),
        msg,
    };
    let mut json: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let tokenizer = WordTokenizer::from_checkpoint(ckpt)?;
    let vocab = json
        .pointer("/model/vocab")
        .and_then(|v| v.as_object())
        .filter(|_| json.pointer("/model/type").and_then(|t| t.as_str()) == Some("WordPiece"))
        .ok_or_else(|| bad("only WordPiece tokenizers (model.vocab) can be pruned".into()))?
        .clone();
    let mut pieces: Vec<(u32, String)> = vocab
        .iter()
        .map(|(t, id)| {
            Ok((
                id.as_u64()
                    .ok_or_else(|| bad(format!("id of `{t}` is not a number")))?
                    as u32,
                t.clone(),
            ))
        })
        .collect::<Result<_>>()?;
    pieces.sort();
    if pieces.len() != ckpt.arch.vocab {
        return Err(bad(format!(
            "the tokenizer has {} pieces but the model's vocab_size is {}",
            pieces.len(),
            ckpt.arch.vocab
        )));
    }
    let (mut keep, _) = used_ids(&tokenizer, &spec.corpus)?;
    if let Some(added) = json.get("added_tokens").and_then(|a| a.as_array()) {
        keep.extend(
            added
                .iter()
                .filter_map(|t| t["id"].as_u64())
                .map(|id| id as u32),
        );
    }
    // Specials that are not registered as added tokens (older or hand-made tokenizer files).
    let mut special_names: Vec<String> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        .map(String::from)
        .to_vec();
    for pointer in ["/model/unk_token", "/padding/pad_token"] {
        if let Some(name) = json.pointer(pointer).and_then(|v| v.as_str()) {
            special_names.push(name.to_string());
        }
    }
    for (id, piece) in &pieces {
        if special_names.contains(piece) {
            keep.insert(*id);
        }
        let core = piece.strip_prefix("##").unwrap_or(piece);
        if core.chars().count() == 1 {
            keep.insert(*id);
        }
    }
    let old_to_new = |old: u32| keep.iter().position(|&k| k == old).map(|p| p as u64);
    let kept: Vec<u32> = keep.iter().copied().collect();
    let new_vocab: serde_json::Map<String, serde_json::Value> = kept
        .iter()
        .enumerate()
        .map(|(new, &old)| (pieces[old as usize].1.clone(), (new as u64).into()))
        .collect();
    json["model"]["vocab"] = new_vocab.into();
    remap_ids(&mut json, &old_to_new);
    let mut out = ckpt.clone();
    let index = Tensor::from_vec(kept.clone(), kept.len(), &candle_core::Device::Cpu)?;
    out.set_tensor(
        Key::WordEmbeddings,
        cpu(ckpt, Key::WordEmbeddings)?.index_select(&index, 0)?,
    );
    out.config.vocab_size = kept.len();
    out.config.pad_token_id = old_to_new(ckpt.config.pad_token_id as u32).unwrap_or(0) as usize;
    let mut arch = out.arch.clone();
    arch.vocab = kept.len();
    out.set_arch(arch)?;
    out.tokenizer_files.insert(
        "tokenizer.json".into(),
        serde_json::to_vec_pretty(&json).expect("json"),
    );
    if out.tokenizer_files.contains_key("vocab.txt") {
        let text: String = kept
            .iter()
            .map(|&old| format!("{}\n", pieces[old as usize].1))
            .collect();
        out.tokenizer_files
            .insert("vocab.txt".into(), text.into_bytes());
    }
    let mut report = serde_json::json!({
        "pieces_before": pieces.len(),
        "pieces_after": kept.len(),
        "kept_fraction": kept.len() as f64 / pieces.len() as f64,
    });
    if !spec.coverage.is_empty() {
        let (_, sentences) = used_ids(&tokenizer, &spec.coverage)?;
        let total: usize = sentences.iter().map(|s| s.len()).sum();
        let covered: usize = sentences
            .iter()
            .map(|s| s.iter().filter(|id| keep.contains(id)).count())
            .sum();
        let whole = sentences
            .iter()
            .filter(|s| s.iter().all(|id| keep.contains(id)))
            .count();
        report["coverage_pieces"] = (covered as f64 / total.max(1) as f64).into();
        report["coverage_sentences"] = (whole as f64 / sentences.len().max(1) as f64).into();
    }
    Ok(Outcome::new(ckpt, out, Spec::NAME, spec, report))
}

/// Renumbers the ids the tokenizer stores outside the vocabulary: added tokens, the
/// post-processor's special tokens, and the padding id.
fn remap_ids(json: &mut serde_json::Value, map: &dyn Fn(u32) -> Option<u64>) {
    if let Some(added) = json.get_mut("added_tokens").and_then(|a| a.as_array_mut()) {
        for t in added {
            if let Some(new) = t["id"].as_u64().and_then(|id| map(id as u32)) {
                t["id"] = new.into();
            }
        }
    }
    if let Some(specials) = json
        .pointer_mut("/post_processor/special_tokens")
        .and_then(|s| s.as_object_mut())
    {
        for special in specials.values_mut() {
            if let Some(ids) = special.get_mut("ids").and_then(|i| i.as_array_mut()) {
                for id in ids {
                    if let Some(new) = id.as_u64().and_then(|v| map(v as u32)) {
                        *id = new.into();
                    }
                }
            }
        }
    }
    for key in ["cls", "sep"] {
        // BertProcessing stores ["[CLS]", 101].
        if let Some(pair) = json
            .pointer_mut(&format!("/post_processor/{key}"))
            .and_then(|p| p.as_array_mut())
        {
            if let Some(new) = pair
                .get(1)
                .and_then(|v| v.as_u64())
                .and_then(|v| map(v as u32))
            {
                pair[1] = new.into();
            }
        }
    }
    if let Some(pad) = json.pointer_mut("/padding/pad_id") {
        if let Some(new) = pad.as_u64().and_then(|v| map(v as u32)) {
            *pad = new.into();
        }
    }
}

impl Surgery for Spec {
    const NAME: &'static str = "prune-vocab";
    const ABOUT: &'static str =
        "Keep only the word pieces a corpus uses (plus specials and single characters)";
    const EXAMPLE: &'static [&'static str] = &["--corpus", "{calib}"];

    fn reads(&self) -> Vec<&std::path::Path> {
        self.corpus
            .iter()
            .chain(&self.coverage)
            .map(|p| p.as_path())
            .collect()
    }

    fn plan(&self, _: &Arch) -> Result<Planned> {
        Ok(Planned::Unknown(
            "the kept word pieces depend on the corpus".into(),
        ))
    }

    fn apply(&self, ckpt: &Checkpoint) -> Result<Outcome> {
        apply(ckpt, self)
    }
}
