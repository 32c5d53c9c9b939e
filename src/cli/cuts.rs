//! The surgery subcommands: read IN, apply, print the budget before → after, write OUT.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use surgery::arch::Arch;
use surgery::io::Checkpoint;
use surgery::surgery::{
    drop_layers, factorize_embeddings, lowrank_layers, prune_vocab, remove_heads, sparsegpt,
    tie_layers, Outcome, Planned,
};

use surgery::budget::group;

#[derive(Args)]
pub struct InOut {
    /// Input checkpoint folder (never modified).
    input: PathBuf,
    /// Output checkpoint folder (written atomically).
    output: PathBuf,
    /// Replace an existing output folder.
    #[arg(long)]
    force: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
pub enum SurgeryCommand {
    /// Factorize the word embeddings V×H into (V×E)(E×H) by truncated SVD.
    FactorizeEmbeddings {
        #[command(flatten)]
        io: InOut,
        #[command(flatten)]
        spec: factorize_embeddings::Spec,
    },
    /// Share weights across layers (ALBERT-style).
    TieLayers {
        #[command(flatten)]
        io: InOut,
        #[command(flatten)]
        spec: tie_layers::Spec,
    },
    /// Keep a subset of the encoder layers.
    DropLayers {
        #[command(flatten)]
        io: InOut,
        #[command(flatten)]
        spec: drop_layers::Spec,
    },
    /// Factorize encoder linears into two low-rank factors (plain or activation-aware SVD).
    LowrankLayers {
        #[command(flatten)]
        io: InOut,
        #[command(flatten)]
        spec: lowrank_layers::Spec,
    },
    /// One-shot pruning with Hessian-based OBS updates (unstructured or N:M).
    Sparsegpt {
        #[command(flatten)]
        io: InOut,
        #[command(flatten)]
        spec: sparsegpt::Spec,
    },
    /// Remove attention heads (named, below a gate threshold, or the least important).
    RemoveHeads {
        #[command(flatten)]
        io: InOut,
        #[command(flatten)]
        spec: remove_heads::Spec,
    },
    /// Keep only the word pieces a corpus uses (plus specials and single characters).
    PruneVocab {
        #[command(flatten)]
        io: InOut,
        #[command(flatten)]
        spec: prune_vocab::Spec,
    },
}

impl SurgeryCommand {
    /// What the surgery would do to the structure, without reading a tensor (for --dry-run).
    pub fn plan(&self, arch: &Arch) -> surgery::Result<Planned> {
        use Planned::Exact;
        Ok(match self {
            SurgeryCommand::FactorizeEmbeddings { spec, .. } => {
                Exact(factorize_embeddings::plan(arch, spec)?)
            }
            SurgeryCommand::TieLayers { spec, .. } => Exact(tie_layers::plan(arch, spec)?),
            SurgeryCommand::DropLayers { spec, .. } => Exact(drop_layers::plan(arch, spec)?),
            SurgeryCommand::LowrankLayers { spec, .. } => lowrank_layers::plan(arch, spec)?,
            SurgeryCommand::Sparsegpt { spec, .. } => Exact(sparsegpt::plan(arch, spec)?),
            SurgeryCommand::RemoveHeads { spec, .. } => remove_heads::plan(arch, spec)?,
            SurgeryCommand::PruneVocab { .. } => {
                Planned::Unknown("the kept word pieces depend on the corpus".into())
            }
        })
    }
}

pub fn run(command: SurgeryCommand) -> anyhow::Result<ExitCode> {
    match command {
        SurgeryCommand::FactorizeEmbeddings { io, spec } => {
            apply(io, |c| factorize_embeddings::apply(c, &spec))
        }
        SurgeryCommand::TieLayers { io, spec } => apply(io, |c| tie_layers::apply(c, &spec)),
        SurgeryCommand::DropLayers { io, spec } => apply(io, |c| drop_layers::apply(c, &spec)),
        SurgeryCommand::LowrankLayers { io, spec } => {
            apply(io, |c| lowrank_layers::apply(c, &spec))
        }
        SurgeryCommand::Sparsegpt { io, spec } => apply(io, |c| sparsegpt::apply(c, &spec)),
        SurgeryCommand::RemoveHeads { io, spec } => apply(io, |c| remove_heads::apply(c, &spec)),
        SurgeryCommand::PruneVocab { io, spec } => apply(io, |c| prune_vocab::apply(c, &spec)),
    }
}

fn apply(
    io: InOut,
    surgery: impl FnOnce(&Checkpoint) -> surgery::Result<Outcome>,
) -> anyhow::Result<ExitCode> {
    surgery::io::output::check_output(&io.output, &[&io.input], io.force)?;
    let input = Checkpoint::open(&io.input)?;
    let outcome = surgery(&input)?;
    outcome.save(&io.output, io.force)?;
    let e = &outcome.entry;
    if io.json {
        let out = serde_json::json!({"op": e.op, "args": e.args, "params_before": e.params_before,
            "params_after": e.params_after, "report": outcome.report, "output": io.output});
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        let change = 100.0 * (e.params_after as f64 / e.params_before as f64 - 1.0);
        println!(
            "{}: unique parameters {} → {} ({change:+.1}%)",
            e.op,
            group(e.params_before),
            group(e.params_after)
        );
        if let Some(map) = outcome.report.as_object() {
            for (k, v) in map {
                println!("  {k}: {v}");
            }
        }
        println!("wrote {}", io.output.display());
    }
    Ok(ExitCode::SUCCESS)
}
