//! The embedded default job: a small synthetic NER corpus (templates and name lists written here,
//! four entity types, IOB2) and a word-piece tokenizer for it, so the quickstart runs on a fresh
//! machine with no files outside the repository.

use std::collections::BTreeSet;
use std::path::Path;

use crate::data::{Dataset, Sentence};
use crate::error::{Error, Result};
use crate::util::rng::Rng;

const FIRST: &[&str] = &[
    "Anna", "Peter", "Maria", "John", "Li", "Fatima", "Carlos", "Yuki", "Olga", "Ahmed", "Grace",
    "Tom", "Ingrid", "Ravi", "Chloe", "Mateo", "Aisha", "Lars", "Nina", "Kofi",
];
const LAST: &[&str] = &[
    "Smith", "Müller", "Rossi", "Chen", "Okafor", "Nakamura", "Silva", "Novak", "Haddad", "Berg",
    "Kowalski", "Dubois", "Patel", "Jensen", "Moreau", "Ivanova",
];
const LOCATIONS: &[&[&str]] = &[
    &["Paris"],
    &["Berlin"],
    &["Lagos"],
    &["Tokyo"],
    &["Lima"],
    &["Oslo"],
    &["New", "York"],
    &["Buenos", "Aires"],
    &["Cape", "Town"],
    &["Kenya"],
    &["Brazil"],
    &["Vietnam"],
    &["Canada"],
    &["the", "Alps"],
    &["Lake", "Victoria"],
    &["Hong", "Kong"],
];
const ORGS: &[&[&str]] = &[
    &["Reuters"],
    &["Siemens"],
    &["UNICEF"],
    &["Acme", "Corp"],
    &["the", "World", "Bank"],
    &["Red", "Cross"],
    &["Toyota"],
    &["Nokia"],
    &["Real", "Madrid"],
    &["Ajax"],
    &["NASA"],
    &["Oxford", "University"],
    &["the", "Central", "Bank"],
    &["Globex", "Ltd"],
];
const MISC: &[&[&str]] = &[
    &["German"],
    &["Olympic", "Games"],
    &["French"],
    &["World", "Cup"],
    &["Japanese"],
    &["Nobel", "Prize"],
    &["English"],
    &["Brazilian"],
    &["Tour", "de", "France"],
    &["Christmas"],
];
/// Templates: `{PER}`, `{LOC}`, `{ORG}`, `{MISC}` are entity slots, other words are `O`.
const TEMPLATES: &[&str] = &[
    "{PER} visited {LOC} on Monday .",
    "{ORG} said on Tuesday that {PER} would lead the team .",
    "The {MISC} delegation arrived in {LOC} .",
    "{PER} , a spokesman for {ORG} , declined to comment .",
    "Shares of {ORG} rose 3 percent in {LOC} trading .",
    "{PER} won the {MISC} after beating {PER} in the final .",
    "Police in {LOC} arrested two men on Friday .",
    "{ORG} and {ORG} signed a deal worth 5 million dollars .",
    "{PER} told {ORG} that talks with {LOC} had stalled .",
    "Fans celebrated in {LOC} after the {MISC} .",
    "The report by {ORG} was published in {LOC} .",
    "{PER} moved from {LOC} to {LOC} last year .",
    "Rain delayed the match between {ORG} and {ORG} .",
    "{MISC} officials met {PER} in {LOC} .",
    "Prices fell sharply on Wednesday .",
    "The minister said the economy would grow .",
];

/// The part of a name list a split may use: training sees the first three quarters only, so
/// dev and test measure generalisation to unseen names.
fn usable<T>(list: &[T], all: bool) -> &[T] {
    if all {
        list
    } else {
        &list[..(list.len() * 3).div_ceil(4)]
    }
}

fn fill(slot: &str, rng: &mut Rng, all_names: bool) -> (Vec<String>, &'static str) {
    let pick = |list: &[&[&str]], rng: &mut Rng| -> Vec<String> {
        let list = usable(list, all_names);
        list[rng.below(list.len())]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    match slot {
        "{PER}" => {
            let (first, last) = (usable(FIRST, all_names), usable(LAST, all_names));
            let mut name = vec![first[rng.below(first.len())].to_string()];
            if rng.uniform() < 0.7 {
                name.push(last[rng.below(last.len())].to_string());
            }
            (name, "PER")
        }
        "{LOC}" => (pick(LOCATIONS, rng), "LOC"),
        "{ORG}" => (pick(ORGS, rng), "ORG"),
        _ => (pick(MISC, rng), "MISC"),
    }
}

/// Generates `n` IOB2-tagged sentences; `all_names` false keeps a quarter of every name list
/// out (for the training split).
pub fn sentences(n: usize, seed: u64, all_names: bool) -> Vec<Sentence> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|i| {
            let template = TEMPLATES[rng.below(TEMPLATES.len())];
            let (mut words, mut tags) = (vec![], vec![]);
            for token in template.split(' ') {
                if token.starts_with('{') {
                    let (entity, kind) = fill(token, &mut rng, all_names);
                    for (k, w) in entity.into_iter().enumerate() {
                        tags.push(format!("{}-{kind}", if k == 0 { "B" } else { "I" }));
                        words.push(w);
                    }
                } else {
                    words.push(token.to_string());
                    tags.push("O".into());
                }
            }
            Sentence {
                words,
                tags,
                line: i + 1,
            }
        })
        .collect()
}

/// Writes sentences in CoNLL layout (`word tag`).
pub fn write_conll(path: &Path, sentences: &[Sentence]) -> Result<()> {
    let mut text = String::from("-DOCSTART- O\n\n");
    for s in sentences {
        for (w, t) in s.words.iter().zip(&s.tags) {
            text.push_str(&format!("{w} {t}\n"));
        }
        text.push('\n');
    }
    std::fs::write(path, text).map_err(|e| Error::io(path, e))
}

/// A cased BERT word-piece `tokenizer.json` whose vocabulary holds the special tokens, every
/// character of `data` (alone and as `##` continuation) and every word.
pub fn wordpiece_tokenizer_json(data: &[&Dataset]) -> (String, usize) {
    let mut words = BTreeSet::new();
    let mut chars = BTreeSet::new();
    for d in data {
        for s in &d.sentences {
            for w in &s.words {
                words.insert(w.clone());
                chars.extend(w.chars());
            }
        }
    }
    let mut vocab: Vec<String> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        .map(String::from)
        .to_vec();
    vocab.extend(chars.iter().map(|c| c.to_string()));
    vocab.extend(chars.iter().map(|c| format!("##{c}")));
    for w in words {
        if !vocab.contains(&w) {
            vocab.push(w);
        }
    }
    let map: serde_json::Map<String, serde_json::Value> = vocab
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i.into()))
        .collect();
    let special = |content: &str, id: usize| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true})
    };
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special("[PAD]", 0), special("[UNK]", 1), special("[CLS]", 2), special("[SEP]", 3), special("[MASK]", 4)],
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                       "strip_accents": null, "lowercase": false},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
            "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
                               "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}}},
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": map}
    });
    (
        serde_json::to_string_pretty(&json).expect("json"),
        vocab.len(),
    )
}
