//! The ops the model runs, each in two implementations chosen once per run:
//! - `fused` ([`cpu`]): CPU-only custom ops with their own backward passes and AVX-512 loops
//!   chosen at run time — the fast path on the CPU;
//! - `generic` ([`generic`]): standard candle ops differentiated by candle's autograd, which run
//!   on any device candle supports (CUDA included) and are the reference the fused ops are
//!   tested against.
//!
//! This layer is the only code that touches a CPU tensor's storage. The model calls the
//! dispatching functions below with the run's [`Kernels`]; nothing above this layer knows which
//! implementation ran.

pub(crate) mod adamw;
pub mod cpu;
pub mod device;
pub(crate) mod generic;
pub mod threads;

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};
pub use crate::util::precision::Precision;

/// The `--kernels` option: which implementation of the ops a command runs.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum KernelChoice {
    /// Fused on the CPU, generic on any other device.
    #[default]
    Auto,
    /// The fused CPU ops (CPU only).
    Fused,
    /// Standard candle ops (any device; slower on the CPU).
    Generic,
}

/// The implementation a run uses, resolved against its device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kernels {
    Fused,
    Generic,
}

impl KernelChoice {
    /// The kernels for `device`; the fused ops exist for the CPU only.
    pub fn resolve(self, device: &Device) -> Result<Kernels> {
        match (self, device.is_cpu()) {
            (KernelChoice::Auto | KernelChoice::Fused, true) => Ok(Kernels::Fused),
            (KernelChoice::Auto | KernelChoice::Generic, _) => Ok(Kernels::Generic),
            (KernelChoice::Fused, false) => Err(Error::Spec(format!(
                "--kernels fused runs on the CPU only; use --kernels auto or generic on {}",
                device::name(device)
            ))),
        }
    }
}

/// Where a command runs the model and with which kernels: `--device` and `--kernels`, the same
/// on every command that runs the model. Never part of a spec hash: the same work may run
/// (or resume) on another device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::Args)]
pub struct Compute {
    /// Where the model runs: cpu, cuda or cuda:N (a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: device::DeviceSpec,
    /// The ops' implementation: auto (fused on the CPU, generic elsewhere), fused (CPU only) or
    /// generic (standard candle ops, any device).
    #[arg(long, value_enum, default_value_t = KernelChoice::Auto)]
    pub kernels: KernelChoice,
}

impl Compute {
    /// Opens the device and resolves the kernels for it.
    pub fn open(self) -> Result<(Device, Kernels)> {
        let device = self.device.open()?;
        let kernels = self.kernels.resolve(&device)?;
        Ok((device, kernels))
    }
}

impl Kernels {
    /// The default for tensors on `device`: fused on the CPU, generic elsewhere.
    pub fn for_device(device: &Device) -> Kernels {
        if device.is_cpu() {
            Kernels::Fused
        } else {
            Kernels::Generic
        }
    }
}

/// Inverted-dropout multipliers (0 or 1/(1−p)) for one tensor: drawn on the host from the run's
/// generator when the tensor lives in RAM (the same masks for both kernels), or on the device by
/// its own generator, seeded once per step, so nothing is uploaded.
pub enum Multipliers {
    Host(Vec<f32>),
    Device(Tensor),
}

impl Multipliers {
    /// The multipliers as a tensor shaped like `like`.
    pub fn tensor(self, like: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Multipliers::Host(m) => Tensor::from_vec(m, like.shape(), like.device()),
            Multipliers::Device(t) => t.reshape(like.shape()),
        }
    }

    fn host(self, op: &str) -> candle_core::Result<Vec<f32>> {
        match self {
            Multipliers::Host(m) => Ok(m),
            Multipliers::Device(_) => {
                candle_core::bail!("{op}: fused kernels need host dropout masks")
            }
        }
    }
}

/// x · wᵀ (+ bias) for x [N, in], w [out, in], bias [out], in the given precision.
pub fn linear(
    k: Kernels,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    precision: Precision,
) -> candle_core::Result<Tensor> {
    match k {
        Kernels::Fused => cpu::linear::linear(x, w, bias, precision),
        Kernels::Generic => generic::linear(x, w, bias, precision),
    }
}

/// gelu(x · wᵀ + b), erf form (inference: the fused op applies it while the block is in cache).
pub fn linear_gelu(
    k: Kernels,
    x: &Tensor,
    w: &Tensor,
    bias: &Tensor,
    precision: Precision,
) -> candle_core::Result<Tensor> {
    match k {
        Kernels::Fused => cpu::linear::linear_gelu(x, w, bias, precision),
        Kernels::Generic => generic::gelu_erf(&generic::linear(x, w, Some(bias), precision)?),
    }
}

/// LayerNorm over the last dimension, with gradients for x, weight and bias.
pub fn layer_norm(
    k: Kernels,
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> candle_core::Result<Tensor> {
    match k {
        Kernels::Fused => cpu::ops::layer_norm(x, weight, bias, eps),
        Kernels::Generic => generic::layer_norm(x, weight, bias, eps),
    }
}

/// Softmax over the last dimension, with a gradient.
pub fn softmax_last_dim(k: Kernels, x: &Tensor) -> candle_core::Result<Tensor> {
    match k {
        Kernels::Fused => cpu::ops::softmax_last_dim(x),
        Kernels::Generic => generic::softmax_last_dim(x),
    }
}

/// GELU, erf form (HF's `gelu`), with a gradient.
pub fn gelu_erf(k: Kernels, x: &Tensor) -> candle_core::Result<Tensor> {
    match k {
        Kernels::Fused => cpu::ops::gelu_erf(x),
        Kernels::Generic => generic::gelu_erf(x),
    }
}

/// a ⊙ mask + r: dropout on a sub-block's output, then the residual connection.
pub fn dropout_residual(
    k: Kernels,
    a: &Tensor,
    mask: Multipliers,
    r: &Tensor,
) -> candle_core::Result<Tensor> {
    match k {
        Kernels::Fused => cpu::ops::scaled_add(a, mask.host("dropout-residual")?, r),
        Kernels::Generic => (a * mask.tensor(a)?)? + r,
    }
}

/// The key mask of a batch in the forms the attention implementations read.
pub struct KeyMask {
    /// [B, 1, 1, L]: 0 for real keys, a large negative number for padding.
    pub bias: Tensor,
    /// [B·L] on the host, 1 for real keys: only the fused attention reads it.
    pub host: Option<Vec<f32>>,
}

impl KeyMask {
    /// From a [B, L] mask of real tokens (1) and padding (0). The host copy is made only for the
    /// fused kernels (on the CPU it costs no transfer).
    pub fn new(k: Kernels, attention_mask: &Tensor) -> candle_core::Result<Self> {
        let (b, l) = attention_mask.dims2()?;
        let mask = attention_mask.to_dtype(candle_core::DType::F32)?;
        let host = match k {
            Kernels::Fused => Some(mask.flatten_all()?.to_vec1::<f32>()?),
            Kernels::Generic => None,
        };
        Ok(KeyMask {
            bias: ((&mask - 1.0)? * 1e9)?.reshape((b, 1, 1, l))?,
            host,
        })
    }
}

/// Self-attention of all heads: q, k, v [B, L, heads·d] → context [B, L, heads·d], with
/// gradients for q, k and v; `dropout` holds [B, heads, L, L] multipliers in training.
pub fn self_attention(
    k: Kernels,
    q: &Tensor,
    key: &Tensor,
    v: &Tensor,
    heads: usize,
    mask: &KeyMask,
    dropout: Option<Multipliers>,
) -> candle_core::Result<Tensor> {
    match k {
        Kernels::Fused => {
            let keys = match &mask.host {
                Some(keys) => keys,
                None => candle_core::bail!("fused attention: the key mask has no host copy"),
            };
            let dropout = dropout.map(|m| m.host("fused attention")).transpose()?;
            cpu::attention::self_attention(q, key, v, heads, keys, dropout)
        }
        Kernels::Generic => {
            let out = generic::attention(q, key, v, heads, &mask.bias, dropout, None, false)?;
            Ok(out.context)
        }
    }
}

/// Self-attention that also returns the probabilities [B, heads, L, L] (before dropout), for
/// attention matching and head gates; `gate` [heads] multiplies each head's context. Written
/// with per-head products in both implementations (the fused one computes the softmax with its
/// own kernel).
#[allow(clippy::too_many_arguments)]
pub fn self_attention_with_probs(
    k: Kernels,
    q: &Tensor,
    key: &Tensor,
    v: &Tensor,
    heads: usize,
    mask: &KeyMask,
    dropout: Option<Multipliers>,
    gate: Option<&Tensor>,
) -> candle_core::Result<generic::Attention> {
    let fused_softmax = k == Kernels::Fused;
    generic::attention(q, key, v, heads, &mask.bias, dropout, gate, fused_softmax)
}

/// A line for logs: the kernels, the precision and what runs the products.
pub fn describe(k: Kernels, precision: Precision, device: &Device) -> String {
    match (k, precision) {
        (Kernels::Fused, Precision::F32) => "fused kernels, f32".into(),
        (Kernels::Fused, Precision::Bf16) => format!(
            "fused kernels, bf16 linears ({})",
            cpu::bf16_gemm::Bf16Kernel::detect().describe()
        ),
        (Kernels::Generic, p) => format!(
            "generic kernels on {}, {}",
            device::name(device),
            match p {
                Precision::F32 => "f32",
                Precision::Bf16 => "bf16 linears",
            }
        ),
    }
}
