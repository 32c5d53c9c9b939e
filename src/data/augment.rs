//! Augmented training sentences for distillation, made from the training set alone (the simple
//! NER augmentations of Dai & Adel, COLING 2020): mention replacement (an entity mention swapped
//! for another mention of the same type), token replacement inside `O` spans (a word swapped for
//! another `O` word of the corpus, frequent words more often), and shuffling the words within
//! segments (each mention and each `O` run keeps its tags in place). Every kind keeps the tags
//! valid in whatever scheme the data uses, and the teacher labels the new sentences anyway.

use serde::{Deserialize, Serialize};

use super::reader::Sentence;
use crate::util::rng::Rng;

/// One way of making a new sentence from a training sentence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum AugmentKind {
    /// Each mention is replaced, with probability 0.5, by a mention of the same type.
    Mention,
    /// Each `O` word is replaced, with probability 0.3, by an `O` word of the corpus.
    Token,
    /// The words of each segment (a mention or a run of `O`) are shuffled with probability 0.3.
    Shuffle,
}

const MENTION_P: f32 = 0.5;
const TOKEN_P: f32 = 0.3;
const SHUFFLE_P: f32 = 0.3;
/// Tries per new sentence before a source that no kind can change is given up.
const TRIES: usize = 10;

/// A maximal run of words that is one mention (with its type) or a run of `O` words.
struct Segment {
    start: usize,
    end: usize,
    kind: Option<String>,
}

/// The entity type of a tag, None for `O`.
fn entity_type(tag: &str) -> Option<&str> {
    tag.split_once('-').map(|(_, t)| t)
}

/// True when the tag opens a new mention (B, S, U; or a type change, as seqeval reads I after O).
fn opens(tag: &str, previous: Option<&str>) -> bool {
    match tag.split_once('-') {
        Some((prefix, kind)) => {
            matches!(prefix, "B" | "S" | "U")
                || previous.and_then(entity_type) != Some(kind)
                || previous.is_some_and(|p| {
                    p.starts_with("E-")
                        || p.starts_with("L-")
                        || p.starts_with("S-")
                        || p.starts_with("U-")
                })
        }
        None => false,
    }
}

fn segments(tags: &[String]) -> Vec<Segment> {
    let mut out: Vec<Segment> = vec![];
    for (i, tag) in tags.iter().enumerate() {
        let previous = i.checked_sub(1).map(|j| tags[j].as_str());
        let kind = entity_type(tag).map(String::from);
        let continues = match out.last() {
            Some(last) => last.kind == kind && !opens(tag, previous),
            None => false,
        };
        if continues {
            out.last_mut().expect("checked").end = i + 1;
        } else {
            out.push(Segment {
                start: i,
                end: i + 1,
                kind,
            });
        }
    }
    out
}

/// The corpus statistics the kinds draw from.
struct Pools {
    /// Every mention (words and tags as they appeared) by type.
    mentions: std::collections::BTreeMap<String, Vec<(Vec<String>, Vec<String>)>>,
    /// Every `O` word, repeated as often as it occurs.
    outside_words: Vec<String>,
}

impl Pools {
    fn of(sentences: &[Sentence]) -> Pools {
        let mut mentions: std::collections::BTreeMap<String, Vec<_>> = Default::default();
        let mut outside_words = vec![];
        for s in sentences {
            for seg in segments(&s.tags) {
                let words = s.words[seg.start..seg.end].to_vec();
                match seg.kind {
                    Some(kind) => mentions
                        .entry(kind)
                        .or_default()
                        .push((words, s.tags[seg.start..seg.end].to_vec())),
                    None => outside_words.extend(words),
                }
            }
        }
        Pools {
            mentions,
            outside_words,
        }
    }
}

/// `ratio` × the number of sentences new sentences (rounded), each made from a random training
/// sentence by every kind in `kinds` in turn; deterministic for a seed. Sources that no kind
/// changes are skipped, so fewer may come back (say, a corpus without mentions under `mention`).
pub fn augment(
    sentences: &[Sentence],
    kinds: &[AugmentKind],
    ratio: f64,
    seed: u64,
) -> Vec<Sentence> {
    let wanted = (sentences.len() as f64 * ratio).round() as usize;
    if sentences.is_empty() || kinds.is_empty() || wanted == 0 {
        return vec![];
    }
    let pools = Pools::of(sentences);
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(wanted);
    for _ in 0..wanted {
        for _ in 0..TRIES {
            let source = &sentences[rng.below(sentences.len())];
            let mut s = source.clone();
            for kind in kinds {
                s = match kind {
                    AugmentKind::Mention => replace_mentions(&s, &pools, &mut rng),
                    AugmentKind::Token => replace_tokens(&s, &pools, &mut rng),
                    AugmentKind::Shuffle => shuffle_segments(&s, &mut rng),
                };
            }
            if s.words != source.words {
                out.push(s);
                break;
            }
        }
    }
    out
}

fn replace_mentions(s: &Sentence, pools: &Pools, rng: &mut Rng) -> Sentence {
    let mut words = vec![];
    let mut tags = vec![];
    for seg in segments(&s.tags) {
        let candidates = seg.kind.as_ref().and_then(|k| pools.mentions.get(k));
        match candidates {
            Some(c) if rng.uniform() < MENTION_P => {
                let (w, t) = &c[rng.below(c.len())];
                words.extend(w.iter().cloned());
                tags.extend(t.iter().cloned());
            }
            _ => {
                words.extend_from_slice(&s.words[seg.start..seg.end]);
                tags.extend_from_slice(&s.tags[seg.start..seg.end]);
            }
        }
    }
    Sentence {
        words,
        tags,
        line: s.line,
    }
}

fn replace_tokens(s: &Sentence, pools: &Pools, rng: &mut Rng) -> Sentence {
    let mut out = s.clone();
    if pools.outside_words.is_empty() {
        return out;
    }
    for (word, tag) in out.words.iter_mut().zip(&s.tags) {
        if entity_type(tag).is_none() && rng.uniform() < TOKEN_P {
            *word = pools.outside_words[rng.below(pools.outside_words.len())].clone();
        }
    }
    out
}

fn shuffle_segments(s: &Sentence, rng: &mut Rng) -> Sentence {
    let mut out = s.clone();
    for seg in segments(&s.tags) {
        if seg.end - seg.start > 1 && rng.uniform() < SHUFFLE_P {
            rng.shuffle(&mut out.words[seg.start..seg.end]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sentence(pairs: &[(&str, &str)]) -> Sentence {
        Sentence {
            words: pairs.iter().map(|p| p.0.to_string()).collect(),
            tags: pairs.iter().map(|p| p.1.to_string()).collect(),
            line: 1,
        }
    }

    fn corpus() -> Vec<Sentence> {
        vec![
            sentence(&[
                ("John", "B-PER"),
                ("Smith", "I-PER"),
                ("visited", "O"),
                ("Paris", "B-LOC"),
                ("today", "O"),
            ]),
            sentence(&[
                ("Mary", "B-PER"),
                ("met", "O"),
                ("the", "O"),
                ("New", "B-ORG"),
                ("York", "I-ORG"),
                ("Times", "I-ORG"),
            ]),
            sentence(&[("Rome", "B-LOC"), ("is", "O"), ("old", "O")]),
        ]
    }

    #[test]
    fn segments_follow_mentions_and_outside_runs() {
        let s = &corpus()[1];
        let segs: Vec<_> = segments(&s.tags)
            .iter()
            .map(|g| (g.start, g.end, g.kind.clone()))
            .collect();
        assert_eq!(
            segs,
            vec![
                (0, 1, Some("PER".into())),
                (1, 3, None),
                (3, 6, Some("ORG".into()))
            ]
        );
        // Two B- in a row are two mentions; IOBES S- closes its mention.
        let tags: Vec<String> = ["B-PER", "B-PER", "S-LOC", "S-LOC"]
            .map(String::from)
            .to_vec();
        assert_eq!(segments(&tags).len(), 4);
    }

    #[test]
    fn every_kind_keeps_valid_tags_and_is_deterministic() {
        let corpus = corpus();
        let mentions: Vec<Vec<String>> = corpus
            .iter()
            .flat_map(|s| {
                segments(&s.tags)
                    .into_iter()
                    .filter(|g| g.kind.is_some())
                    .map(|g| s.words[g.start..g.end].to_vec())
                    .collect::<Vec<_>>()
            })
            .collect();
        for kinds in [
            vec![AugmentKind::Mention],
            vec![AugmentKind::Token],
            vec![AugmentKind::Shuffle],
            vec![
                AugmentKind::Mention,
                AugmentKind::Token,
                AugmentKind::Shuffle,
            ],
        ] {
            let a = augment(&corpus, &kinds, 2.0, 7);
            // A source that no try changes is skipped (short segments often shuffle to themselves).
            assert!((4..=6).contains(&a.len()), "{kinds:?}: {}", a.len());
            assert_eq!(
                a.iter().map(|s| &s.words).collect::<Vec<_>>(),
                augment(&corpus, &kinds, 2.0, 7)
                    .iter()
                    .map(|s| &s.words)
                    .collect::<Vec<_>>()
            );
            for s in &a {
                assert_eq!(s.words.len(), s.tags.len());
                for t in &s.tags {
                    crate::data::tags::check_tag(t).unwrap();
                }
                // Every I- follows a tag of its type.
                for i in 1..s.tags.len() {
                    if let Some(kind) = s.tags[i].strip_prefix("I-") {
                        assert_eq!(entity_type(&s.tags[i - 1]), Some(kind), "{s:?}");
                    }
                }
                if kinds == [AugmentKind::Mention] {
                    // Each mention of the new sentence is a mention of the corpus.
                    for g in segments(&s.tags).into_iter().filter(|g| g.kind.is_some()) {
                        assert!(
                            mentions.contains(&s.words[g.start..g.end].to_vec()),
                            "{s:?}"
                        );
                    }
                }
            }
        }
        assert!(augment(&corpus, &[], 1.0, 1).is_empty());
        assert!(augment(&corpus, &[AugmentKind::Token], 0.0, 1).is_empty());
    }
}
