//! Memory-mapped safetensors storage: one file or a sharded `model.safetensors.index.json`.
//! Opening reads only the headers (validated against the file size); tensor bytes are touched
//! only when a tensor is requested.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use memmap2::Mmap;

use crate::error::{Error, Result};

/// The element type of a stored tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredDtype {
    F32,
    F16,
    BF16,
    /// Integer buffers such as `position_ids`: readable for inspection, never a parameter.
    I64,
}

impl StoredDtype {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "F32" => Some(Self::F32),
            "F16" => Some(Self::F16),
            "BF16" => Some(Self::BF16),
            "I64" => Some(Self::I64),
            _ => None,
        }
    }
    pub fn size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::I64 => 8,
        }
    }
}

/// Where one tensor lives.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub dtype: StoredDtype,
    pub shape: Vec<usize>,
    file: usize,
    start: usize,
    end: usize,
}

struct MappedFile {
    path: PathBuf,
    map: Mmap,
    data_start: usize,
}

/// Read-only access to the tensors of a checkpoint.
pub struct TensorStore {
    files: Vec<MappedFile>,
    tensors: BTreeMap<String, TensorInfo>,
    /// `__metadata__` of the first file.
    pub metadata: BTreeMap<String, String>,
}

/// Reads an entire safetensors header without mapping the data.
#[derive(serde::Deserialize)]
struct RawEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: (usize, usize),
}

impl TensorStore {
    /// Opens `model.safetensors` or, when absent, the sharded index in `dir`.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        if single.is_file() {
            Self::open_files(&[single])
        } else if index.is_file() {
            let text = super::text_input::read_bytes(&index, 256 << 20)?;
            let value: serde_json::Value =
                serde_json::from_slice(&text).map_err(|e| Error::Safetensors {
                    path: index.clone(),
                    msg: format!("index is not valid JSON: {e}"),
                })?;
            let map = value
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| Error::Safetensors {
                    path: index.clone(),
                    msg: "index has no `weight_map` object".into(),
                })?;
            let mut shards: Vec<PathBuf> = vec![];
            for file in map.values() {
                let file = file.as_str().ok_or_else(|| Error::Safetensors {
                    path: index.clone(),
                    msg: "`weight_map` values must be file names".into(),
                })?;
                // A shard is a file of this folder: `../x` or `/etc/x` would read outside it.
                let plain = matches!(
                    Path::new(file).components().collect::<Vec<_>>().as_slice(),
                    [std::path::Component::Normal(_)]
                );
                if !plain {
                    return Err(Error::Safetensors {
                        path: index.clone(),
                        msg: format!(
                            "`weight_map` names the shard `{}`, which is not a file name in this folder",
                            crate::util::excerpt::excerpt(file)
                        ),
                    });
                }
                let path = dir.join(file);
                if !shards.contains(&path) {
                    shards.push(path);
                }
            }
            if shards.is_empty() {
                return Err(Error::Safetensors {
                    path: index.clone(),
                    msg: "`weight_map` names no tensor".into(),
                });
            }
            Self::open_files(&shards)
        } else {
            let msg = if dir.join("model.onnx").is_file() {
                "no model.safetensors: this folder is an ONNX export (model.onnx), which runs in ONNX Runtime; surgery commands read the checkpoint it was exported from"
            } else {
                "no model.safetensors (nor model.safetensors.index.json)"
            };
            Err(Error::Io {
                path: single,
                source: std::io::Error::new(std::io::ErrorKind::NotFound, msg),
            })
        }
    }

    /// Opens one or more safetensors files; a tensor name present twice is an error.
    pub fn open_files(paths: &[PathBuf]) -> Result<Self> {
        let mut store = TensorStore {
            files: vec![],
            tensors: BTreeMap::new(),
            metadata: BTreeMap::new(),
        };
        for path in paths {
            let file = File::open(path).map_err(|e| Error::io(path, e))?;
            // SAFETY: the map is read-only; checkpoints are not modified while the tool runs
            // (the tool itself never writes into an input folder).
            let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
            let (data_start, entries, metadata) = parse_header(path, &map)?;
            if store.files.is_empty() {
                store.metadata = metadata;
            }
            let index = store.files.len();
            for (name, mut info) in entries {
                info.file = index;
                if store.tensors.insert(name.clone(), info).is_some() {
                    return Err(Error::Safetensors {
                        path: path.clone(),
                        msg: format!("tensor `{name}` is stored twice"),
                    });
                }
            }
            store.files.push(MappedFile {
                path: path.clone(),
                map,
                data_start,
            });
        }
        Ok(store)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> + Clone {
        self.tensors.keys().map(|s| s.as_str())
    }

    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name)
    }

    /// The file a tensor is stored in (for error messages).
    pub fn path_of(&self, name: &str) -> &Path {
        let file = self.tensors.get(name).map_or(0, |t| t.file);
        &self.files[file].path
    }

    /// The first file (for error messages about the store as a whole).
    pub fn main_path(&self) -> &Path {
        &self.files[0].path
    }

    /// The raw little-endian bytes of a tensor.
    pub fn bytes(&self, name: &str) -> Option<&[u8]> {
        let info = self.tensors.get(name)?;
        let f = &self.files[info.file];
        Some(&f.map[f.data_start + info.start..f.data_start + info.end])
    }

    /// The index of the first NaN or infinite value of a floating-point tensor, read straight
    /// from the mapped bytes (an exponent of all ones), without converting anything.
    pub fn first_non_finite(&self, name: &str) -> Option<usize> {
        let info = self.tensors.get(name)?;
        let bytes = self.bytes(name)?;
        match info.dtype {
            StoredDtype::F32 => first_all_ones::<4>(bytes, 0x7f80_0000),
            StoredDtype::F16 => first_all_ones::<2>(bytes, 0x7c00),
            StoredDtype::BF16 => first_all_ones::<2>(bytes, 0x7f80),
            StoredDtype::I64 => None,
        }
    }

    /// Loads a floating-point tensor as f32 on `device` (f16/bf16 are widened).
    pub fn load_f32(&self, name: &str, device: &Device) -> Result<Tensor> {
        let info = self.tensors.get(name).ok_or_else(|| Error::MissingTensor {
            path: self.main_path().to_path_buf(),
            key: name.to_string(),
        })?;
        let bytes = self.bytes(name).expect("info exists");
        let dtype = match info.dtype {
            StoredDtype::F32 => DType::F32,
            StoredDtype::F16 => DType::F16,
            StoredDtype::BF16 => DType::BF16,
            StoredDtype::I64 => {
                return Err(Error::Dtype {
                    path: self.path_of(name).to_path_buf(),
                    key: name.to_string(),
                    dtype: "I64 (a buffer, not a parameter)".into(),
                })
            }
        };
        let tensor = Tensor::from_raw_buffer(bytes, dtype, &info.shape, device)?;
        Ok(tensor.to_dtype(DType::F32)?)
    }
}

/// The index of the first little-endian element of `W` bytes whose `mask` bits are all set.
/// Blocks are first tested without branching (the compiler vectorises that), so the scan runs
/// at memory speed and only a block with a hit is searched element by element.
fn first_all_ones<const W: usize>(bytes: &[u8], mask: u32) -> Option<usize> {
    let value = |b: &[u8]| {
        if W == 4 {
            u32::from_le_bytes([b[0], b[1], b[2], b[3]])
        } else {
            u32::from(u16::from_le_bytes([b[0], b[1]]))
        }
    };
    const BLOCK: usize = 4096;
    for (i, block) in bytes.chunks(BLOCK * W).enumerate() {
        let hit = block
            .chunks_exact(W)
            .fold(false, |any, b| any | (value(b) & mask == mask));
        if hit {
            let j = block
                .chunks_exact(W)
                .position(|b| value(b) & mask == mask)?;
            return Some(i * BLOCK + j);
        }
    }
    None
}

type Header = (usize, Vec<(String, TensorInfo)>, BTreeMap<String, String>);

/// Parses and validates a safetensors header: JSON, known dtypes, offsets inside the file, byte
/// lengths matching the shapes.
fn parse_header(path: &Path, bytes: &[u8]) -> Result<Header> {
    let bad = |msg: String| Error::Safetensors {
        path: path.to_path_buf(),
        msg,
    };
    if bytes.len() < 8 {
        return Err(bad(format!(
            "file is {} bytes, too short for a header (truncated?)",
            bytes.len()
        )));
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    if n > bytes.len() - 8 {
        return Err(bad(format!(
            "header length {n} exceeds the file size {} (truncated?)",
            bytes.len()
        )));
    }
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + n])
            .map_err(|e| bad(format!("header is not valid JSON: {e}")))?;
    let data_start = 8 + n;
    let data_len = bytes.len() - data_start;
    let mut metadata = BTreeMap::new();
    let mut entries = vec![];
    for (name, value) in header {
        if name == "__metadata__" {
            if let Some(obj) = value.as_object() {
                for (k, v) in obj {
                    if let Some(s) = v.as_str() {
                        metadata.insert(k.clone(), s.to_string());
                    }
                }
            }
            continue;
        }
        let raw: RawEntry = serde_json::from_value(value)
            .map_err(|e| bad(format!("bad header entry for `{name}`: {e}")))?;
        let dtype = StoredDtype::parse(&raw.dtype).ok_or_else(|| Error::Dtype {
            path: path.to_path_buf(),
            key: name.clone(),
            dtype: raw.dtype.clone(),
        })?;
        let (start, end) = raw.data_offsets;
        if end > data_len || start > end {
            return Err(bad(format!(
                "tensor `{name}` spans bytes {start}..{end} but the data section has {data_len} bytes (truncated?)"
            )));
        }
        let expected = raw
            .shape
            .iter()
            .try_fold(dtype.size(), |n, &d| n.checked_mul(d))
            .ok_or_else(|| {
                bad(format!(
                    "tensor `{name}` has shape {:?}, more bytes than a file can hold",
                    raw.shape
                ))
            })?;
        if end - start != expected {
            return Err(bad(format!(
                "tensor `{name}` has {} bytes, shape {:?} needs {expected}",
                end - start,
                raw.shape
            )));
        }
        entries.push((
            name,
            TensorInfo {
                dtype,
                shape: raw.shape,
                file: 0,
                start,
                end,
            },
        ));
    }
    check_contiguous(&entries, data_len).map_err(bad)?;
    Ok((data_start, entries, metadata))
}

/// The tensors' byte ranges must tile the data section exactly, as the safetensors format
/// requires (its own reader refuses anything else): overlapping ranges would make two tensors
/// share bytes, and a gap or trailing bytes mean the file is not what its header says.
fn check_contiguous(
    entries: &[(String, TensorInfo)],
    data_len: usize,
) -> std::result::Result<(), String> {
    let mut ranges: Vec<(usize, usize, &str)> = entries
        .iter()
        .map(|(name, t)| (t.start, t.end, name.as_str()))
        .collect();
    ranges.sort();
    let mut at = 0;
    for (start, end, name) in ranges {
        if start != at {
            return Err(if start < at {
                format!("tensor `{name}` starts at byte {start}, inside the previous tensor (overlapping data_offsets)")
            } else {
                format!("bytes {at}..{start} before tensor `{name}` belong to no tensor")
            });
        }
        at = end;
    }
    if at != data_len {
        return Err(format!(
            "{} trailing bytes after the last tensor (the header describes {at} of {data_len} data bytes)",
            data_len - at
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_values_are_found_in_every_float_dtype() {
        let mut values = vec![1.5f32; 10_000];
        assert_eq!(first_all_ones::<4>(&bytes_of(&values), 0x7f80_0000), None);
        for (at, bad) in [
            (9_000, f32::NAN),
            (4_096, f32::INFINITY),
            (3, f32::NEG_INFINITY),
        ] {
            values[at] = bad;
            assert_eq!(
                first_all_ones::<4>(&bytes_of(&values), 0x7f80_0000),
                Some(at)
            );
        }
        let halves = |v: half::f16| v.to_le_bytes().repeat(5_000);
        assert_eq!(first_all_ones::<2>(&halves(half::f16::MAX), 0x7c00), None);
        assert_eq!(
            first_all_ones::<2>(&halves(half::f16::NAN), 0x7c00),
            Some(0)
        );
        let mut b = half::bf16::MAX.to_le_bytes().repeat(5_000);
        assert_eq!(first_all_ones::<2>(&b, 0x7f80), None);
        b[2 * 4_500..2 * 4_501].copy_from_slice(&half::bf16::INFINITY.to_le_bytes());
        assert_eq!(first_all_ones::<2>(&b, 0x7f80), Some(4_500));
    }

    fn bytes_of(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }
}
