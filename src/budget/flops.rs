//! Encoder FLOPs per token: the matrix products of the transformer layers at a stated sequence
//! length (2 FLOPs per multiply-add), the quantity structured pruning trades against accuracy.
//! Counted: the six linears of each logical layer (a shared layer counts once per use; low-rank
//! linears as their two factors; sparse linears as dense, since they run dense) and the two
//! attention products Q·Kᵀ and P·V, whose cost per token grows with the sequence length.
//! Not counted: embeddings, the classifier, biases, softmax, GELU and LayerNorm (elementwise, a
//! few percent of the total).

use serde::Serialize;

use crate::arch::{Arch, LinearKind, LinearSlot};

/// The sequence length FLOPs are stated at unless the user picks another.
pub const DEFAULT_SEQ_LEN: usize = 128;

/// FLOPs and parameters one head or one FFN neuron of a stored layer costs.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct UnitCost {
    /// Encoder FLOPs per token, over every use of the stored layer.
    pub flops: u64,
    /// Stored parameters (once, however many layers share them).
    pub params: u64,
}

/// Encoder FLOPs per token of one logical layer, by part.
#[derive(Debug, Clone, Serialize)]
pub struct LayerFlops {
    pub layer: usize,
    pub attention: u64,
    pub ffn: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Flops {
    pub seq_len: usize,
    pub layers: Vec<LayerFlops>,
    /// Encoder FLOPs per token (the sum over layers).
    pub per_token: u64,
}

impl Flops {
    pub fn of_arch(arch: &Arch, seq_len: usize) -> Flops {
        let layers: Vec<LayerFlops> = arch
            .layer_map
            .iter()
            .enumerate()
            .map(|(layer, &stored)| {
                let linear = |slot| linear_flops(arch, stored, slot);
                let width = (arch.layers[stored].num_heads * arch.head_dim) as u64;
                let attention = linear(LinearSlot::Query)
                    + linear(LinearSlot::Key)
                    + linear(LinearSlot::Value)
                    + linear(LinearSlot::AttentionOutput)
                    + 4 * width * seq_len as u64;
                let ffn = linear(LinearSlot::Intermediate) + linear(LinearSlot::Output);
                LayerFlops {
                    layer,
                    attention,
                    ffn,
                }
            })
            .collect();
        let per_token = layers.iter().map(|l| l.attention + l.ffn).sum();
        Flops {
            seq_len,
            layers,
            per_token,
        }
    }
}

/// FLOPs per token of one linear of a stored layer.
fn linear_flops(arch: &Arch, stored: usize, slot: LinearSlot) -> u64 {
    let (out, inp) = arch.linear_shape(stored, slot);
    2 * match arch.layers[stored].linear(slot) {
        LinearKind::Dense | LinearKind::Sparse { .. } => out * inp,
        LinearKind::LowRank { rank } => rank * (out + inp),
    } as u64
}

/// What one unit (a row of the linear's output or a column of its input) of a linear costs:
/// FLOPs per use and parameters. A low-rank linear loses a row of one factor.
fn unit_of_linear(arch: &Arch, stored: usize, slot: LinearSlot, output_side: bool) -> UnitCost {
    let (out, inp) = arch.linear_shape(stored, slot);
    let other = if output_side { inp } else { out };
    let per_unit = match arch.layers[stored].linear(slot) {
        LinearKind::Dense | LinearKind::Sparse { .. } => other,
        LinearKind::LowRank { rank } => rank,
    } as u64;
    UnitCost {
        flops: 2 * per_unit,
        // An output unit also owns its bias entry.
        params: per_unit + output_side as u64,
    }
}

/// The cost of one head of stored layer `stored`: d rows of query, key and value, d columns of
/// the attention output, and its share of the attention products, times the layer's uses.
pub fn head_cost(arch: &Arch, stored: usize, seq_len: usize) -> UnitCost {
    let d = arch.head_dim as u64;
    let mut cost = UnitCost::default();
    for (slot, output_side) in [
        (LinearSlot::Query, true),
        (LinearSlot::Key, true),
        (LinearSlot::Value, true),
        (LinearSlot::AttentionOutput, false),
    ] {
        let unit = unit_of_linear(arch, stored, slot, output_side);
        cost.flops += d * unit.flops;
        cost.params += d * unit.params;
    }
    cost.flops += 4 * d * seq_len as u64;
    cost.flops *= uses(arch, stored);
    cost
}

/// The cost of one FFN neuron of stored layer `stored`: a row of the intermediate linear and a
/// column of the output linear, times the layer's uses.
pub fn neuron_cost(arch: &Arch, stored: usize) -> UnitCost {
    let a = unit_of_linear(arch, stored, LinearSlot::Intermediate, true);
    let b = unit_of_linear(arch, stored, LinearSlot::Output, false);
    UnitCost {
        flops: (a.flops + b.flops) * uses(arch, stored),
        params: a.params + b.params,
    }
}

/// How many logical layers run stored layer `stored`.
pub fn uses(arch: &Arch, stored: usize) -> u64 {
    arch.layer_map.iter().filter(|&&s| s == stored).count() as u64
}
