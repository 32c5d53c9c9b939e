//! prune-vocab: keep the word pieces the tokenizer produces on a corpus, every special token and
//! every single-character piece (so every word still tokenises), renumber them in their original
//! order, slice the embedding rows, and write a matching `tokenizer.json` (and `vocab.txt`).
//! WordPiece keeps its vocabulary map; BPE also keeps every piece a kept piece is merged from and
//! the merges among kept pieces (a merge never applied to a kept word is never the one BPE picks,
//! so kept words get the same pieces); Unigram keeps its pieces' scores (removing pieces that are
//! not on a kept word's best segmentation leaves that segmentation the best).

use std::collections::BTreeSet;
use std::path::PathBuf;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::Surgery;
use super::{cpu, Outcome, Planned};
use crate::arch::{Arch, Key, Positions};
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
    let model = ModelKind::of(&json).map_err(bad)?;
    let pieces = model.pieces(&json).map_err(bad)?;
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
        // A single character, alone or after the continuation (`##`) or word-start (`▁`) mark.
        let core = piece.strip_prefix("##").unwrap_or(piece);
        let core = core
            .strip_prefix('▁')
            .filter(|c| !c.is_empty())
            .unwrap_or(core);
        if core.chars().count() == 1 {
            keep.insert(*id);
        }
    }
    if model == ModelKind::Bpe {
        keep_merge_sources(&json, &pieces, &mut keep).map_err(bad)?;
    }
    let old_to_new = |old: u32| keep.iter().position(|&k| k == old).map(|p| p as u64);
    let kept: Vec<u32> = keep.iter().copied().collect();
    model.rewrite(&mut json, &pieces, &keep);
    remap_ids(&mut json, &old_to_new);
    if let Some(unk) = json.pointer_mut("/model/unk_id") {
        if let Some(new) = unk.as_u64().and_then(|v| old_to_new(v as u32)) {
            *unk = new.into();
        }
    }
    let new_pad = old_to_new(ckpt.config.pad_token_id as u32).unwrap_or(0) as usize;
    if matches!(ckpt.arch.positions, Positions::AfterPadding { .. })
        && new_pad != ckpt.config.pad_token_id
    {
        return Err(bad(format!(
            "the padding id would change from {} to {new_pad}, and this family's position ids count from it",
            ckpt.config.pad_token_id
        )));
    }
    let mut out = ckpt.clone();
    let index = Tensor::from_vec(kept.clone(), kept.len(), &candle_core::Device::Cpu)?;
    out.set_tensor(
        Key::WordEmbeddings,
        cpu(ckpt, Key::WordEmbeddings)?.index_select(&index, 0)?,
    );
    out.config.vocab_size = kept.len();
    out.config.pad_token_id = new_pad;
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

/// The tokenizer models prune-vocab rewrites.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ModelKind {
    /// `model.vocab`: {piece: id}.
    WordPiece,
    /// `model.vocab`: {piece: id}, and `model.merges`.
    Bpe,
    /// `model.vocab`: [[piece, score], …], the id being the position.
    Unigram,
}

impl ModelKind {
    fn of(json: &serde_json::Value) -> std::result::Result<Self, String> {
        match json.pointer("/model/type").and_then(|t| t.as_str()) {
            Some("WordPiece") => Ok(ModelKind::WordPiece),
            Some("BPE") => {
                for affix in ["continuing_subword_prefix", "end_of_word_suffix"] {
                    let value = json.pointer(&format!("/model/{affix}"));
                    if value.is_some_and(|v| v.as_str().is_some_and(|s| !s.is_empty())) {
                        return Err(format!("BPE with a `{affix}` cannot be pruned"));
                    }
                }
                Ok(ModelKind::Bpe)
            }
            Some("Unigram") => Ok(ModelKind::Unigram),
            other => Err(format!(
                "tokenizer model {other:?} cannot be pruned (WordPiece, BPE and Unigram can)"
            )),
        }
    }

    /// (id, piece) of every piece, in id order.
    fn pieces(self, json: &serde_json::Value) -> std::result::Result<Vec<(u32, String)>, String> {
        let vocab = &json["model"]["vocab"];
        let mut pieces: Vec<(u32, String)> = match self {
            ModelKind::WordPiece | ModelKind::Bpe => vocab
                .as_object()
                .ok_or("model.vocab is not a map")?
                .iter()
                .map(|(t, id)| {
                    let id = id.as_u64().ok_or(format!("id of `{t}` is not a number"))?;
                    Ok((id as u32, t.clone()))
                })
                .collect::<std::result::Result<_, String>>()?,
            ModelKind::Unigram => vocab
                .as_array()
                .ok_or("model.vocab is not a list")?
                .iter()
                .enumerate()
                .map(|(id, entry)| {
                    let piece = entry[0].as_str().ok_or(format!("piece {id} has no text"))?;
                    Ok((id as u32, piece.to_string()))
                })
                .collect::<std::result::Result<_, String>>()?,
        };
        pieces.sort();
        if pieces
            .iter()
            .enumerate()
            .any(|(i, (id, _))| *id as usize != i)
        {
            return Err("model.vocab ids are not 0..N".into());
        }
        Ok(pieces)
    }

    /// Writes the kept pieces (renumbered in their order) and, for BPE, the kept merges.
    fn rewrite(self, json: &mut serde_json::Value, pieces: &[(u32, String)], keep: &BTreeSet<u32>) {
        let model = &mut json["model"];
        match self {
            ModelKind::WordPiece | ModelKind::Bpe => {
                let vocab: serde_json::Map<String, serde_json::Value> = keep
                    .iter()
                    .enumerate()
                    .map(|(new, &old)| (pieces[old as usize].1.clone(), (new as u64).into()))
                    .collect();
                model["vocab"] = vocab.into();
            }
            ModelKind::Unigram => {
                let old = model["vocab"].as_array().cloned().unwrap_or_default();
                let vocab: Vec<serde_json::Value> =
                    keep.iter().map(|&id| old[id as usize].clone()).collect();
                model["vocab"] = vocab.into();
            }
        }
        if self == ModelKind::Bpe {
            let kept: std::collections::HashSet<&str> = keep
                .iter()
                .map(|&id| pieces[id as usize].1.as_str())
                .collect();
            if let Some(merges) = model["merges"].as_array_mut() {
                merges.retain(|m| {
                    merge_pair(m).is_some_and(|(a, b)| {
                        kept.contains(a.as_str())
                            && kept.contains(b.as_str())
                            && kept.contains(format!("{a}{b}").as_str())
                    })
                });
            }
        }
    }
}

/// A merge as stored: `"a b"` or `["a", "b"]`.
fn merge_pair(merge: &serde_json::Value) -> Option<(String, String)> {
    match merge {
        serde_json::Value::String(s) => {
            let (a, b) = s.split_once(' ')?;
            Some((a.to_string(), b.to_string()))
        }
        serde_json::Value::Array(pair) if pair.len() == 2 => {
            Some((pair[0].as_str()?.to_string(), pair[1].as_str()?.to_string()))
        }
        _ => None,
    }
}

/// Adds to `keep` every piece a kept piece is merged from, until nothing changes.
fn keep_merge_sources(
    json: &serde_json::Value,
    pieces: &[(u32, String)],
    keep: &mut BTreeSet<u32>,
) -> std::result::Result<(), String> {
    let id_of: std::collections::HashMap<&str, u32> =
        pieces.iter().map(|(id, p)| (p.as_str(), *id)).collect();
    let merges: Vec<(u32, u32, u32)> = json["model"]["merges"]
        .as_array()
        .ok_or("model.merges is not a list")?
        .iter()
        .filter_map(merge_pair)
        .filter_map(|(a, b)| {
            let merged = format!("{a}{b}");
            Some((
                *id_of.get(a.as_str())?,
                *id_of.get(b.as_str())?,
                *id_of.get(merged.as_str())?,
            ))
        })
        .collect();
    loop {
        let before = keep.len();
        for &(a, b, merged) in &merges {
            if keep.contains(&merged) {
                keep.insert(a);
                keep.insert(b);
            }
        }
        if keep.len() == before {
            return Ok(());
        }
    }
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
        "Keep only the word pieces a corpus uses (plus specials and single characters; WordPiece, BPE or Unigram)";
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
