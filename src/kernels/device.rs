//! Devices: the `--device` option (`cpu`, `cuda`, `cuda:N`), opening one with an error that
//! says why it cannot be used, its generator's per-step seed, and its free memory.

use std::fmt;
use std::str::FromStr;

use candle_core::{Device, DeviceLocation};

use crate::error::{Error, Result};

/// Where a command runs the model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DeviceSpec {
    #[default]
    Cpu,
    /// The CUDA GPU with this ordinal (`cuda` is `cuda:0`).
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| format!("`{s}`: expected cpu, cuda or cuda:N")),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceSpec {
    /// Opens the device: a build without CUDA, or a GPU the driver cannot give, is the user's
    /// error (exit 2) with the reason.
    pub fn open(self) -> Result<Device> {
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(n) => open_cuda(n),
        }
    }
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(_ordinal: usize) -> Result<Device> {
    Err(Error::Spec(
        "this build has no CUDA support: rebuild with `--features cuda`".into(),
    ))
}

/// Opens a GPU. `SURGERY_TF32=1` lets cuBLAS run f32 products on TF32 tensor cores (10-bit
/// mantissas, f32 accumulation), as PyTorch's `allow_tf32` does.
#[cfg(feature = "cuda")]
fn open_cuda(ordinal: usize) -> Result<Device> {
    let device = Device::new_cuda(ordinal)
        .map_err(|e| Error::Spec(format!("--device cuda:{ordinal}: cannot use this GPU: {e}")))?;
    let tf32 = std::env::var("SURGERY_TF32").is_ok_and(|v| v == "1");
    candle_core::cuda::set_gemm_reduced_precision_f32(tf32);
    Ok(device)
}

/// `cpu`, `cuda:0`, …: the device as the option names it.
pub fn name(device: &Device) -> String {
    match device.location() {
        DeviceLocation::Cpu => "cpu".into(),
        DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// Seeds the device's own generator for one training step (dropout masks drawn on the device).
/// The seed comes from the run's generator, whose state is saved with `last/`, so a resumed
/// run draws the same masks. The CPU draws its masks from the run's generator directly.
pub fn seed_step(device: &Device, seed: u64) -> Result<()> {
    if device.is_cpu() {
        return Ok(());
    }
    device
        .set_seed(seed)
        .map_err(|e| Error::Internal(format!("seeding {}: {e}", name(device))))
}

/// The free memory of a GPU in bytes; None for the CPU (RAM is checked by `io::capacity`).
pub fn free_memory(device: &Device) -> Result<Option<u64>> {
    match device {
        Device::Cpu => Ok(None),
        #[cfg(feature = "cuda")]
        Device::Cuda(cuda) => {
            let (free, _total) = cuda.cuda_stream().context().mem_get_info().map_err(|e| {
                Error::Internal(format!("reading {}'s free memory: {e}", name(device)))
            })?;
            Ok(Some(free as u64))
        }
        #[allow(unreachable_patterns)]
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_parse_and_print() {
        for (s, d) in [
            ("cpu", DeviceSpec::Cpu),
            ("cuda", DeviceSpec::Cuda(0)),
            ("cuda:3", DeviceSpec::Cuda(3)),
        ] {
            assert_eq!(s.parse::<DeviceSpec>().unwrap(), d);
        }
        assert_eq!(DeviceSpec::Cuda(3).to_string(), "cuda:3");
        for bad in ["gpu", "cuda:", "cuda:x", "cuda:-1", "CPU"] {
            assert!(bad.parse::<DeviceSpec>().is_err(), "{bad}");
        }
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_is_a_user_error_that_says_how_to_get_it() {
        let e = DeviceSpec::Cuda(0).open().unwrap_err();
        assert!(e.is_user_error());
        assert!(
            e.to_string().contains("rebuild with `--features cuda`"),
            "{e}"
        );
    }
}
