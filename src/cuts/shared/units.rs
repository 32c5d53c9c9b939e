//! Physically removes structured units — attention heads and FFN neurons — from every kind of
//! linear: a head is d output rows of query, key and value and d input columns of the attention
//! output; a neuron is an output row of the intermediate linear and an input column of the output
//! linear. A low-rank linear loses the row of its `up` factor or the column of its `down` factor;
//! when the rank then exceeds the linear's smaller side it is multiplied out into a dense linear,
//! which is smaller and exact. A layer may keep no head or no neuron: its sub-block then adds only
//! its output bias to the residual. Shared stored layers are cut once, for every use.

use candle_core::{DType, Device, Tensor};

use crate::arch::{Arch, Key, LinearKind, LinearPart, LinearSlot, SparsePattern};
use crate::cuts::cpu;
use crate::error::{Error, Result};
use crate::io::Checkpoint;

/// The units each stored layer keeps (indices into its current heads and neurons, ascending).
#[derive(Debug, Clone, PartialEq)]
pub struct Keep {
    pub heads: Vec<Vec<usize>>,
    pub neurons: Vec<Vec<usize>>,
}

impl Keep {
    /// Every unit of the structure.
    pub fn all(arch: &Arch) -> Keep {
        Keep {
            heads: arch
                .layers
                .iter()
                .map(|l| (0..l.num_heads).collect())
                .collect(),
            neurons: arch
                .layers
                .iter()
                .map(|l| (0..l.intermediate).collect())
                .collect(),
        }
    }

    /// Stored layers left with no head, and with no neuron.
    pub fn emptied(&self, arch: &Arch) -> (Vec<usize>, Vec<usize>) {
        let empty = |units: &[Vec<usize>], size: &dyn Fn(usize) -> usize| {
            units
                .iter()
                .enumerate()
                .filter(|(s, k)| k.is_empty() && size(*s) > 0)
                .map(|(s, _)| s)
                .collect()
        };
        (
            empty(&self.heads, &|s| arch.layers[s].num_heads),
            empty(&self.neurons, &|s| arch.layers[s].intermediate),
        )
    }
}

/// The linears a head or a neuron runs through, and whether the unit is on their output side.
const HEAD_LINEARS: [(LinearSlot, bool); 4] = [
    (LinearSlot::Query, true),
    (LinearSlot::Key, true),
    (LinearSlot::Value, true),
    (LinearSlot::AttentionOutput, false),
];
const NEURON_LINEARS: [(LinearSlot, bool); 2] = [
    (LinearSlot::Intermediate, true),
    (LinearSlot::Output, false),
];

/// The structure after keeping `heads[s]` heads and `neurons[s]` neurons in each stored layer
/// (tensor-free; the plan of the surgeries that cut units).
pub fn arch_with_counts(arch: &Arch, heads: &[usize], neurons: &[usize]) -> Result<Arch> {
    let mut out = arch.clone();
    for (s, layer) in arch.layers.iter().enumerate() {
        if heads[s] > layer.num_heads || neurons[s] > layer.intermediate {
            return Err(Error::Internal(format!(
                "stored layer {s} has {} heads and {} neurons; cannot keep {} and {}",
                layer.num_heads, layer.intermediate, heads[s], neurons[s]
            )));
        }
        let cut_heads = heads[s] < layer.num_heads;
        let cut_neurons = neurons[s] < layer.intermediate;
        for (slot, output_side) in HEAD_LINEARS
            .iter()
            .filter(|_| cut_heads)
            .chain(NEURON_LINEARS.iter().filter(|_| cut_neurons))
        {
            if let LinearKind::Sparse {
                pattern: SparsePattern::NofM { n, m },
            } = layer.linear(*slot)
            {
                if !output_side {
                    return Err(Error::Spec(format!(
                        "stored layer {s} {} is {n}:{m} sparse along its inputs; removing its input columns would break the pattern (cut before sparsifying)",
                        slot.as_str()
                    )));
                }
            }
        }
        out.layers[s].num_heads = heads[s];
        out.layers[s].intermediate = neurons[s];
        // A low-rank linear whose rank no longer saves anything becomes dense (exact).
        for slot in LinearSlot::ALL {
            if let LinearKind::LowRank { rank } = out.layers[s].linear(slot) {
                let (o, i) = out.linear_shape(s, slot);
                if rank > o.min(i) {
                    out.layers[s].linears.remove(&slot);
                }
            }
        }
    }
    Ok(out)
}

/// The checkpoint with only the kept units.
pub fn cut(ckpt: &Checkpoint, keep: &Keep) -> Result<Checkpoint> {
    let arch = &ckpt.arch;
    let heads: Vec<usize> = keep.heads.iter().map(Vec::len).collect();
    let neurons: Vec<usize> = keep.neurons.iter().map(Vec::len).collect();
    let new_arch = arch_with_counts(arch, &heads, &neurons)?;
    let mut out = ckpt.clone();
    let d = arch.head_dim;
    for (s, layer) in arch.layers.iter().enumerate() {
        if heads[s] < layer.num_heads {
            let rows: Vec<usize> = keep.heads[s]
                .iter()
                .flat_map(|&h| h * d..(h + 1) * d)
                .collect();
            for (slot, output_side) in HEAD_LINEARS {
                cut_linear(ckpt, &mut out, &new_arch, s, slot, output_side, &rows)?;
            }
        }
        if neurons[s] < layer.intermediate {
            for (slot, output_side) in NEURON_LINEARS {
                cut_linear(
                    ckpt,
                    &mut out,
                    &new_arch,
                    s,
                    slot,
                    output_side,
                    &keep.neurons[s],
                )?;
            }
        }
    }
    out.set_arch(new_arch)?;
    // Equal FFN sizes everywhere: say so in the plain config, so that (with every head kept)
    // the output stays a vanilla BertConfig that other tools load.
    let sizes: Vec<usize> = out.arch.layers.iter().map(|l| l.intermediate).collect();
    if !sizes.is_empty() && sizes.iter().all(|&n| n == sizes[0] && n > 0) {
        out.config.intermediate_size = sizes[0];
    }
    Ok(out)
}

/// Whether the structure needs no `surgery` block to load (a vanilla BERT config).
pub fn is_vanilla(ckpt: &Checkpoint) -> bool {
    ckpt.arch.surgery_info(vec![], &ckpt.config).is_none()
}

/// Keeps `units` rows (output side) or columns (input side) of one linear.
fn cut_linear(
    ckpt: &Checkpoint,
    out: &mut Checkpoint,
    new_arch: &Arch,
    layer: usize,
    slot: LinearSlot,
    output_side: bool,
    units: &[usize],
) -> Result<()> {
    let key = |part| Key::Linear { layer, slot, part };
    let dim = if output_side { 0 } else { 1 };
    let now_dense = new_arch.layers[layer].linear(slot) == LinearKind::Dense;
    match ckpt.arch.layers[layer].linear(slot) {
        LinearKind::Dense | LinearKind::Sparse { .. } => {
            let w = select(cpu(ckpt, key(LinearPart::Weight))?, dim, units)?;
            out.set_tensor(key(LinearPart::Weight), w);
        }
        LinearKind::LowRank { .. } => {
            let (mut up, mut down) = (
                cpu(ckpt, key(LinearPart::Up))?,
                cpu(ckpt, key(LinearPart::Down))?,
            );
            if output_side {
                up = select(up, 0, units)?;
            } else {
                down = select(down, 1, units)?;
            }
            if now_dense {
                out.set_tensor(key(LinearPart::Weight), product(&up, &down)?);
            } else {
                out.set_tensor(key(LinearPart::Up), up);
                out.set_tensor(key(LinearPart::Down), down);
            }
        }
    }
    if output_side {
        let b = select(cpu(ckpt, key(LinearPart::Bias))?, 0, units)?;
        out.set_tensor(key(LinearPart::Bias), b);
    }
    Ok(())
}

/// up · down, empty when a side is empty.
fn product(up: &Tensor, down: &Tensor) -> Result<Tensor> {
    let (o, _) = up.dims2()?;
    let (_, i) = down.dims2()?;
    if o == 0 || i == 0 {
        return Ok(Tensor::zeros((o, i), DType::F32, &Device::Cpu)?);
    }
    Ok(up.matmul(down)?)
}

/// The given indices of `t` along `dim` (an empty selection gives a tensor with that dim 0).
fn select(t: Tensor, dim: usize, units: &[usize]) -> Result<Tensor> {
    if units.is_empty() {
        let mut shape = t.dims().to_vec();
        shape[dim] = 0;
        return Ok(Tensor::zeros(shape, DType::F32, &Device::Cpu)?);
    }
    let index: Vec<u32> = units.iter().map(|&u| u as u32).collect();
    let index = Tensor::from_vec(index, units.len(), &Device::Cpu)?;
    Ok(t.index_select(&index, dim)?.contiguous()?)
}

/// Adds the per-layer sizes and the layers left empty to a report.
pub(crate) fn describe_cut(
    report: &mut serde_json::Value,
    before: &Arch,
    keep: &Keep,
    out: &Checkpoint,
) {
    let after = &out.arch;
    let logical = |f: &dyn Fn(usize) -> usize| -> Vec<usize> {
        after.layer_map.iter().map(|&s| f(s)).collect()
    };
    report["heads_per_layer"] = logical(&|s| after.layers[s].num_heads).into();
    report["intermediate_per_layer"] = logical(&|s| after.layers[s].intermediate).into();
    let (no_heads, no_neurons) = keep.emptied(before);
    let mut notes = vec![];
    if !no_neurons.is_empty() {
        notes.push(format!(
            "stored layers {no_neurons:?} keep no FFN neuron: their FFN adds only its output bias to the residual"
        ));
    }
    if !no_heads.is_empty() {
        notes.push(format!(
            "stored layers {no_heads:?} keep no head: their attention adds only its output bias to the residual"
        ));
    }
    if before.layer_map.iter().enumerate().any(|(i, &s)| i != s) {
        notes.push(
            "layers share weights: a unit cut from a stored layer is cut from every layer using it"
                .into(),
        );
    }
    if after
        .layers
        .iter()
        .zip(&before.layers)
        .any(|(a, b)| a.linears != b.linears)
    {
        notes.push("low-rank linears whose rank exceeded their new size were multiplied out into dense ones".into());
    }
    notes.push(if is_vanilla(out) {
        "every layer keeps the same sizes: config.json is a plain BertConfig (loads in transformers)".into()
    } else {
        "per-layer sizes are in config.json's `surgery` block: surgery and its ONNX export load it, transformers' BertModel does not".into()
    });
    if !notes.is_empty() {
        report["notes"] = notes.into();
    }
}
