//! Progress of long work (training, calibration, SVD and Hessian work, export): on a terminal a
//! bar with the stage, the count, the rate and an ETA (indicatif); elsewhere (a log file, CI) a
//! plain line at most every few seconds and at the end; with `--quiet` ([`set_quiet`]) neither.
//! Progress goes to stderr, so standard output stays the command's result.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

static QUIET: AtomicBool = AtomicBool::new(false);

/// Turns every progress display off (`--quiet`).
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// Whether progress is turned off.
pub fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// How progress is shown right now: a bar on a terminal, log lines elsewhere, or nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Display {
    Bar,
    Lines,
    Quiet,
}

impl Display {
    pub fn current() -> Display {
        if quiet() {
            Display::Quiet
        } else if std::io::stderr().is_terminal() {
            Display::Bar
        } else {
            Display::Lines
        }
    }
}

/// The least time between two plain progress lines.
const LINE_EVERY: Duration = Duration::from_secs(10);

/// One stage of long work with a known number of units (`total`, in `unit`s).
pub struct Progress {
    stage: String,
    unit: &'static str,
    total: u64,
    start: Instant,
    bar: Option<ProgressBar>,
    /// Plain lines: units done and when the last line was written (None when not writing lines).
    lines: Option<Mutex<(u64, Instant)>>,
}

impl Progress {
    /// Starts a stage of `total` units.
    pub fn new(stage: impl Into<String>, total: u64, unit: &'static str) -> Progress {
        Self::with_display(stage, total, unit, Display::current())
    }

    /// Starts a stage shown the given way (tests use it to see the plain lines).
    pub fn with_display(
        stage: impl Into<String>,
        total: u64,
        unit: &'static str,
        display: Display,
    ) -> Progress {
        let stage = stage.into();
        let now = Instant::now();
        let bar = (display == Display::Bar).then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:24}] {pos}/{len} {msg} ({rate}, ETA {eta})",
                )
                .expect("a valid template")
                .with_key(
                    "rate",
                    |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                        let _ = write!(w, "{:.1}/s", state.per_sec());
                    },
                )
                .progress_chars("=> "),
            );
            bar.set_prefix(stage.clone());
            bar.set_message(unit);
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        let lines = (display == Display::Lines).then(|| Mutex::new((0, now)));
        Progress {
            stage,
            unit,
            total,
            start: now,
            bar,
            lines,
        }
    }

    /// Adds `n` done units.
    pub fn inc(&self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
        if let Some(lines) = &self.lines {
            let mut state = lines.lock().unwrap_or_else(|e| e.into_inner());
            state.0 += n;
            let now = Instant::now();
            if now.duration_since(state.1) >= LINE_EVERY && state.0 < self.total {
                state.1 = now;
                eprintln!("{}", self.line(state.0, None));
            }
        }
    }

    /// Replaces the bar's note (a bar only: plain lines carry the counts).
    pub fn set_message(&self, message: impl Into<String>) {
        if let Some(bar) = &self.bar {
            bar.set_message(message.into());
        }
    }

    /// Prints a line above the bar (or plainly without one); nothing when quiet.
    pub fn println(&self, line: impl AsRef<str>) {
        match &self.bar {
            Some(bar) => bar.println(line.as_ref()),
            None if !quiet() => eprintln!("{}", line.as_ref()),
            None => {}
        }
    }

    /// The plain line for `done` units: stage, count, rate and the time left (or taken).
    fn line(&self, done: u64, finished: Option<Duration>) -> String {
        let elapsed = self.start.elapsed().as_secs_f64();
        let rate = done as f64 / elapsed.max(1e-9);
        match finished {
            Some(took) => format!(
                "{}: {done}/{} {} in {} ({})",
                self.stage,
                self.total,
                self.unit,
                format_duration(took.as_secs_f64()),
                format_rate(rate, self.unit)
            ),
            None => {
                let left = self.total.saturating_sub(done) as f64 / rate.max(1e-9);
                format!(
                    "{}: {done}/{} {} ({}, ETA {})",
                    self.stage,
                    self.total,
                    self.unit,
                    format_rate(rate, self.unit),
                    format_duration(left)
                )
            }
        }
    }

    /// Ends the stage: the bar is cleared, plain output gets a closing line.
    pub fn finish(self) {
        drop(self);
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        if let Some(lines) = self.lines.take() {
            let (done, _) = lines.into_inner().unwrap_or_else(|e| e.into_inner());
            eprintln!("{}", self.line(done, Some(self.start.elapsed())));
        }
    }
}

fn format_rate(rate: f64, unit: &str) -> String {
    if rate >= 1.0 || rate == 0.0 {
        format!("{rate:.1} {unit}/s")
    } else {
        format!("{:.1} s per unit", 1.0 / rate)
    }
}

/// `1h02m`, `3m05s`, `12s`.
pub fn format_duration(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_lines_carry_the_stage_the_count_and_the_rate() {
        let p = Progress::with_display("svd", 4, "linears", Display::Lines);
        p.inc(2);
        let line = p.line(2, None);
        assert!(
            line.starts_with("svd: 2/4 linears (") && line.contains("ETA"),
            "{line}"
        );
        let done = p.line(4, Some(Duration::from_secs(75)));
        assert!(done.starts_with("svd: 4/4 linears in 1m15s"), "{done}");
    }

    #[test]
    fn durations_read_as_hours_minutes_seconds() {
        assert_eq!(format_duration(12.4), "12s");
        assert_eq!(format_duration(185.0), "3m05s");
        assert_eq!(format_duration(3720.0), "1h02m");
    }
}
