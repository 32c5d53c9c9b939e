//! `surgery score`: entity scores of a file in conlleval's layout (last two columns: gold and
//! predicted tag; blank lines between sentences).

use std::path::Path;

use crate::data::tags::{check_tag, is_blank, is_zero_width};
use crate::error::{Error, Result};
use crate::metrics::{evaluate, Matching, Report};

/// Reads gold and predicted tags per sentence.
pub fn read_pairs(path: &Path) -> Result<(Vec<Vec<String>>, Vec<Vec<String>>)> {
    let text = crate::io::text_input::read_text(path)?;
    let (mut gold, mut pred) = (vec![], vec![]);
    let (mut g, mut p) = (vec![], vec![]);
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_start_matches(is_zero_width);
        let cols: Vec<&str> = if is_blank(line) {
            vec![]
        } else {
            line.split_whitespace().collect()
        };
        if cols.is_empty() || cols[0] == "-DOCSTART-" {
            if !g.is_empty() {
                gold.push(std::mem::take(&mut g));
                pred.push(std::mem::take(&mut p));
            }
            continue;
        }
        if cols.len() < 2 {
            return Err(Error::Input {
                path: path.to_path_buf(),
                line: i + 1,
                msg: "expected at least two columns: gold and predicted tag".into(),
            });
        }
        let (gold_tag, predicted_tag) = (cols[cols.len() - 2], cols[cols.len() - 1]);
        for tag in [gold_tag, predicted_tag] {
            check_tag(tag).map_err(|msg| Error::Input {
                path: path.to_path_buf(),
                line: i + 1,
                msg,
            })?;
        }
        g.push(gold_tag.to_string());
        p.push(predicted_tag.to_string());
    }
    if !g.is_empty() {
        gold.push(g);
        pred.push(p);
    }
    if gold.is_empty() {
        return Err(Error::Input {
            path: path.to_path_buf(),
            line: 0,
            msg: "no tagged lines".into(),
        });
    }
    Ok((gold, pred))
}

pub fn score_file(path: &Path, mode: Matching) -> Result<Report> {
    let (gold, pred) = read_pairs(path)?;
    evaluate(&gold, &pred, mode).map_err(|e| match e {
        Error::Spec(msg) => Error::Input {
            path: path.to_path_buf(),
            line: 0,
            msg,
        },
        other => other,
    })
}
