//! Bounded reading of the text files and streams a user hands in (data, sentences, passages,
//! score files): lines are read one at a time with a length limit, checked as UTF-8 as they come,
//! and the whole input has a size limit. A binary or endless input (`/dev/zero`, `/dev/urandom`,
//! a model file given as data) fails within its first megabyte with an error naming the file and
//! the line, instead of being read whole into memory.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The longest line accepted (a CoNLL line is a word and its tags; a JSONL line one sentence).
pub const MAX_LINE_BYTES: usize = 1 << 20;
/// The largest input accepted (CoNLL-2003's training set is 3.3 MB).
pub const MAX_FILE_BYTES: u64 = 1 << 30;
/// Lines of a reader, each checked as it is read; after an error it yields nothing more.
pub struct Lines<R> {
    reader: R,
    path: PathBuf,
    line: usize,
    total: u64,
    reject_nul: bool,
    failed: bool,
    /// The last line ended with a lone `\r`: a `\n` that follows it belongs to that line end.
    after_cr: bool,
}

impl Lines<BufReader<std::fs::File>> {
    /// The lines of a file.
    pub fn open(path: &Path) -> Result<Self> {
        if path.is_dir() {
            return Err(Error::Spec(format!(
                "{}: is a folder, expected a text file",
                path.display()
            )));
        }
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        Ok(Lines::new(BufReader::new(file), path))
    }
}

impl<R: BufRead> Lines<R> {
    /// The lines of any reader (standard input); `path` names it in errors.
    pub fn new(reader: R, path: &Path) -> Self {
        Lines {
            reader,
            path: path.to_path_buf(),
            line: 0,
            total: 0,
            reject_nul: true,
            failed: false,
            after_cr: false,
        }
    }

    /// Accepts NUL characters (raw text whose control characters are dropped later).
    pub fn allow_nul(mut self) -> Self {
        self.reject_nul = false;
        self
    }

    fn bad(&self, msg: String) -> Error {
        Error::Input {
            path: self.path.clone(),
            line: self.line,
            msg,
        }
    }

    /// Reads up to a line end (`\n`, `\r\n`, or a lone `\r` as classic Mac files end lines)
    /// or [`MAX_LINE_BYTES`] + 1 bytes. Returns the bytes consumed (0 at the end) and whether a
    /// line end was found. A `\r` is a line end at once (standard input must not wait for the
    /// next byte to know); a `\n` right after it is then skipped.
    fn read_raw(&mut self, buf: &mut Vec<u8>) -> std::io::Result<(usize, bool)> {
        let mut consumed = 0;
        loop {
            let available = self.reader.fill_buf()?;
            if available.is_empty() {
                return Ok((consumed, false));
            }
            if std::mem::take(&mut self.after_cr) && available[0] == b'\n' {
                self.reader.consume(1);
                self.total += 1;
                continue;
            }
            let room = MAX_LINE_BYTES + 1 - buf.len();
            match available
                .iter()
                .take(room)
                .position(|&b| b == b'\n' || b == b'\r')
            {
                Some(i) => {
                    self.after_cr = available[i] == b'\r';
                    buf.extend_from_slice(&available[..i]);
                    self.reader.consume(i + 1);
                    return Ok((consumed + i + 1, true));
                }
                None => {
                    let n = available.len().min(room);
                    buf.extend_from_slice(&available[..n]);
                    self.reader.consume(n);
                    consumed += n;
                    if buf.len() > MAX_LINE_BYTES {
                        return Ok((consumed, false));
                    }
                }
            }
        }
    }

    fn read_line(&mut self) -> Result<Option<String>> {
        let mut buf = Vec::new();
        let (n, ended) = self
            .read_raw(&mut buf)
            .map_err(|e| Error::io(&self.path, e))?;
        if n == 0 {
            return Ok(None);
        }
        self.line += 1;
        self.total += n as u64;
        if self.total > MAX_FILE_BYTES {
            return Err(self.bad(format!(
                "the input is larger than {} MiB, the most this tool reads",
                MAX_FILE_BYTES >> 20
            )));
        }
        if !ended && buf.len() > MAX_LINE_BYTES {
            return Err(self.bad(format!(
                "line is longer than {} MiB (a binary file?)",
                MAX_LINE_BYTES >> 20
            )));
        }
        if self.reject_nul && buf.contains(&0) {
            return Err(self.bad("holds a NUL byte (a binary file?)".into()));
        }
        String::from_utf8(buf)
            .map(Some)
            .map_err(|_| self.bad("not valid UTF-8 (a binary file?)".into()))
    }
}

impl<R: Read> Lines<BufReader<R>> {
    /// True when more input is already read and waiting (reading on would not block).
    pub fn has_buffered(&self) -> bool {
        !self.reader.buffer().is_empty()
    }
}

impl<R: BufRead> Iterator for Lines<R> {
    type Item = Result<String>;

    fn next(&mut self) -> Option<Result<String>> {
        if self.failed {
            return None;
        }
        let item = self.read_line().transpose();
        self.failed = matches!(item, Some(Err(_)));
        item
    }
}

/// A whole file of at most `limit` bytes (the files of a checkpoint folder: a tokenizer, an
/// index); a larger or endless one (a link to `/dev/zero`) is an error, not a read into memory.
pub fn read_bytes(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut bytes = vec![];
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > limit {
        return Err(Error::Input {
            path: path.to_path_buf(),
            line: 0,
            msg: format!(
                "larger than {} MiB, the most this tool reads of this file",
                limit >> 20
            ),
        });
    }
    Ok(bytes)
}

/// The text with every line ended by `\n`: a carriage return alone ends a line too (files saved
/// with classic Mac line endings), so that such a file is not read as one long line.
pub fn normalize_line_ends(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\r') {
        text.replace("\r\n", "\n").replace('\r', "\n").into()
    } else {
        text.into()
    }
}

/// A whole text file, read through [`Lines`] (line endings become `\n`).
pub fn read_text(path: &Path) -> Result<String> {
    let mut text = String::new();
    for line in Lines::open(path)? {
        text.push_str(&line?);
        text.push('\n');
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endless_zero_bytes_fail_within_the_line_limit() {
        let zeros = std::io::repeat(0).take(u64::MAX);
        let mut lines = Lines::new(BufReader::new(zeros), Path::new("/dev/zero"));
        let err = lines.next().unwrap().unwrap_err().to_string();
        assert!(err.contains("/dev/zero:1: line is longer than"), "{err}");
        assert!(lines.next().is_none());
    }

    #[test]
    fn random_bytes_fail_as_invalid_utf8_or_nul() {
        let mut state = 7u64;
        let bytes: Vec<u8> = (0..100_000)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                (state >> 56) as u8
            })
            .collect();
        let lines = Lines::new(&bytes[..], Path::new("r"));
        let errors: Vec<_> = lines.filter_map(|l| l.err()).collect();
        assert_eq!(errors.len(), 1);
    }

    #[test]
    fn lines_match_str_lines_and_nul_is_kept_when_allowed() {
        let text = "a b\r\nc\n\nd";
        let got: Vec<String> = Lines::new(text.as_bytes(), Path::new("t"))
            .map(|l| l.unwrap())
            .collect();
        assert_eq!(got, text.lines().collect::<Vec<_>>());
        // A lone carriage return ends a line too (classic Mac files), as in `normalize_line_ends`.
        let mac: Vec<String> = Lines::new("a\rb c\r\rd\r\ne".as_bytes(), Path::new("t"))
            .map(|l| l.unwrap())
            .collect();
        assert_eq!(mac, ["a", "b c", "", "d", "e"]);
        let raw = Lines::new("x\0y\n".as_bytes(), Path::new("t")).allow_nul();
        assert_eq!(raw.map(|l| l.unwrap()).collect::<Vec<_>>(), ["x\0y"]);
    }
}
