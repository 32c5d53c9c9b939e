//! factorize-embeddings: the word-embedding table W (V×H) becomes A (V×E) · B (E×H) from the
//! truncated SVD. A = U_E Σ_E and B = V_Eᵀ: B has orthonormal rows, so the projection preserves
//! norms and A's rows keep the scale of the original embeddings (LayerNorm and AdamW see the same
//! magnitudes as before); the balanced split √Σ on both sides has no such property.
//! ELECTRA's embedding block narrower than the encoder is already such a factorization (at rank
//! `embedding_size`, by `embeddings_project`): there the table is factorized within that width.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::Surgery;
use super::{cpu, Outcome, Planned};
use crate::arch::{Arch, EmbeddingKind, Key};
use crate::cuts::shared::linalg::{to_mat, to_tensor, truncated_svd};
use crate::error::{Error, Result};
use crate::io::Checkpoint;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Inner dimension E of the factorization (1 ≤ E < min(V, H)).
    #[arg(long, value_parser = crate::util::options::positive)]
    pub rank: usize,
}

/// The architecture after factorizing at `spec.rank` (checks the rank).
pub fn plan(arch: &Arch, spec: &Spec) -> Result<Arch> {
    let (v, h) = (arch.vocab, arch.embedding_size);
    let e = spec.rank;
    let width = if arch.has_embedding_projection() {
        format!(
            "embedding_size {h}, already projected to hidden {}",
            arch.hidden
        )
    } else {
        format!("hidden {h}")
    };
    if e == 0 || e >= v.min(h) {
        return Err(Error::Spec(format!(
            "--rank {e}: must be in 1..{} (below min(vocab {v}, {width}); a larger rank saves nothing)",
            v.min(h)
        )));
    }
    if let EmbeddingKind::Factorized { rank } = arch.embeddings {
        if e >= rank {
            return Err(Error::Spec(format!(
                "--rank {e}: the embeddings are already factorized at rank {rank}; only a smaller rank makes sense"
            )));
        }
    }
    let mut arch = arch.clone();
    arch.embeddings = EmbeddingKind::Factorized { rank: e };
    Ok(arch)
}

pub fn apply(ckpt: &Checkpoint, spec: &Spec) -> Result<Outcome> {
    let new_arch = plan(&ckpt.arch, spec)?;
    let e = spec.rank;
    let start = Instant::now();
    let layout = ckpt.arch.layout;
    let table = format!("`{}`", Key::WordEmbeddings.name(layout));
    let (dense, what) = match ckpt.arch.embeddings {
        EmbeddingKind::Dense => (cpu(ckpt, Key::WordEmbeddings)?, table),
        EmbeddingKind::Factorized { .. } => (
            cpu(ckpt, Key::WordEmbeddings)?.matmul(&cpu(ckpt, Key::WordProjection)?.t()?)?,
            format!(
                "{table} times `{}` (the factorized table multiplied out)",
                Key::WordProjection.name(layout)
            ),
        ),
    };
    let progress = crate::util::progress::Progress::new("svd of the word embeddings", 1, "tables");
    let svd = truncated_svd(to_mat(&dense)?.as_ref(), e, &what)?;
    progress.inc(1);
    progress.finish();
    let table = to_tensor(svd.left.as_ref())?;
    let projection = to_tensor(svd.right.as_ref())?; // width×E: the E→width linear's weight
    let mut out = ckpt.clone();
    out.set_tensor(Key::WordEmbeddings, table);
    out.set_tensor(Key::WordProjection, projection);
    out.set_arch(new_arch)?;
    let report = serde_json::json!({
        "rank": e,
        "relative_frobenius_error": svd.relative_error(e),
        "retained_energy": svd.retained_energy(e),
        "seconds": start.elapsed().as_secs_f64(),
    });
    Ok(Outcome::new(ckpt, out, Spec::NAME, spec, report))
}

impl Surgery for Spec {
    const NAME: &'static str = "factorize-embeddings";
    const ABOUT: &'static str =
        "Factorize the word embeddings V×H into (V×E)(E×H) by truncated SVD";
    const EXAMPLE: &'static [&'static str] = &["--rank", "5"];

    fn plan(&self, arch: &Arch) -> Result<Planned> {
        plan(arch, self).map(Planned::Exact)
    }

    fn apply(&self, ckpt: &Checkpoint) -> Result<Outcome> {
        apply(ckpt, self)
    }
}
