//! The teacher's word logits over the training set: computed once in eval mode, optionally
//! cached on disk (keyed by the teacher's files and the data), and refused when they are not
//! finite — computed by a broken teacher, or read from a damaged cache file.

use std::path::{Path, PathBuf};

use candle_core::Device;

use crate::data::augment::AugmentKind;
use crate::error::{Error, Result};
use crate::eval::{for_each_word, Prepared};
use crate::io::tensor_file::{write_safetensors, RawTensor};
use crate::io::TensorStore;
use crate::model::Bert;
use crate::train::spec::TrainSpec;
use crate::util::hash::fnv1a;

/// Teacher logits for every word of the training set, in sentence order.
pub struct TeacherLogits {
    /// Index of each sentence's first word in the flat list of words.
    offsets: Vec<usize>,
    values: Vec<f32>,
    classes: usize,
}

impl TeacherLogits {
    /// The number of classes of each word's logits.
    pub fn classes(&self) -> usize {
        self.classes
    }
}

/// Each sentence's first word in the flat list of words, and the number of words.
fn word_offsets(words_per_sentence: impl IntoIterator<Item = usize>) -> (Vec<usize>, usize) {
    let mut offsets = vec![];
    let mut total = 0;
    for n in words_per_sentence {
        offsets.push(total);
        total += n;
    }
    (offsets, total)
}

fn words_per_sentence(prepared: &Prepared) -> impl Iterator<Item = usize> + '_ {
    prepared.data.sentences.iter().map(|s| s.words.len())
}

impl TeacherLogits {
    /// The logits of word `word` of training sentence `sentence`.
    pub fn row(&self, sentence: usize, word: usize) -> &[f32] {
        let i = (self.offsets[sentence] + word) * self.classes;
        &self.values[i..i + self.classes]
    }

    /// Runs the teacher over the training set (tokenised with its own tokenizer, every word
    /// with a token); its logits must be finite.
    fn compute(teacher: &Bert, prepared: &Prepared, pad_id: u32, classes: usize) -> Result<Self> {
        let (offsets, words) = word_offsets(words_per_sentence(prepared));
        let mut values = vec![0.0; words * classes];
        // Which words got logits: an explicit mask, so no value doubles as a marker.
        let mut seen = vec![false; words];
        for_each_word(
            teacher,
            prepared,
            pad_id,
            64,
            teacher.device(),
            |s, w, logits| {
                let i = offsets[s] + w;
                values[i * classes..(i + 1) * classes].copy_from_slice(logits);
                seen[i] = true;
            },
        )?;
        if seen.iter().any(|&v| !v) {
            return Err(Error::Internal(
                "the teacher's pass skipped a word that has a token".into(),
            ));
        }
        if let Some(pos) = values.iter().position(|v| !v.is_finite()) {
            let s = &prepared.data.sentences[sentence_of(&offsets, pos / classes)];
            return Err(Error::Input {
                path: prepared.data.path.clone(),
                line: s.line,
                msg: "the teacher's logits are not finite for this sentence (NaN or infinite activations: check the teacher's weights)".into(),
            });
        }
        Ok(TeacherLogits {
            offsets,
            values,
            classes,
        })
    }

    /// Reads logits cached in `file` for sentences of these lengths. A file that does not
    /// match the data, or holds a value that is not finite, is refused naming it.
    pub fn load(
        file: &Path,
        words_per_sentence: impl IntoIterator<Item = usize>,
        classes: usize,
    ) -> Result<Self> {
        let store = TensorStore::open_files(&[file.to_path_buf()])?;
        let values = store
            .load_f32("logits", &Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let (offsets, words) = word_offsets(words_per_sentence);
        let damaged = |msg: String| Error::Safetensors {
            path: file.to_path_buf(),
            msg,
        };
        if words * classes != values.len() {
            return Err(damaged("cached logits do not match the data".into()));
        }
        if let Some(pos) = values.iter().position(|v| !v.is_finite()) {
            return Err(damaged(format!(
                "cached teacher logits hold {} (word {} of the training set); the file is damaged: delete it and the logits are computed again",
                values[pos],
                pos / classes + 1
            )));
        }
        Ok(TeacherLogits {
            offsets,
            values,
            classes,
        })
    }

    /// Writes the logits to `file` (atomically).
    fn save(&self, file: &Path) -> Result<()> {
        let rows = self.values.len() / self.classes;
        let tensors = vec![(
            "logits".to_string(),
            RawTensor::f32(vec![rows, self.classes], &self.values),
        )];
        crate::io::atomic::replace_file(file, |tmp| {
            write_safetensors(tmp, tensors, Default::default())
        })
    }
}

/// The sentence that holds flat word `word`.
fn sentence_of(offsets: &[usize], word: usize) -> usize {
    offsets.partition_point(|&o| o <= word).saturating_sub(1)
}

/// Every word of the training set must have a token in the teacher's tokenisation: its logits
/// (and, across tokenizers, its hidden states) are read there.
pub fn require_teacher_tokens(prepared: &Prepared) -> Result<()> {
    let mut covered: Vec<Vec<bool>> = prepared
        .data
        .sentences
        .iter()
        .map(|s| vec![false; s.words.len()])
        .collect();
    for ex in &prepared.examples {
        for &(_, word) in &ex.word_starts {
            covered[ex.sentence][word] = true;
        }
    }
    let Some(s) = covered.iter().position(|words| words.contains(&false)) else {
        return Ok(());
    };
    let sentence = &prepared.data.sentences[s];
    Err(Error::Input {
        path: prepared.data.path.clone(),
        line: sentence.line,
        msg: format!(
            "the teacher's tokenizer gives no token for a word of `{}`",
            crate::util::excerpt::excerpt(&sentence.words.join(" "))
        ),
    })
}

/// What the cached logits depend on besides the teacher's files: the training file, the
/// windows and the augmentation.
pub struct CacheKey<'a> {
    pub train: &'a Path,
    pub spec: &'a TrainSpec,
    pub max_len: usize,
    pub augment: &'a [AugmentKind],
    pub augment_ratio: f64,
    pub augment_seed: u64,
}

impl CacheKey<'_> {
    fn material(&self) -> Result<String> {
        let train_bytes = std::fs::read(self.train).map_err(|e| Error::io(self.train, e))?;
        let spec = self.spec;
        let mut key = format!(
            "{}|{}|{:?}|{:?}",
            fnv1a(&train_bytes),
            self.max_len,
            spec.max_train_sentences,
            spec.alignment()
        );
        if !self.augment.is_empty() {
            // Keys without augmentation stay as they were, so existing caches remain valid.
            key.push_str(&format!(
                "|augment {:?} {} {}",
                self.augment, self.augment_ratio, self.augment_seed
            ));
        }
        Ok(key)
    }

    /// The cache file for these data and the teacher in `teacher_dir`.
    fn file(&self, dir: &Path, teacher_dir: &Path) -> Result<PathBuf> {
        let mut material = self.material()?.into_bytes();
        for name in ["config.json", "model.safetensors"] {
            let path = teacher_dir.join(name);
            material.extend(std::fs::read(&path).map_err(|e| Error::io(&path, e))?);
        }
        Ok(dir.join(format!("teacher-logits-{}.safetensors", fnv1a(&material))))
    }
}

/// The teacher whose logits are wanted: its folder (for the cache key), the model and the
/// training set in its tokenisation.
pub struct Teacher<'a> {
    pub dir: &'a Path,
    pub model: &'a Bert,
    pub train: &'a Prepared,
    pub pad_id: u32,
}

/// Loads the cached teacher logits or computes (and caches) them. Returns them and whether the
/// cache was hit. Every word of the training set must have a teacher token, cached or not.
pub fn teacher_logits(
    teacher: &Teacher,
    classes: usize,
    cache: Option<(&Path, &CacheKey)>,
) -> Result<(TeacherLogits, bool)> {
    require_teacher_tokens(teacher.train)?;
    let compute = || TeacherLogits::compute(teacher.model, teacher.train, teacher.pad_id, classes);
    let Some((dir, key)) = cache else {
        return Ok((compute()?, false));
    };
    let file = key.file(dir, teacher.dir)?;
    if file.is_file() {
        let logits = TeacherLogits::load(&file, words_per_sentence(teacher.train), classes)?;
        return Ok((logits, true));
    }
    let logits = compute()?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    logits.save(&file)?;
    Ok((logits, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache_file(dir: &Path, values: &[f32]) -> PathBuf {
        let logits = TeacherLogits {
            offsets: vec![0, 2],
            values: values.to_vec(),
            classes: 2,
        };
        let file = dir.join("teacher-logits-x.safetensors");
        logits.save(&file).unwrap();
        file
    }

    #[test]
    fn cached_logits_are_read_back_by_sentence_and_word() {
        let dir = tempfile::tempdir().unwrap();
        let file = cache_file(dir.path(), &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let logits = TeacherLogits::load(&file, [2, 1], 2).unwrap();
        assert_eq!(logits.row(0, 1), &[3.0, 4.0]);
        assert_eq!(logits.row(1, 0), &[5.0, 6.0]);
        let err = TeacherLogits::load(&file, [2, 2], 2).err().unwrap();
        assert!(err.to_string().contains("do not match the data"), "{err}");
    }

    #[test]
    fn a_cache_file_with_values_that_are_not_finite_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let file = cache_file(dir.path(), &[1.0, 2.0, 3.0, bad, 5.0, 6.0]);
            let err = TeacherLogits::load(&file, [2, 1], 2).err().unwrap();
            let msg = err.to_string();
            assert!(msg.contains(&file.display().to_string()), "{msg}");
            assert!(msg.contains("damaged") && msg.contains("word 2"), "{msg}");
            assert!(matches!(err, Error::Safetensors { .. }));
        }
    }
}
