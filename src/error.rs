//! The library's typed errors. Every variant that comes from user input names the file (or the
//! option) and the problem, so the binary can print one line and exit with code 2.

use std::path::PathBuf;

/// Errors raised by the surgery library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a checkpoint folder (expected a directory with config.json and model.safetensors)")]
    NotADirectory { path: PathBuf },
    #[error("{path}: invalid safetensors file: {msg}")]
    Safetensors { path: PathBuf, msg: String },
    #[error("{path}: invalid config: {msg}")]
    Config { path: PathBuf, msg: String },
    #[error("{path}: missing tensor `{key}`")]
    MissingTensor { path: PathBuf, key: String },
    #[error("{path}: tensor `{key}` has shape {actual:?}, the config expects {expected:?}")]
    Shape {
        path: PathBuf,
        key: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
    #[error("{path}: tensor `{key}` has unsupported dtype {dtype} (supported: F32, F16, BF16)")]
    Dtype {
        path: PathBuf,
        key: String,
        dtype: String,
    },
    #[error("{path}: unexpected tensor `{key}` (not part of the architecture in config.json)")]
    UnexpectedTensor { path: PathBuf, key: String },
    #[error("{path}: output already exists (use --force to replace it)")]
    OutputExists { path: PathBuf },
    #[error(
        "{output}: the output is, contains or lies inside the input {input}; choose another path"
    )]
    OutputOverlapsInput { output: PathBuf, input: PathBuf },
    #[error("{path}: exists and was not written by surgery (no step.json, run.json, .surgery-output or config.json with a `surgery` block); refusing to replace it, even with --force")]
    NotOurs { path: PathBuf },
    #[error("{path}: exists and is not {kind}; refusing to replace it, even with --force (choose another path)")]
    NotSameKind { path: PathBuf, kind: &'static str },
    #[error("{path}: in use by {holder}; wait for it to finish or stop it")]
    Locked { path: PathBuf, holder: String },
    #[error("{path}: nothing to resume: {why}")]
    NothingToResume { path: PathBuf, why: String },
    /// Not enough memory or disk for what a command is about to do.
    #[error("{0}")]
    Resources(String),
    /// Training diverged (a non-finite loss): not the user's input, but no internal fault either.
    #[error("{0}")]
    Diverged(String),
    #[error("{path}: {msg}")]
    Tokenizer { path: PathBuf, msg: String },
    #[error("{path}:{line}: {msg}")]
    Input {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    #[error("{path}: {} problem(s):\n  - {}", problems.len(), problems.join("\n  - "))]
    Recipe {
        path: PathBuf,
        problems: Vec<String>,
    },
    /// A checkpoint or option the exporter cannot express in the requested format.
    #[error("{path}: cannot export: {msg}")]
    Unsupported { path: PathBuf, msg: String },
    /// A bad option value or specification given by the user.
    #[error("{0}")]
    Spec(String),
    /// A target no chain of cuts reaches (exit code 3, as a failed budget check).
    #[error("{0}")]
    Unreachable(String),
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// A fault of the tool itself (an invariant broken, a device that misbehaves): exit 1.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// True when the error is caused by the user's input (exit code 2), false for internal failures.
    pub fn is_user_error(&self) -> bool {
        !matches!(
            self,
            Error::Candle(_) | Error::Diverged(_) | Error::Internal(_)
        )
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
