//! Students for distillation: `init-student` writes a randomly initialised BERT of a given shape
//! with the teacher's tokenizer and labels; `plan` lists the shapes that fit a parameter budget.

use serde::Serialize;

use crate::arch::{Arch, EmbeddingKind, SurgeryInfo, SURGERY_FORMAT_VERSION};
use crate::budget::Budget;
use crate::error::{Error, Result};
use crate::io::Checkpoint;
use crate::model::generate::{attach_classifier, random_checkpoint};

/// The shape of a student.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::Args)]
pub struct Shape {
    #[arg(long, value_parser = crate::util::options::whole)]
    pub layers: usize,
    #[arg(long, value_parser = crate::util::options::positive)]
    pub hidden: usize,
    #[arg(long, value_parser = crate::util::options::positive)]
    pub heads: usize,
    #[arg(long, value_parser = crate::util::options::positive)]
    pub intermediate: usize,
    /// Factorize the word embeddings at this rank.
    #[arg(long, value_parser = crate::util::options::positive)]
    pub embedding_rank: Option<usize>,
}

/// The config of a student shaped `shape` that shares the teacher's vocabulary, positions,
/// labels and conventions.
fn student_config(
    teacher: &Checkpoint,
    shape: &Shape,
    vocab: usize,
) -> Result<crate::arch::BertConfig> {
    if shape.layers == 0 || shape.hidden == 0 || shape.heads == 0 || shape.intermediate == 0 {
        return Err(Error::Spec(
            "--layers, --hidden, --heads and --intermediate must be positive".into(),
        ));
    }
    if shape.hidden % shape.heads != 0 {
        return Err(Error::Spec(format!(
            "--hidden {} is not a multiple of --heads {}",
            shape.hidden, shape.heads
        )));
    }
    let mut config = teacher.config.clone();
    config.hidden_size = shape.hidden;
    config.num_hidden_layers = shape.layers;
    config.num_attention_heads = shape.heads;
    config.intermediate_size = shape.intermediate;
    config.vocab_size = vocab;
    config.surgery = shape.embedding_rank.map(|rank| SurgeryInfo {
        format_version: SURGERY_FORMAT_VERSION,
        embeddings: EmbeddingKind::Factorized { rank },
        ..Default::default()
    });
    Ok(config)
}

/// A random student with the teacher's tokenizer (or `vocab_from`'s) and the teacher's labels.
pub fn init_student(
    teacher: &Checkpoint,
    shape: &Shape,
    vocab_from: Option<&Checkpoint>,
    seed: u64,
) -> Result<Checkpoint> {
    let source = vocab_from.unwrap_or(teacher);
    let config = student_config(teacher, shape, source.arch.vocab)?;
    let mut student = random_checkpoint(config, teacher.arch.layout, false, false, 0.02, seed)?;
    student.tokenizer_files = source.tokenizer_files.clone();
    if let Some(labels) = teacher.classifier_labels() {
        attach_classifier(&mut student, &labels, 0.02, seed ^ 1)?;
    }
    Ok(student)
}

/// A candidate shape with its budget and a compute estimate.
#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    pub shape: Shape,
    pub unique_parameters: u64,
    /// Multiply-adds per token for a 32-token sentence (linears + attention), in millions.
    pub mflops_per_token: f64,
}

fn compute_per_token(arch: &Arch, budget: &Budget) -> f64 {
    let embedding_lookup = budget
        .components
        .iter()
        .find(|c| c.label == "word embeddings")
        .map_or(0, |c| c.unique);
    let projection = match arch.embeddings {
        EmbeddingKind::Factorized { rank } => (rank * arch.hidden) as u64,
        EmbeddingKind::Dense => 0,
    };
    let dense = budget.total - embedding_lookup + projection;
    let attention: usize = arch
        .layer_map
        .iter()
        .map(|&l| 2 * 32 * arch.layers[l].num_heads * arch.head_dim)
        .sum();
    (dense as f64 + attention as f64) / 1e6
}

/// Shapes (64-wide heads, FFN 4× hidden, optional embedding factorization) whose unique
/// parameters fit `budget`, the most compute first (more compute = more capacity).
pub fn plan(teacher: &Checkpoint, budget: u64) -> Result<Vec<Candidate>> {
    let mut out = vec![];
    let mut smallest: Option<(u64, Shape)> = None;
    let max_layers = teacher.arch.num_layers().max(12);
    for layers in 1..=max_layers {
        for hidden in [128, 192, 256, 320, 384, 448, 512, 576, 640, 768] {
            for rank in [None, Some(32), Some(64), Some(128), Some(256)] {
                if rank.is_some_and(|r| r >= hidden || r >= teacher.arch.vocab) {
                    continue;
                }
                let shape = Shape {
                    layers,
                    hidden,
                    heads: hidden / 64,
                    intermediate: 4 * hidden,
                    embedding_rank: rank,
                };
                let config = student_config(teacher, &shape, teacher.arch.vocab)?;
                let arch = Arch::resolve(
                    &config,
                    teacher.arch.layout,
                    false,
                    teacher.arch.num_labels.is_some(),
                )
                .map_err(Error::Spec)?;
                let b = Budget::of_arch(&arch);
                if smallest.is_none_or(|(p, _)| b.unique < p) {
                    smallest = Some((b.unique, shape));
                }
                if b.unique <= budget {
                    out.push(Candidate {
                        shape,
                        unique_parameters: b.unique,
                        mflops_per_token: compute_per_token(&arch, &b),
                    });
                }
            }
        }
    }
    if out.is_empty() {
        let (p, s) = smallest.expect("at least one shape");
        return Err(Error::Spec(format!(
            "no student shape fits {budget} parameters; the smallest considered has {p} ({} layer, hidden {}, embedding rank {:?})",
            s.layers, s.hidden, s.embedding_rank
        )));
    }
    out.sort_by(|a, b| {
        b.mflops_per_token
            .total_cmp(&a.mflops_per_token)
            .then(b.unique_parameters.cmp(&a.unique_parameters))
    });
    Ok(out)
}
