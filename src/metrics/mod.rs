//! Entity-level precision / recall / F1 exactly as `seqeval` computes them: the default mode
//! (conlleval-style chunking, lenient about `I-` without `B-`) and the strict IOB2 mode; micro
//! averages plus a per-type report like `classification_report`.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::error::{Error, Result};

/// How entities are read from tag sequences.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Matching {
    /// `seqeval` default: `get_entities` (an `I-X` after `O` starts an entity).
    #[default]
    Default,
    /// `mode="strict", scheme=IOB2`: an entity starts with `B-X` and continues with `I-X`.
    StrictIob2,
}

/// An entity: (type, first, last) positions.
pub type Entity = (String, usize, usize);

/// seqeval's `get_entities` on one sentence (positions are within the sentence).
pub fn entities_default(tags: &[&str]) -> Vec<Entity> {
    let mut chunks = vec![];
    let (mut prev_tag, mut prev_type) = ('O', String::new());
    let mut begin = 0;
    for (i, chunk) in tags.iter().copied().chain(std::iter::once("O")).enumerate() {
        let tag = chunk.chars().next().unwrap_or('O');
        let rest = &chunk[tag.len_utf8().min(chunk.len())..];
        let kind = match rest.split_once('-') {
            Some((_, after)) => after,
            None => rest,
        };
        let kind = if kind.is_empty() { "_" } else { kind };
        if end_of_chunk(prev_tag, tag, &prev_type, kind) {
            chunks.push((prev_type.clone(), begin, i - 1));
        }
        if start_of_chunk(prev_tag, tag, &prev_type, kind) {
            begin = i;
        }
        prev_tag = tag;
        prev_type = kind.to_string();
    }
    chunks
}

fn end_of_chunk(prev: char, tag: char, prev_type: &str, kind: &str) -> bool {
    matches!(
        (prev, tag),
        ('E', _)
            | ('S', _)
            | ('B', 'B')
            | ('B', 'S')
            | ('B', 'O')
            | ('I', 'B')
            | ('I', 'S')
            | ('I', 'O')
    ) || (prev != 'O' && prev != '.' && prev_type != kind)
}

fn start_of_chunk(prev: char, tag: char, prev_type: &str, kind: &str) -> bool {
    matches!(tag, 'B' | 'S')
        || matches!(
            (prev, tag),
            ('E', 'E') | ('E', 'I') | ('S', 'E') | ('S', 'I') | ('O', 'E') | ('O', 'I')
        )
        || (tag != 'O' && tag != '.' && prev_type != kind)
}

/// A token in seqeval's strict IOB2 scheme.
#[derive(Clone, Copy, PartialEq)]
enum Prefix {
    B,
    I,
    O,
}

/// seqeval's `Entities(..., scheme=IOB2)` on one sentence; a tag outside IOB2 is an error.
pub fn entities_strict_iob2(tags: &[&str]) -> std::result::Result<Vec<Entity>, String> {
    let parse = |t: &str| -> std::result::Result<(Prefix, String), String> {
        let prefix = match t.chars().next() {
            Some('B') => Prefix::B,
            Some('I') => Prefix::I,
            Some('O') => Prefix::O,
            _ => return Err(format!("tag `{t}` is not IOB2 (strict mode)")),
        };
        let kind = t[1..].trim_matches('-');
        Ok((
            prefix,
            if kind.is_empty() {
                "_".into()
            } else {
                kind.into()
            },
        ))
    };
    let mut tokens = tags
        .iter()
        .map(|t| parse(t))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    tokens.push((Prefix::O, "_".into()));
    let inside = |prev: &(Prefix, String), cur: &(Prefix, String)| {
        cur.0 == Prefix::I && matches!(prev.0, Prefix::B | Prefix::I) && prev.1 == cur.1
    };
    let mut entities = vec![];
    let mut i = 0;
    while i < tokens.len() {
        if tokens[i].0 == Prefix::B {
            let mut end = i + 1;
            while end < tokens.len() && inside(&tokens[end - 1], &tokens[end]) {
                end += 1;
            }
            // In IOB2 whatever stops an entity also ends it, so the entity is [i, end).
            entities.push((tokens[i].1.clone(), i, end - 1));
            i = end;
        } else {
            i += 1;
        }
    }
    Ok(entities)
}

/// Counts for one entity type.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Counts {
    pub true_positives: usize,
    /// Gold entities (the report's "support").
    pub gold: usize,
    pub predicted: usize,
}

impl Counts {
    pub fn precision(&self) -> f64 {
        ratio(self.true_positives, self.predicted)
    }
    pub fn recall(&self) -> f64 {
        ratio(self.true_positives, self.gold)
    }
    pub fn f1(&self) -> f64 {
        let (p, r) = (self.precision(), self.recall());
        if p + r == 0.0 {
            0.0
        } else {
            2.0 * p * r / (p + r)
        }
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// Precision / recall / F1 / support of one row of the report.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Row {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: usize,
}

impl From<Counts> for Row {
    fn from(c: Counts) -> Row {
        Row {
            precision: c.precision(),
            recall: c.recall(),
            f1: c.f1(),
            support: c.gold,
        }
    }
}

/// The entity-level evaluation of a set of sentences.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub per_type: BTreeMap<String, Row>,
    pub micro: Row,
    pub macro_avg: Row,
    pub weighted: Row,
}

impl Report {
    pub fn f1(&self) -> f64 {
        self.micro.f1
    }
}

/// Scores predicted against gold tag sequences, sentence by sentence (seqeval's micro average).
pub fn evaluate<S: AsRef<str>>(
    gold: &[Vec<S>],
    predicted: &[Vec<S>],
    mode: Matching,
) -> Result<Report> {
    if gold.len() != predicted.len() {
        return Err(Error::Internal(format!(
            "{} gold sentences but {} predicted",
            gold.len(),
            predicted.len()
        )));
    }
    for (i, (g, p)) in gold.iter().zip(predicted).enumerate() {
        if g.len() != p.len() {
            return Err(Error::Internal(format!(
                "sentence {}: {} gold tags but {} predicted",
                i + 1,
                g.len(),
                p.len()
            )));
        }
    }
    let (gold_entities, predicted_entities) = match mode {
        Matching::Default => (flat_entities(gold), flat_entities(predicted)),
        Matching::StrictIob2 => (strict_entities(gold)?, strict_entities(predicted)?),
    };
    let mut counts: BTreeMap<String, Counts> = BTreeMap::new();
    for e in &gold_entities {
        counts.entry(e.1.clone()).or_default().gold += 1;
    }
    for e in &predicted_entities {
        let c = counts.entry(e.1.clone()).or_default();
        c.predicted += 1;
        if gold_entities.contains(e) {
            c.true_positives += 1;
        }
    }
    let total = counts.values().fold(Counts::default(), |a, c| Counts {
        true_positives: a.true_positives + c.true_positives,
        gold: a.gold + c.gold,
        predicted: a.predicted + c.predicted,
    });
    let per_type: BTreeMap<String, Row> = counts
        .iter()
        .map(|(k, c)| (k.clone(), Row::from(*c)))
        .collect();
    let n = per_type.len().max(1) as f64;
    let macro_avg = Row {
        precision: per_type.values().map(|r| r.precision).sum::<f64>() / n,
        recall: per_type.values().map(|r| r.recall).sum::<f64>() / n,
        f1: per_type.values().map(|r| r.f1).sum::<f64>() / n,
        support: total.gold,
    };
    let weight = |f: fn(&Row) -> f64| {
        if total.gold == 0 {
            0.0
        } else {
            per_type
                .values()
                .map(|r| f(r) * r.support as f64)
                .sum::<f64>()
                / total.gold as f64
        }
    };
    let weighted = Row {
        precision: weight(|r| r.precision),
        recall: weight(|r| r.recall),
        f1: weight(|r| r.f1),
        support: total.gold,
    };
    Ok(Report {
        per_type,
        micro: total.into(),
        macro_avg,
        weighted,
    })
}

/// Entities keyed by (sentence, type, first, last).
type EntitySet = BTreeSet<(usize, String, usize, usize)>;

/// Default mode, as seqeval does it: all sentences joined with an `O` between them.
fn flat_entities<S: AsRef<str>>(sentences: &[Vec<S>]) -> EntitySet {
    let mut flat: Vec<&str> = vec![];
    for s in sentences {
        flat.extend(s.iter().map(|t| t.as_ref()));
        flat.push("O");
    }
    entities_default(&flat)
        .into_iter()
        .map(|(kind, a, b)| (0, kind, a, b))
        .collect()
}

/// Strict mode: entities per sentence.
fn strict_entities<S: AsRef<str>>(sentences: &[Vec<S>]) -> Result<EntitySet> {
    let mut set = EntitySet::new();
    for (i, s) in sentences.iter().enumerate() {
        let tags: Vec<&str> = s.iter().map(|t| t.as_ref()).collect();
        let found = entities_strict_iob2(&tags)
            .map_err(|m| Error::Spec(format!("sentence {}: {m}", i + 1)))?;
        set.extend(found.into_iter().map(|(kind, a, b)| (i, kind, a, b)));
    }
    Ok(set)
}

/// The report as a table in the layout of seqeval's `classification_report`.
pub fn format_report(report: &Report) -> String {
    let width = report
        .per_type
        .keys()
        .map(|k| k.len())
        .max()
        .unwrap_or(0)
        .max(12);
    let mut out = format!(
        "{:>width$}  {:>9} {:>9} {:>9} {:>9}\n\n",
        "", "precision", "recall", "f1-score", "support"
    );
    let row = |name: &str, r: &Row| {
        format!(
            "{name:>width$}  {:>9.4} {:>9.4} {:>9.4} {:>9}\n",
            r.precision, r.recall, r.f1, r.support
        )
    };
    for (k, r) in &report.per_type {
        out.push_str(&row(k, r));
    }
    out.push('\n');
    out.push_str(&row("micro avg", &report.micro));
    out.push_str(&row("macro avg", &report.macro_avg));
    out.push_str(&row("weighted avg", &report.weighted));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(s: &str) -> Vec<&str> {
        s.split(' ').collect()
    }

    #[test]
    fn default_mode_accepts_i_after_o_and_splits_on_type_change() {
        assert_eq!(
            entities_default(&tags("O I-PER I-PER B-LOC I-ORG O")),
            vec![
                ("PER".into(), 1, 2),
                ("LOC".into(), 3, 3),
                ("ORG".into(), 4, 4)
            ]
        );
    }

    #[test]
    fn strict_mode_ignores_i_without_b() {
        assert_eq!(
            entities_strict_iob2(&tags("O I-PER I-PER B-LOC I-LOC I-ORG")).unwrap(),
            vec![("LOC".into(), 3, 4)]
        );
        assert!(entities_strict_iob2(&tags("E-PER")).is_err());
    }
}
