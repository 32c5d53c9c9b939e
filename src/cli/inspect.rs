//! `surgery inspect`: the budget table for people, JSON for scripts, and a budget check.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use serde::Serialize;

use surgery::arch::{EmbeddingKind, HistoryEntry};
use surgery::budget::flops::{Flops, DEFAULT_SEQ_LEN};
use surgery::budget::{group, parse_count, Budget};
use surgery::io::Checkpoint;
use surgery::util::exit::ExitStatus;

#[derive(Args)]
pub struct InspectArgs {
    /// Checkpoint folder.
    checkpoint: PathBuf,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
    /// Exit with code 3 when unique parameters exceed this budget (e.g. 20M, 750k, 20000000).
    #[arg(long, value_parser = parse_count)]
    budget: Option<u64>,
    /// The sequence length encoder FLOPs per token are counted at.
    #[arg(long, default_value_t = DEFAULT_SEQ_LEN, value_parser = surgery::util::options::seq_len)]
    seq_len: usize,
}

impl InspectArgs {
    /// Table output of one checkpoint, no budget check.
    pub fn for_checkpoint(checkpoint: PathBuf) -> Self {
        InspectArgs {
            checkpoint,
            json: false,
            budget: None,
            seq_len: DEFAULT_SEQ_LEN,
        }
    }
}

#[derive(Serialize)]
struct Report<'a> {
    checkpoint: String,
    layout: surgery::arch::Layout,
    hidden_size: usize,
    /// The embedding block's width (ELECTRA's `embedding_size`; otherwise `hidden_size`).
    embedding_size: usize,
    vocab_size: usize,
    num_layers: usize,
    embeddings: EmbeddingKind,
    num_labels: Option<usize>,
    budget: &'a Budget,
    /// Encoder FLOPs per token at `flops.seq_len` (matrix products of the layers).
    flops_per_token: u64,
    flops: &'a Flops,
    history: Vec<HistoryEntry>,
    ignored_tensors: &'a [String],
    budget_limit: Option<u64>,
    within_budget: Option<bool>,
}

pub fn run(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let ckpt = Checkpoint::open(&args.checkpoint)?;
    let budget = Budget::of_checkpoint(&ckpt)?;
    let within = args.budget.map(|limit| budget.unique <= limit);
    let flops = Flops::of_arch(&ckpt.arch, args.seq_len);
    if args.json {
        let report = Report {
            checkpoint: args.checkpoint.display().to_string(),
            layout: ckpt.arch.layout,
            hidden_size: ckpt.arch.hidden,
            embedding_size: ckpt.arch.embedding_size,
            vocab_size: ckpt.arch.vocab,
            num_layers: ckpt.arch.num_layers(),
            embeddings: ckpt.arch.embeddings,
            num_labels: ckpt.arch.num_labels,
            budget: &budget,
            flops_per_token: flops.per_token,
            flops: &flops,
            history: ckpt.history(),
            ignored_tensors: &ckpt.ignored_tensors,
            budget_limit: args.budget,
            within_budget: within,
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_tables(&args.checkpoint, &ckpt, &budget, &flops);
    }
    Ok(match args.budget {
        Some(limit) => check_budget(budget.unique, limit, args.json),
        None => ExitCode::SUCCESS,
    })
}

/// Prints the verdict; exit code 3 when over budget.
fn check_budget(unique: u64, limit: u64, quiet: bool) -> ExitCode {
    if unique > limit {
        eprintln!(
            "over budget: {} unique parameters > {} (by {})",
            group(unique),
            group(limit),
            group(unique - limit)
        );
        return ExitStatus::OverBudget.into();
    }
    if !quiet {
        println!(
            "within budget: {} ≤ {} ({} to spare)",
            group(unique),
            group(limit),
            group(limit - unique)
        );
    }
    ExitCode::SUCCESS
}

fn print_tables(path: &std::path::Path, ckpt: &Checkpoint, budget: &Budget, flops: &Flops) {
    let arch = &ckpt.arch;
    println!("checkpoint  {}", path.display());
    let mut embeddings = match arch.embeddings {
        EmbeddingKind::Dense => "dense".to_string(),
        EmbeddingKind::Factorized { rank } => format!("factorized, rank {rank}"),
    };
    if arch.has_embedding_projection() {
        embeddings.push_str(&format!(
            ", {} wide then projected to the hidden size",
            arch.embedding_size
        ));
    }
    println!(
        "structure   {} ({}), {} layers ({} stored), hidden {}, vocab {}, word embeddings {}, {}",
        ckpt.config
            .extra
            .get("model_type")
            .and_then(|v| v.as_str())
            .unwrap_or("bert"),
        arch.layout.label(),
        arch.num_layers(),
        arch.layers.len(),
        arch.hidden,
        arch.vocab,
        embeddings,
        match arch.num_labels {
            Some(n) => format!("classifier with {n} labels"),
            None => "no classifier".into(),
        }
    );
    println!();
    let sparse = budget.nonzero != budget.unique;
    let shared = budget.total != budget.unique;
    let mut header = format!("{:<30} {:>13}", "component", "unique");
    if shared {
        header.push_str(&format!(" {:>13}", "as executed"));
    }
    if sparse {
        header.push_str(&format!(" {:>13}", "non-zero"));
    }
    println!("{header}");
    for c in &budget.components {
        let mut row = format!("{:<30} {:>13}", c.label, group(c.unique));
        if shared {
            row.push_str(&format!(" {:>13}", group(c.total)));
        }
        if sparse {
            row.push_str(&format!(" {:>13}", group(c.nonzero)));
        }
        println!("{row}");
    }
    println!();
    println!(
        "{:<6} {:>6} {:>6} {:>12} {:>13} {:>13}  variants",
        "layer", "stored", "heads", "intermediate", "params", "FLOPs/token"
    );
    for l in &budget.layers {
        let params = if l.shared {
            format!("(shared) {}", group(l.params))
        } else {
            group(l.params)
        };
        let layer_flops = &flops.layers[l.layer];
        println!(
            "{:<6} {:>6} {:>6} {:>12} {:>13} {:>13}  {}",
            l.layer,
            l.stored,
            l.num_heads,
            l.intermediate,
            params,
            group(layer_flops.attention + layer_flops.ffn),
            l.variants.join(", ")
        );
    }
    println!();
    println!(
        "unique parameters           {:>13}  (token-classification model, pooler excluded; budgets are checked against this)",
        group(budget.unique)
    );
    if shared {
        println!(
            "as executed                 {:>13}  (shared layers counted per use)",
            group(budget.total)
        );
    }
    if sparse {
        println!("non-zero parameters         {:>13}", group(budget.nonzero));
    }
    println!(
        "stored, pooler included     {:>13}  (HF num_parameters() of the class as saved)",
        group(budget.stored_with_pooler)
    );
    println!(
        "encoder FLOPs per token     {:>13}  (matrix products of the layers at sequence length {}; --seq-len)",
        group(flops.per_token),
        flops.seq_len
    );
    let history = ckpt.history();
    if !history.is_empty() {
        println!();
        println!("history");
        for (i, h) in history.iter().enumerate() {
            println!(
                "  {}. {} {}  {} → {}",
                i + 1,
                h.op,
                h.args,
                group(h.params_before),
                group(h.params_after)
            );
        }
    }
    if !ckpt.ignored_tensors.is_empty() {
        println!();
        println!(
            "ignored tensors ({}): {}",
            ckpt.ignored_tensors.len(),
            ckpt.ignored_tensors.join(", ")
        );
    }
}
