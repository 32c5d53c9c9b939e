//! A checkpoint folder: config + resolved [`Arch`] + lazily mapped tensors (+ tokenizer files).
//! Opening validates every tensor's shape against the structure before any compute; saving writes
//! a new folder atomically and never touches the input.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{Device, Tensor};

use super::atomic::AtomicDir;
use super::store::{StoredDtype, TensorStore};
use super::tensor_file::{write_safetensors, RawTensor};
use crate::arch::names::detect_layout;
use crate::arch::{Arch, BertConfig, HistoryEntry, Key, Layout, NormPart};
use crate::error::{Error, Result};

/// Tokenizer files carried from input to output unchanged.
const TOKENIZER_FILES: [&str; 4] = [
    "tokenizer.json",
    "vocab.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
];

/// A checkpoint in memory: tensors come from the mapped store unless a surgery replaced them.
#[derive(Clone)]
pub struct Checkpoint {
    /// The folder it was read from (None for a checkpoint built in memory).
    pub dir: Option<PathBuf>,
    pub config: BertConfig,
    pub arch: Arch,
    store: Option<Arc<TensorStore>>,
    /// Stored name of each key in `store`.
    stored_names: HashMap<Key, String>,
    /// Tensors set in memory (by a surgery or a trainer); they take precedence over the store.
    overrides: BTreeMap<Key, Tensor>,
    /// Stored tensors this tool does not use (e.g. `cls.predictions.*` of a pre-training head).
    pub ignored_tensors: Vec<String>,
    /// Tokenizer files by name (tokenizer.json, vocab.txt, ...).
    pub tokenizer_files: BTreeMap<String, Vec<u8>>,
}

impl Checkpoint {
    /// Opens and validates a checkpoint folder.
    pub fn open(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::NotADirectory {
                path: dir.to_path_buf(),
            });
        }
        let config_path = dir.join("config.json");
        let config = BertConfig::load(&config_path)?;
        let store = TensorStore::open_dir(dir)?;
        let family = config.family();
        let layout = detect_layout(family, store.names()).ok_or_else(|| {
            let name = |prefixed| Key::WordEmbeddings.name(Layout { family, prefixed });
            Error::Safetensors {
                path: store.main_path().to_path_buf(),
                msg: format!(
                    "expected exactly one of `{}` or `{}` (a {family:?} checkpoint, from config.json's model_type)",
                    name(false),
                    name(true)
                ),
            }
        })?;
        let has = |key: Key| {
            key.read_names(layout)
                .iter()
                .any(|n| store.info(n).is_some())
        };
        let arch = Arch::resolve(
            &config,
            layout,
            has(Key::Pooler(NormPart::Weight)),
            has(Key::Classifier(NormPart::Weight)),
        )
        .map_err(|msg| Error::Config {
            path: config_path.clone(),
            msg,
        })?;
        let stored_names = validate_tensors(&store, &arch)?;
        let used: std::collections::HashSet<&str> =
            stored_names.values().map(|s| s.as_str()).collect();
        let mut ignored_tensors = vec![];
        for name in store.names() {
            if used.contains(name) {
                continue;
            }
            match Key::parse(name, layout) {
                Some(Key::PositionIds) | None => ignored_tensors.push(name.to_string()),
                Some(_) => {
                    return Err(Error::UnexpectedTensor {
                        path: store.path_of(name).to_path_buf(),
                        key: name.to_string(),
                    })
                }
            }
        }
        let mut tokenizer_files = BTreeMap::new();
        for name in TOKENIZER_FILES {
            let path = dir.join(name);
            if path.is_file() {
                let bytes = super::text_input::read_bytes(&path, 1 << 30)?;
                tokenizer_files.insert(name.to_string(), bytes);
            }
        }
        if let Some(bytes) = tokenizer_files.get("tokenizer.json") {
            check_tokenizer_fits(&dir.join("tokenizer.json"), bytes, arch.vocab)?;
        }
        if arch.num_labels.is_some() {
            config.check_labels().map_err(|msg| Error::Config {
                path: config_path.clone(),
                msg,
            })?;
        }
        check_finite(&store, &stored_names)?;
        Ok(Checkpoint {
            dir: Some(dir.to_path_buf()),
            config,
            arch,
            store: Some(Arc::new(store)),
            stored_names,
            overrides: BTreeMap::new(),
            ignored_tensors,
            tokenizer_files,
        })
    }

    /// A checkpoint built in memory from a config and all of its tensors (used by generators and
    /// tests); shapes are validated like a loaded checkpoint's.
    pub fn from_tensors(
        config: BertConfig,
        layout: Layout,
        tensors: BTreeMap<Key, Tensor>,
    ) -> Result<Self> {
        let arch = Arch::resolve(
            &config,
            layout,
            tensors.contains_key(&Key::Pooler(NormPart::Weight)),
            tensors.contains_key(&Key::Classifier(NormPart::Weight)),
        )
        .map_err(Error::Spec)?;
        let ckpt = Checkpoint {
            dir: None,
            config,
            arch,
            store: None,
            stored_names: HashMap::new(),
            overrides: tensors,
            ignored_tensors: vec![],
            tokenizer_files: BTreeMap::new(),
        };
        ckpt.check_overrides()?;
        Ok(ckpt)
    }

    /// Where the checkpoint came from, for messages.
    pub fn source(&self) -> PathBuf {
        self.dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("<memory>"))
    }

    /// A parameter tensor as f32 on `device`.
    pub fn tensor(&self, key: Key, device: &Device) -> Result<Tensor> {
        if let Some(t) = self.overrides.get(&key) {
            return Ok(t.to_device(device)?);
        }
        let missing = || Error::MissingTensor {
            path: self.source(),
            key: key.name(self.arch.layout),
        };
        let store = self.store.as_ref().ok_or_else(missing)?;
        let name = self.stored_names.get(&key).ok_or_else(missing)?;
        store.load_f32(name, device)
    }

    /// Replaces (or adds) a tensor in memory.
    pub fn set_tensor(&mut self, key: Key, tensor: Tensor) {
        self.overrides.insert(key, tensor);
    }

    /// Replaces the structure; every tensor the new structure needs must then be available.
    pub fn set_arch(&mut self, arch: Arch) -> Result<()> {
        self.arch = arch;
        self.check_overrides()
    }

    /// Checks that every expected tensor is available with the right shape.
    fn check_overrides(&self) -> Result<()> {
        for (key, shape) in self.arch.expected_tensors() {
            let actual = match self.overrides.get(&key) {
                Some(t) => t.dims().to_vec(),
                None => match (self.stored_names.get(&key), &self.store) {
                    (Some(name), Some(store)) => store.info(name).expect("validated").shape.clone(),
                    _ => {
                        return Err(Error::MissingTensor {
                            path: self.source(),
                            key: key.name(self.arch.layout),
                        })
                    }
                },
            };
            if actual != shape {
                return Err(Error::Shape {
                    path: self.source(),
                    key: key.name(self.arch.layout),
                    expected: shape,
                    actual,
                });
            }
        }
        Ok(())
    }

    /// Number of non-zero entries of a tensor (reads its bytes).
    pub fn count_nonzero(&self, key: Key) -> Result<u64> {
        let t = self.tensor(key, &Device::Cpu)?;
        let values = t.flatten_all()?.to_vec1::<f32>()?;
        Ok(values.iter().filter(|v| **v != 0.0).count() as u64)
    }

    /// The labels of the token-classification head, when the checkpoint has one.
    pub fn classifier_labels(&self) -> Option<Vec<String>> {
        self.config
            .labels()
            .filter(|_| self.arch.num_labels.is_some())
    }

    /// The classifier's labels, or an error naming the checkpoint.
    pub fn require_labels(&self) -> Result<Vec<String>> {
        self.classifier_labels().ok_or_else(|| {
            Error::Spec(format!(
                "{}: the checkpoint has no classifier",
                self.source().display()
            ))
        })
    }

    /// The history recorded in config.json.
    pub fn history(&self) -> Vec<HistoryEntry> {
        self.config
            .surgery
            .as_ref()
            .map(|s| s.history.clone())
            .unwrap_or_default()
    }

    /// Writes the checkpoint to a new folder, atomically. `history` is the full history to record.
    /// A structure transformers' own classes cannot hold gets the transformers code beside it
    /// (see [`super::hf_code`]).
    pub fn save(&self, out: &Path, force: bool, history: Vec<HistoryEntry>) -> Result<()> {
        if let Some(dir) = &self.dir {
            super::output::check_no_overlap(out, &[dir])?;
        }
        let mut config = self.config.clone();
        config.num_hidden_layers = self.arch.num_layers();
        config.surgery = self.arch.surgery_info(history, &self.config);
        let remote_code = super::hf_code::prepare_config(&mut config, &self.arch);
        let folder = AtomicDir::create(out, force)?;
        folder.write("config.json", config.to_json().as_bytes())?;
        if remote_code {
            for (name, text) in super::hf_code::FILES {
                folder.write(name, text.as_bytes())?;
            }
        }

        let mut tensors = vec![];
        for (key, _) in self.arch.expected_tensors() {
            let t = self.tensor(key, &Device::Cpu)?;
            tensors.push((key.name(self.arch.layout), RawTensor::from_tensor(&t)?));
        }
        let mut metadata = HashMap::new();
        metadata.insert("format".to_string(), "pt".to_string());
        metadata.insert(
            "surgery_tool".to_string(),
            format!("surgery {}", env!("CARGO_PKG_VERSION")),
        );
        if let Some(info) = &config.surgery {
            metadata.insert(
                "surgery".to_string(),
                serde_json::to_string(info).expect("surgery info serialises"),
            );
        }
        write_safetensors(&folder.path("model.safetensors"), tensors, metadata)?;
        for (name, bytes) in &self.tokenizer_files {
            folder.write(name, bytes)?;
        }
        if let (Some(tokenizer), false) = (
            self.tokenizer_files.get("tokenizer.json"),
            self.tokenizer_files.contains_key("tokenizer_config.json"),
        ) {
            if let Some(text) = super::hf_code::tokenizer_config(tokenizer, self.arch.max_positions)
            {
                folder.write("tokenizer_config.json", text.as_bytes())?;
            }
        }
        super::output::mark(&folder.path(""), "checkpoint")?;
        folder.commit()
    }

    /// The stored dtype of a tensor when it comes from the file (for `inspect`).
    pub fn stored_dtype(&self, key: Key) -> Option<StoredDtype> {
        let name = self.stored_names.get(&key)?;
        Some(self.store.as_ref()?.info(name)?.dtype)
    }
}

/// Checks every expected tensor against the file: present (canonical or legacy name), float dtype,
/// the right shape. Returns the stored name of each key.
fn validate_tensors(store: &TensorStore, arch: &Arch) -> Result<HashMap<Key, String>> {
    let mut names = HashMap::new();
    for (key, shape) in arch.expected_tensors() {
        let name = key
            .read_names(arch.layout)
            .into_iter()
            .find(|n| store.info(n).is_some())
            .ok_or_else(|| Error::MissingTensor {
                path: store.main_path().to_path_buf(),
                key: key.name(arch.layout),
            })?;
        let info = store.info(&name).expect("found above");
        if info.dtype == StoredDtype::I64 {
            return Err(Error::Dtype {
                path: store.path_of(&name).to_path_buf(),
                key: name,
                dtype: "I64".into(),
            });
        }
        if info.shape != shape {
            return Err(Error::Shape {
                path: store.path_of(&name).to_path_buf(),
                key: name,
                expected: shape,
                actual: info.shape.clone(),
            });
        }
        names.insert(key, name);
    }
    Ok(names)
}

/// Every parameter must be finite: a NaN or infinite weight would otherwise flow silently into
/// F1 0, a NaN ONNX model or a surgery ranking by NaN. The scan reads the mapped bytes once
/// (tensors in parallel), so it costs about what loading the weights costs.
fn check_finite(store: &TensorStore, names: &HashMap<Key, String>) -> Result<()> {
    use rayon::prelude::*;
    let mut names: Vec<&String> = names.values().collect();
    names.sort();
    let bad = names
        .par_iter()
        .find_map_first(|name| store.first_non_finite(name).map(|i| (*name, i)));
    match bad {
        None => Ok(()),
        Some((name, index)) => Err(Error::Safetensors {
            path: store.path_of(name).to_path_buf(),
            msg: format!(
                "tensor `{name}` holds a NaN or infinite value (element {index}); the weights are damaged"
            ),
        }),
    }
}

/// The tokenizer may not produce ids beyond the embedding table (a larger one would fail deep
/// inside the model, or in ONNX Runtime after export). A smaller one is fine: tables are often
/// padded.
fn check_tokenizer_fits(path: &Path, bytes: &[u8], vocab: usize) -> Result<()> {
    let bad = |msg: String| Error::Tokenizer {
        path: path.to_path_buf(),
        msg,
    };
    let json: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| bad(format!("tokenizer.json is not valid JSON: {e}")))?;
    let model_ids: Vec<u64> = match json.pointer("/model/vocab") {
        // WordPiece, BPE, WordLevel: piece → id.
        Some(serde_json::Value::Object(map)) => map.values().filter_map(|v| v.as_u64()).collect(),
        // Unigram: [piece, score] in id order.
        Some(serde_json::Value::Array(items)) => (0..items.len() as u64).collect(),
        _ => vec![],
    };
    let added = json
        .get("added_tokens")
        .and_then(|a| a.as_array())
        .into_iter()
        .flatten()
        .filter_map(|t| t.get("id")?.as_u64());
    if let Some(max) = model_ids.into_iter().chain(added).max() {
        if max >= vocab as u64 {
            return Err(bad(format!(
                "the tokenizer has ids up to {max}, but the model's embeddings have {vocab} rows (vocab_size); the tokenizer belongs to another model"
            )));
        }
    }
    Ok(())
}
