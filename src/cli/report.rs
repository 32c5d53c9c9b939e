//! `surgery report`: a Markdown report with SVG plots from recipe and training run folders, and
//! optionally the generated table of docs/results.md.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use surgery::util::shell::shell_words;

/// Writes a Markdown report with SVG plots from recipe and training run folders.
#[derive(Args)]
pub struct ReportArgs {
    /// Recipe run folders (runs/<recipe>), training run folders, or folders of run folders.
    #[arg(required = true)]
    dirs: Vec<PathBuf>,
    /// Output folder for README.md and the plots.
    #[arg(long)]
    out: PathBuf,
    /// The reference model (a step or run name); default: the first model made from scratch.
    #[arg(long)]
    teacher: Option<String>,
    /// Also replace the generated section of this Markdown file (between
    /// `<!-- report:begin -->` and `<!-- report:end -->`) with the models table.
    #[arg(long)]
    results: Option<PathBuf>,
}

impl ReportArgs {
    pub fn new(dirs: Vec<PathBuf>, out: PathBuf) -> Self {
        ReportArgs {
            dirs,
            out,
            teacher: None,
            results: None,
        }
    }
}

pub fn report(args: ReportArgs) -> anyhow::Result<ExitCode> {
    let entries = surgery::pipeline::report::collect(&args.dirs)?;
    let mut command = vec!["surgery".to_string(), "report".to_string()];
    command.extend(args.dirs.iter().map(|d| d.display().to_string()));
    command.extend(["--out".into(), args.out.display().to_string()]);
    if let Some(t) = &args.teacher {
        command.extend(["--teacher".into(), t.clone()]);
    }
    if let Some(r) = &args.results {
        command.extend(["--results".into(), r.display().to_string()]);
    }
    let report = surgery::pipeline::report::build(
        &entries,
        args.teacher.as_deref(),
        &shell_words(&command),
    )?;
    // The report folder is rewritten on every run: it must not overlap a run it reads, and an
    // existing one must be a report this tool wrote.
    let reads: Vec<&std::path::Path> = args.dirs.iter().map(|d| d.as_path()).collect();
    surgery::io::output::check_no_overlap(&args.out, &reads)?;
    let real = surgery::io::output::absolute(&args.out);
    if real.exists() && !surgery::io::output::is_tool_output(&real) {
        return Err(surgery::Error::NotOurs { path: args.out }.into());
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    surgery::io::output::mark(&args.out, "report")?;
    let write = surgery::io::atomic::write_text;
    write(&args.out.join("README.md"), &report.markdown)?;
    for (name, svg) in &report.files {
        write(&args.out.join(name), svg)?;
    }
    if let Some(path) = &args.results {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let spliced = surgery::pipeline::report::splice(&text, &report.table).ok_or_else(|| {
            surgery::Error::Spec(format!(
                "{}: no `<!-- report:begin -->` … `<!-- report:end -->` section to replace",
                path.display()
            ))
        })?;
        write(path, &spliced)?;
        println!("updated {}", path.display());
    }
    println!(
        "wrote {} and {} plot(s) from {} entries",
        args.out.join("README.md").display(),
        report.files.len(),
        entries.len()
    );
    Ok(ExitCode::SUCCESS)
}
