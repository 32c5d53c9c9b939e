//! Quoting user input in messages: a bad line or value may be megabytes long, so an error quotes
//! at most [`EXCERPT_CHARS`] characters of it and says how long it is.

/// How much of a bad line or value an error message quotes.
pub const EXCERPT_CHARS: usize = 200;

/// At most [`EXCERPT_CHARS`] characters of `text`, saying how long it really is when cut.
pub fn excerpt(text: &str) -> String {
    match text.char_indices().nth(EXCERPT_CHARS) {
        None => text.to_string(),
        Some((cut, _)) => format!("{}… ({} characters)", &text[..cut], text.chars().count()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_bad_line_is_quoted_in_part() {
        let long = "é".repeat(50_000);
        let e = excerpt(&long);
        assert!(e.chars().count() < 240, "{e}");
        assert!(e.ends_with("(50000 characters)"));
        assert_eq!(excerpt("short"), "short");
    }
}
