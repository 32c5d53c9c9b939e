//! The label set: discovered from the training file (O first, then B-/I- per entity type in
//! alphabetical order), stored in the checkpoint's `id2label`, and used to map tags to ids.

use std::collections::{BTreeSet, HashMap};

use crate::data::Dataset;
use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct LabelSet {
    labels: Vec<String>,
    ids: HashMap<String, usize>,
}

/// What to do with a tag the label set does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnknownLabels {
    #[default]
    Error,
    /// Map it to `O`.
    Outside,
}

impl LabelSet {
    pub fn new(labels: Vec<String>) -> Result<Self> {
        let mut ids = HashMap::new();
        for (i, l) in labels.iter().enumerate() {
            if ids.insert(l.clone(), i).is_some() {
                return Err(Error::Spec(format!(
                    "label `{l}` appears twice in the label set"
                )));
            }
        }
        if labels.is_empty() {
            return Err(Error::Spec("the label set is empty".into()));
        }
        Ok(LabelSet { labels, ids })
    }

    /// The labels seen in a dataset, `O` first, then per type `B-X`, `I-X` (and any other
    /// prefixes) in alphabetical order of type.
    pub fn discover(data: &Dataset) -> Result<Self> {
        let seen: BTreeSet<&str> = data
            .sentences
            .iter()
            .flat_map(|s| s.tags.iter().map(|t| t.as_str()))
            .collect();
        let mut labels = vec!["O".to_string()];
        let mut rest: Vec<&str> = seen.into_iter().filter(|t| *t != "O").collect();
        rest.sort_by_key(|t| {
            let (prefix, kind) = t.split_once('-').unwrap_or(("", t));
            (kind.to_string(), prefix != "B", prefix.to_string())
        });
        labels.extend(rest.into_iter().map(String::from));
        Self::new(labels)
    }

    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// True when `other` holds exactly these labels, in any order.
    pub fn same_labels(&self, other: &[String]) -> bool {
        other.len() == self.labels.len() && other.iter().all(|l| self.ids.contains_key(l))
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn name(&self, id: usize) -> &str {
        &self.labels[id]
    }

    pub fn id(&self, tag: &str) -> Option<usize> {
        self.ids.get(tag).copied()
    }

    /// The first tag of a dataset outside this set, with its line (for error messages).
    pub fn first_unknown<'a>(&self, data: &'a Dataset) -> Option<(usize, &'a str)> {
        data.sentences.iter().find_map(|s| {
            s.tags.iter().enumerate().find_map(|(i, tag)| {
                let line = s.line + if data.one_word_per_line { i } else { 0 };
                self.id(tag).is_none().then_some((line, tag.as_str()))
            })
        })
    }

    /// Ids of every tag of a dataset; unknown tags are an error naming file:line, or `O`.
    pub fn encode(&self, data: &Dataset, unknown: UnknownLabels) -> Result<Vec<Vec<usize>>> {
        let outside = self.id("O");
        data.sentences
            .iter()
            .map(|s| {
                s.tags
                    .iter()
                    .enumerate()
                    .map(|(i, tag)| match (self.id(tag), unknown, outside) {
                        (Some(id), _, _) => Ok(id),
                        (None, UnknownLabels::Outside, Some(o)) => Ok(o),
                        _ => Err(Error::Input {
                            path: data.path.clone(),
                            line: s.line + if data.one_word_per_line { i } else { 0 },
                            msg: format!(
                                "tag `{tag}` is not in the label set ({}); use --unknown-labels o to map it to O",
                                self.labels.join(", ")
                            ),
                        }),
                    })
                    .collect()
            })
            .collect()
    }
}
