//! Readers for CoNLL column files (token first, NER tag last; spaces or tabs; `-DOCSTART-`;
//! blank lines between sentences, including lines of only whitespace or zero-width characters) and
//! JSONL (`{"tokens": [...], "ner_tags": [...]}`). Every tag is checked (`O` or PREFIX-TYPE).

use std::path::{Path, PathBuf};

use super::tags::{self, is_zero_width};
use crate::error::{Error, Result};
use crate::util::excerpt::excerpt;

/// A sentence: words and their tags, and the 1-based line where it starts (for messages).
#[derive(Debug, Clone, PartialEq)]
pub struct Sentence {
    pub words: Vec<String>,
    pub tags: Vec<String>,
    pub line: usize,
}

#[derive(Debug, Clone)]
pub struct Dataset {
    pub path: PathBuf,
    pub sentences: Vec<Sentence>,
    /// CoNLL files hold one word per line (so word i of a sentence is on `line + i`).
    pub one_word_per_line: bool,
}

#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    /// Convert IOB1 tags (I- may start an entity) to IOB2.
    pub iob1_to_iob2: bool,
    /// Names for integer tags in JSONL files (`ner_tags` given as ids).
    pub tag_names: Option<Vec<String>>,
}

impl Dataset {
    pub fn num_words(&self) -> usize {
        self.sentences.iter().map(|s| s.words.len()).sum()
    }
}

/// Reads a CoNLL file, or a JSONL file when the name ends in `.jsonl`.
pub fn read_dataset(path: &Path, options: &ReadOptions) -> Result<Dataset> {
    if let Some(names) = &options.tag_names {
        check_tag_names(names)?;
    }
    let text = crate::io::text_input::read_text(path)?;
    let is_jsonl = path
        .extension()
        .is_some_and(|e| e == "jsonl" || e == "json");
    let mut sentences = if is_jsonl {
        parse_jsonl(path, &text, options)?
    } else {
        parse_conll(path, &text)?
    };
    if sentences.is_empty() {
        return Err(Error::Input {
            path: path.to_path_buf(),
            line: 0,
            msg: "no sentences found (empty file?)".into(),
        });
    }
    if options.iob1_to_iob2 {
        for s in &mut sentences {
            s.tags = iob1_to_iob2(&s.tags);
        }
    }
    Ok(Dataset {
        path: path.to_path_buf(),
        sentences,
        one_word_per_line: !is_jsonl,
    })
}

/// `--tag-names`: valid tags, each once (a repeated name would merge two classes silently).
fn check_tag_names(names: &[String]) -> Result<()> {
    let bad = |msg: String| Error::Spec(format!("--tag-names: {msg}"));
    for (i, name) in names.iter().enumerate() {
        tags::check_tag(name).map_err(bad)?;
        if names[..i].contains(name) {
            return Err(bad(format!("`{}` is given twice", excerpt(name))));
        }
    }
    Ok(())
}

fn parse_conll(path: &Path, text: &str) -> Result<Vec<Sentence>> {
    // Otherwise a file with carriage returns alone would be one line whose first and last
    // columns made one word.
    let text = crate::io::text_input::normalize_line_ends(text);
    let mut sentences = vec![];
    let mut current = Sentence {
        words: vec![],
        tags: vec![],
        line: 1,
    };
    let mut flush = |current: &mut Sentence, next_line: usize| {
        let done = std::mem::replace(
            current,
            Sentence {
                words: vec![],
                tags: vec![],
                line: next_line,
            },
        );
        if !done.words.is_empty() {
            sentences.push(done);
        }
    };
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.trim_start_matches(is_zero_width);
        if tags::is_blank(line) {
            flush(&mut current, line_no + 1);
            continue;
        }
        let columns: Vec<&str> = line.split_whitespace().collect();
        if columns[0] == "-DOCSTART-" {
            flush(&mut current, line_no + 1);
            continue;
        }
        if columns.len() < 2 {
            return Err(Error::Input {
                path: path.to_path_buf(),
                line: line_no,
                msg: format!(
                    "line has 1 column (`{}`); expected a token and a tag",
                    excerpt(columns[0])
                ),
            });
        }
        let tag = columns[columns.len() - 1];
        tags::check_tag(tag).map_err(|msg| Error::Input {
            path: path.to_path_buf(),
            line: line_no,
            msg,
        })?;
        if current.words.is_empty() {
            current.line = line_no;
        }
        current.words.push(columns[0].to_string());
        current.tags.push(tag.to_string());
    }
    flush(&mut current, 0);
    Ok(sentences)
}

fn parse_jsonl(path: &Path, text: &str, options: &ReadOptions) -> Result<Vec<Sentence>> {
    let mut sentences = vec![];
    for (i, line) in text.lines().enumerate() {
        if tags::is_blank(line) {
            continue;
        }
        let line = line.trim_start_matches(is_zero_width);
        let bad = |msg: String| Error::Input {
            path: path.to_path_buf(),
            line: i + 1,
            msg,
        };
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let tokens = value
            .get("tokens")
            .and_then(|t| t.as_array())
            .ok_or_else(|| bad("missing `tokens` array".into()))?;
        let tags = value
            .get("ner_tags")
            .and_then(|t| t.as_array())
            .ok_or_else(|| bad("missing `ner_tags` array".into()))?;
        if tokens.len() != tags.len() {
            return Err(bad(format!(
                "{} tokens but {} tags",
                tokens.len(),
                tags.len()
            )));
        }
        let words = tokens
            .iter()
            .map(|t| t.as_str().map(String::from))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad("`tokens` must be strings".into()))?;
        let tags = tags
            .iter()
            .map(|t| match (t.as_str(), t.as_u64(), &options.tag_names) {
                (Some(s), _, _) => Ok(s.to_string()),
                (None, Some(id), Some(names)) => names.get(id as usize).cloned().ok_or_else(|| {
                    bad(format!(
                        "tag id {id} is outside the {} known labels",
                        names.len()
                    ))
                }),
                (None, Some(id), None) => Err(bad(format!(
                    "integer tag {id} but no label names were given (--tag-names O,B-PER,I-PER,…)"
                ))),
                _ => Err(bad("`ner_tags` must be strings or integers".into())),
            })
            .collect::<Result<Vec<_>>>()?;
        for tag in &tags {
            tags::check_tag(tag).map_err(bad)?;
        }
        if !words.is_empty() {
            sentences.push(Sentence {
                words,
                tags,
                line: i + 1,
            });
        }
    }
    Ok(sentences)
}

/// IOB1 → IOB2: an `I-X` that does not continue an entity of type X becomes `B-X`.
pub fn iob1_to_iob2(tags: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(tags.len());
    for (i, tag) in tags.iter().enumerate() {
        let converted = match tag.strip_prefix("I-") {
            Some(kind) => {
                let continues = i > 0 && {
                    let prev = &tags[i - 1];
                    prev.get(2..) == Some(kind) && prev != "O"
                };
                if continues {
                    tag.clone()
                } else {
                    format!("B-{kind}")
                }
            }
            None => tag.clone(),
        };
        out.push(converted);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    #[test]
    fn iob1_entities_get_a_b_prefix_where_they_start() {
        assert_eq!(
            iob1_to_iob2(&tags("I-PER I-PER O I-LOC B-LOC I-ORG I-ORG")),
            tags("B-PER I-PER O B-LOC B-LOC B-ORG I-ORG")
        );
    }

    #[test]
    fn conll_columns_docstart_and_blank_lines() {
        let text = "-DOCSTART- -X- -X- O\n\nUN NNP B-NP B-ORG\nvotes\tVBZ\tO\n\n\nPeter B-PER\r\n";
        let s = parse_conll(Path::new("x"), text).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].words, vec!["UN", "votes"]);
        assert_eq!(s[0].tags, vec!["B-ORG", "O"]);
        assert_eq!(s[0].line, 3);
        assert_eq!(s[1].tags, vec!["B-PER"]);
        assert_eq!(s[1].line, 7);
        // The same lines ended by a carriage return alone, or by CRLF.
        for ending in ["\r", "\r\n"] {
            let other = parse_conll(
                Path::new("x"),
                &text.replace("\r\n", "\n").replace('\n', ending),
            );
            assert_eq!(other.unwrap(), s, "{ending:?}");
        }
    }
}
