//! Writing safetensors files from plain buffers (f32 and i64), used for checkpoints and for the
//! `forward` debugging output.

use std::collections::HashMap;
use std::path::Path;

use candle_core::Tensor;

use crate::error::{Error, Result};

/// One tensor ready to be written: dtype, shape and little-endian bytes.
pub struct RawTensor {
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl RawTensor {
    pub fn f32(shape: Vec<usize>, values: &[f32]) -> Self {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        RawTensor {
            dtype: safetensors::Dtype::F32,
            shape,
            bytes,
        }
    }

    pub fn i64(shape: Vec<usize>, values: &[i64]) -> Self {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        RawTensor {
            dtype: safetensors::Dtype::I64,
            shape,
            bytes,
        }
    }

    /// An f32 copy of a candle tensor.
    pub fn from_tensor(t: &Tensor) -> Result<Self> {
        let values = t
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        Ok(Self::f32(t.dims().to_vec(), &values))
    }
}

impl safetensors::View for RawTensor {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Serialises named tensors with metadata to `path` (callers make it atomic).
pub fn write_safetensors(
    path: &Path,
    tensors: Vec<(String, RawTensor)>,
    metadata: HashMap<String, String>,
) -> Result<()> {
    safetensors::tensor::serialize_to_file(tensors, Some(metadata), path).map_err(|e| match e {
        // A write failure (e.g. no space left on device) is reported as what it is.
        safetensors::SafeTensorError::IoError(source) => Error::io(path, source),
        other => Error::Safetensors {
            path: path.to_path_buf(),
            msg: other.to_string(),
        },
    })?;
    sort_metadata(path)?;
    set_default_permissions(path)
}

/// Rewrites the header with its metadata keys in sorted order: the safetensors crate writes
/// them in a hash map's random order, so two writes of the same model would differ in bytes.
/// The header keeps its length (the same keys and values), so only its bytes are rewritten.
fn sort_metadata(path: &Path) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|e| Error::io(path, e))?;
    let len = u64::from_le_bytes(len) as usize;
    let mut header = vec![0u8; len];
    file.read_exact(&mut header)
        .map_err(|e| Error::io(path, e))?;
    let internal = |msg: String| Error::Safetensors {
        path: path.to_path_buf(),
        msg,
    };
    let mut value: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| internal(e.to_string()))?;
    let Some(metadata) = value
        .get_mut("__metadata__")
        .and_then(|m| m.as_object_mut())
    else {
        return Ok(());
    };
    let mut sorted: Vec<(String, serde_json::Value)> =
        std::mem::take(metadata).into_iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    metadata.extend(sorted);
    let mut rewritten = serde_json::to_vec(&value).map_err(|e| internal(e.to_string()))?;
    if rewritten.len() > len {
        return Err(internal(
            "the sorted header is longer than the written one".into(),
        ));
    }
    // The crate pads the header with spaces to its alignment; so does this.
    rewritten.resize(len, b' ');
    file.seek(SeekFrom::Start(8))
        .map_err(|e| Error::io(path, e))?;
    file.write_all(&rewritten).map_err(|e| Error::io(path, e))
}

/// safetensors writes through a private temporary file (mode 0600); the file gets the mode every
/// other output has: 0666 less the process's umask (0644 under the usual umask 022).
fn set_default_permissions(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = 0o666 & !process_umask();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io(path, e))
}

/// The umask, read without changing it (`umask(2)` can only be read by setting it, which races
/// with other threads creating files); 022 when the kernel does not report it.
fn process_umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("Umask:"))?;
            u32::from_str_radix(line["Umask:".len()..].trim(), 8).ok()
        })
        .unwrap_or(0o022)
}
