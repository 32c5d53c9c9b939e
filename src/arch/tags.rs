//! The syntax of an NER tag: `O`, or a scheme prefix (`B`, `I`, `E`, `S`, `L`, `U`), a dash and a
//! non-empty entity type. A tag outside it (`B`, `I-`, `PER`, `EU`) would otherwise become a class
//! of its own or an entity type made of one letter, silently.

/// Checks one tag; the error says what is wrong with it.
pub fn check_tag(tag: &str) -> Result<(), String> {
    if tag == "O" {
        return Ok(());
    }
    // Messages quote at most a few hundred characters of the tag.
    let shown = crate::util::excerpt::excerpt(tag);
    if tag.chars().any(|c| is_zero_width(c) || c.is_control()) {
        return Err(format!(
            "tag `{}` holds an invisible character",
            shown.escape_unicode()
        ));
    }
    match tag.split_once('-') {
        Some((prefix, kind)) if matches!(prefix, "B" | "I" | "E" | "S" | "L" | "U") => {
            if kind.is_empty() {
                Err(format!(
                    "tag `{shown}` has no entity type (expected {prefix}-TYPE)"
                ))
            } else {
                Ok(())
            }
        }
        _ if matches!(tag, "B" | "I" | "E" | "S" | "L" | "U") => Err(format!(
            "tag `{tag}` has no entity type (expected O or {tag}-TYPE)"
        )),
        _ => Err(format!(
            "tag `{shown}` is not O or PREFIX-TYPE with a prefix B, I, E, S, L or U"
        )),
    }
}

/// Characters that carry no text: a line made only of them and whitespace is a blank line.
pub fn is_blank(line: &str) -> bool {
    line.chars().all(|c| c.is_whitespace() || is_zero_width(c))
}

/// Byte-order mark, zero-width space, non-joiner, joiner and word joiner.
pub fn is_zero_width(c: char) -> bool {
    matches!(
        c,
        '\u{feff}' | '\u{200b}' | '\u{200c}' | '\u{200d}' | '\u{2060}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_need_a_prefix_and_a_type() {
        for good in ["O", "B-PER", "I-MISC", "E-X", "S-LOC", "B-a-b"] {
            assert!(check_tag(good).is_ok(), "{good}");
        }
        for bad in [
            "B",
            "I-",
            "PER",
            "EU",
            "b-PER",
            "",
            "-PER",
            "O-",
            "B-ORG\u{feff}",
        ] {
            assert!(check_tag(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn zero_width_lines_are_blank() {
        assert!(is_blank("\u{feff}"));
        assert!(is_blank(" \u{200b}\t"));
        assert!(!is_blank("\u{feff}EU B-ORG"));
    }
}
