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
    })
}
