//! `surgery init-student` and `surgery plan`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use surgery::budget::parse_count;
use surgery::io::Checkpoint;
use surgery::model::student::{init_student, plan, Shape};

use surgery::budget::group;

#[derive(Args)]
pub struct InitStudentArgs {
    /// Output folder.
    out: PathBuf,
    /// The teacher whose tokenizer, labels and conventions the student takes.
    #[arg(long)]
    like: PathBuf,
    #[command(flatten)]
    shape: Shape,
    /// Take the tokenizer (and vocabulary size) from this checkpoint instead (e.g. a pruned one).
    #[arg(long)]
    vocab_from: Option<PathBuf>,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[arg(long)]
    force: bool,
}

pub fn init(args: InitStudentArgs) -> anyhow::Result<ExitCode> {
    let mut inputs = vec![args.like.as_path()];
    inputs.extend(args.vocab_from.as_deref());
    surgery::io::output::check_output(&args.out, &inputs, args.force)?;
    let teacher = Checkpoint::open(&args.like)?;
    let vocab_from = args
        .vocab_from
        .as_deref()
        .map(Checkpoint::open)
        .transpose()?;
    let student = init_student(&teacher, &args.shape, vocab_from.as_ref(), args.seed)?;
    let budget = surgery::budget::Budget::of_arch(&student.arch);
    let entry = surgery::arch::HistoryEntry {
        op: "init-student".into(),
        args: serde_json::to_value(args.shape)?,
        params_before: surgery::budget::Budget::of_arch(&teacher.arch).unique,
        params_after: budget.unique,
    };
    student.save(&args.out, args.force, vec![entry])?;
    println!(
        "wrote {} ({} unique parameters)",
        args.out.display(),
        group(budget.unique)
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct PlanArgs {
    /// The teacher (vocabulary, labels and positions are taken from it).
    teacher: PathBuf,
    /// Unique-parameter budget, e.g. 4.2M or 20M.
    #[arg(long, value_parser = parse_count)]
    budget: u64,
    /// How many shapes to list.
    #[arg(long, default_value_t = 10)]
    top: usize,
    #[arg(long)]
    json: bool,
}

pub fn plan_cmd(args: PlanArgs) -> anyhow::Result<ExitCode> {
    let teacher = Checkpoint::open(&args.teacher)?;
    let candidates = plan(&teacher, args.budget)?;
    let shown = &candidates[..candidates.len().min(args.top)];
    if args.json {
        println!("{}", serde_json::to_string_pretty(shown)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{} shapes fit {} unique parameters; the {} with the most compute per token:",
        candidates.len(),
        group(args.budget),
        shown.len()
    );
    println!(
        "{:>6} {:>6} {:>5} {:>12} {:>9} {:>13} {:>10}",
        "layers", "hidden", "heads", "intermediate", "emb-rank", "params", "MFLOP/tok"
    );
    for c in shown {
        let s = c.shape;
        let rank = s.embedding_rank.map_or("-".to_string(), |r| r.to_string());
        println!(
            "{:>6} {:>6} {:>5} {:>12} {:>9} {:>13} {:>10.1}",
            s.layers,
            s.hidden,
            s.heads,
            s.intermediate,
            rank,
            group(c.unique_parameters),
            c.mflops_per_token
        );
    }
    Ok(ExitCode::SUCCESS)
}
