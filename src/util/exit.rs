//! The exit statuses of the `surgery` command, in one place.

use std::process::ExitCode;

/// What a command's exit status means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Success = 0,
    /// An internal failure, or a run that diverged: not the user's input.
    Failure = 1,
    /// The user's input: a bad path, file, option or value (clap's usage errors exit 2 too).
    UserError = 2,
    /// A budget check failed (`inspect --budget`, `assert-budget`, a recipe's dry run).
    OverBudget = 3,
}

impl From<ExitStatus> for ExitCode {
    fn from(status: ExitStatus) -> ExitCode {
        ExitCode::from(status as u8)
    }
}

impl crate::error::Error {
    /// The exit status this error ends the command with.
    pub fn exit_status(&self) -> ExitStatus {
        if matches!(self, crate::error::Error::Unreachable(_)) {
            ExitStatus::OverBudget
        } else if self.is_user_error() {
            ExitStatus::UserError
        } else {
            ExitStatus::Failure
        }
    }
}
