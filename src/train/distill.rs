//! `train distill`: knowledge distillation into a student. Loss = α·CE(gold) +
//! (1−α)·τ²·KL(softmax(t/τ) ‖ softmax(s/τ)), averaged over the scored positions — the first
//! sub-token of each word — so a student with another vocabulary learns word by word. The teacher
//! runs in eval mode once over the training set (its word logits are cached, optionally on disk);
//! optional hidden-state and attention matching run the teacher per batch (hidden states word by
//! word when the student tokenises differently, on the teacher's own tokens).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var, D};
use serde::{Deserialize, Serialize};

use crate::data::augment::{augment, AugmentKind};
use crate::data::labels::UnknownLabels;
use crate::data::tokenize::WordTokenizer;
use crate::data::{read_dataset, Example, LabelSet};
use crate::error::{Error, Result};
use crate::eval::{collate, for_each_word, BatchData, Prepared};
use crate::io::tensor_file::{write_safetensors, RawTensor};
use crate::io::{Checkpoint, TensorStore};
use crate::model::loss::batch_cross_entropy;
use crate::model::{log_softmax, Bert, Mode, Outputs};
use crate::train::inputs::ensure_classifier;
use crate::train::objective::Objective;
use crate::train::optim::OptParam;
use crate::train::spec::{DataSpec, RunOptions, TrainSpec};
use crate::train::trainer::{fit, require_resources, LoopInputs, TrainOutcome};
use crate::util::hash::fnv1a;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct DistillSpec {
    /// Softmax temperature τ of the soft targets.
    #[arg(long, default_value_t = 2.0, value_parser = crate::util::options::positive_number)]
    pub temperature: f64,
    /// Weight α of the hard-label cross-entropy (1 − α goes to the soft term).
    #[arg(long, default_value_t = 0.5, value_parser = crate::util::options::unit_interval)]
    pub alpha: f64,
    /// Weight of the hidden-state MSE (0 = off): token by token with the teacher's tokenizer,
    /// word by word (first sub-tokens) with another one, e.g. a pruned vocabulary.
    #[arg(long, default_value_t = 0.0, value_parser = crate::util::options::non_negative)]
    pub hidden_weight: f64,
    /// Weight of the attention-probability MSE (0 = off); needs equal head counts and the
    /// teacher's tokenizer.
    #[arg(long, default_value_t = 0.0, value_parser = crate::util::options::non_negative)]
    pub attention_weight: f64,
    /// Student:teacher layer pairs, e.g. `0:1,1:3,2:5` (default: uniform, last to last).
    #[arg(long)]
    pub layer_map: Option<String>,
    /// Folder for the teacher's word logits, reused across runs (keyed by teacher + data).
    #[arg(long)]
    pub cache_teacher: Option<PathBuf>,
    /// Add sentences made from the training set, labelled by the teacher: `mention`, `token`,
    /// `shuffle` (comma-separated, applied in turn to each new sentence).
    #[arg(long, value_enum, value_delimiter = ',')]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub augment: Vec<AugmentKind>,
    /// New sentences per training sentence with --augment (0 < ratio ≤ 20).
    #[arg(long, default_value_t = 1.0, value_parser = crate::util::options::positive_number)]
    #[serde(default = "default_augment_ratio")]
    pub augment_ratio: f64,
    /// Seed of the augmentation (default: --seed).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub augment_seed: Option<u64>,
}

fn default_augment_ratio() -> f64 {
    1.0
}

/// The distillation loss of one batch, given student logits at scored positions and the
/// teacher's logits there: τ²·KL(softmax(t/τ) ‖ softmax(s/τ)), mean over positions.
pub fn soft_loss(
    student: &Tensor,
    teacher: &Tensor,
    temperature: f64,
) -> candle_core::Result<Tensor> {
    let t = candle_nn::ops::softmax(&(teacher / temperature)?, D::Minus1)?.detach();
    let log_t = log_softmax(&(teacher / temperature)?)?.detach();
    let log_s = log_softmax(&(student / temperature)?)?;
    let kl = (t * (log_t - log_s)?)?.sum(D::Minus1)?.mean_all()?;
    kl * (temperature * temperature)
}

/// Teacher logits for every word of the training set, in sentence order.
pub struct TeacherLogits {
    offsets: Vec<usize>,
    values: Vec<f32>,
    classes: usize,
}

impl TeacherLogits {
    fn row(&self, sentence: usize, word: usize) -> &[f32] {
        let i = (self.offsets[sentence] + word) * self.classes;
        &self.values[i..i + self.classes]
    }

    fn compute(teacher: &Bert, prepared: &Prepared, pad_id: u32, classes: usize) -> Result<Self> {
        let mut offsets = vec![0];
        for s in &prepared.data.sentences {
            offsets.push(offsets.last().unwrap() + s.words.len());
        }
        let words = *offsets.last().unwrap();
        let mut values = vec![0.0; words * classes];
        // Which words got logits: kept apart from the values, so that a teacher whose logits are
        // not finite is not mistaken for a word its tokenizer cannot encode.
        let mut seen = vec![false; words];
        for_each_word(
            teacher,
            prepared,
            pad_id,
            64,
            teacher.device(),
            |s, w, logits| {
                let i = (offsets[s] + w) * classes;
                values[i..i + classes].copy_from_slice(logits);
                seen[offsets[s] + w] = true;
            },
        )?;
        let sentence_of = |word: usize| offsets.partition_point(|&o| o <= word) - 1;
        if let Some(word) = seen.iter().position(|&v| !v) {
            let s = &prepared.data.sentences[sentence_of(word)];
            return Err(Error::Input {
                path: prepared.data.path.clone(),
                line: s.line,
                msg: format!(
                    "the teacher's tokenizer gives no token for a word of `{}`",
                    crate::util::excerpt::excerpt(&s.words.join(" "))
                ),
            });
        }
        if let Some(pos) = values.iter().position(|v| !v.is_finite()) {
            let s = &prepared.data.sentences[sentence_of(pos / classes)];
            return Err(Error::Input {
                path: prepared.data.path.clone(),
                line: s.line,
                msg: "the teacher's logits are not finite for this sentence (NaN or infinite activations: check the teacher's weights)".into(),
            });
        }
        offsets.pop();
        Ok(TeacherLogits {
            offsets,
            values,
            classes,
        })
    }
}

/// Where each word of the training set starts in the teacher's own tokenisation, so that hidden
/// states can be compared word by word when the student tokenises differently.
struct WordIndex<'a> {
    teacher: &'a Prepared,
    /// (sentence, word) → (teacher example, token position).
    starts: std::collections::HashMap<(usize, usize), (usize, usize)>,
}

impl<'a> WordIndex<'a> {
    fn new(teacher: &'a Prepared) -> Self {
        let mut starts = std::collections::HashMap::new();
        for (e, ex) in teacher.examples.iter().enumerate() {
            for &(pos, word) in &ex.word_starts {
                starts.entry((ex.sentence, word)).or_insert((e, pos));
            }
        }
        WordIndex { teacher, starts }
    }

    /// The teacher's batch for the student's examples, and for every word start of the student
    /// batch (in order) its flat position in the student batch and in the teacher batch.
    fn teacher_batch(
        &self,
        examples: &[&Example],
        student_len: usize,
        pad_id: u32,
        device: &Device,
    ) -> Result<(BatchData, Vec<u32>, Vec<u32>)> {
        let mut rows: Vec<usize> = vec![];
        let mut pairs = vec![];
        for (b, ex) in examples.iter().enumerate() {
            for &(pos, word) in &ex.word_starts {
                let &(e, t_pos) = self.starts.get(&(ex.sentence, word)).ok_or_else(|| {
                    Error::Spec(format!(
                        "the teacher's tokenizer gives no token for word {word} of training sentence {}",
                        ex.sentence + 1
                    ))
                })?;
                let row = match rows.iter().position(|&r| r == e) {
                    Some(r) => r,
                    None => {
                        rows.push(e);
                        rows.len() - 1
                    }
                };
                pairs.push((b * student_len + pos, row, t_pos));
            }
        }
        let refs: Vec<&Example> = rows.iter().map(|&e| &self.teacher.examples[e]).collect();
        let batch = collate(&refs, pad_id, device)?;
        let t_len = refs.iter().map(|e| e.ids.len()).max().unwrap_or(0);
        let s_pos = pairs.iter().map(|p| p.0 as u32).collect();
        let t_pos = pairs.iter().map(|p| (p.1 * t_len + p.2) as u32).collect();
        Ok((batch, s_pos, t_pos))
    }
}

/// Loads the cached teacher logits or computes (and caches) them. Returns them and whether the
/// cache was hit.
fn teacher_logits(
    teacher_dir: &Path,
    teacher: &Bert,
    prepared: &Prepared,
    pad_id: u32,
    classes: usize,
    cache: Option<&Path>,
    key_material: &[u8],
) -> Result<(TeacherLogits, bool)> {
    let Some(dir) = cache else {
        return Ok((
            TeacherLogits::compute(teacher, prepared, pad_id, classes)?,
            false,
        ));
    };
    let mut material = key_material.to_vec();
    for name in ["config.json", "model.safetensors"] {
        let path = teacher_dir.join(name);
        material.extend(std::fs::read(&path).map_err(|e| Error::io(&path, e))?);
    }
    let file = dir.join(format!("teacher-logits-{}.safetensors", fnv1a(&material)));
    if file.is_file() {
        let store = TensorStore::open_files(&[file.clone()])?;
        let values = store
            .load_f32("logits", &Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let mut offsets = vec![0];
        for s in &prepared.data.sentences {
            offsets.push(offsets.last().unwrap() + s.words.len());
        }
        if offsets
            .pop()
            .is_some_and(|total| total * classes != values.len())
        {
            return Err(Error::Safetensors {
                path: file,
                msg: "cached logits do not match the data".into(),
            });
        }
        return Ok((
            TeacherLogits {
                offsets,
                values,
                classes,
            },
            true,
        ));
    }
    let logits = TeacherLogits::compute(teacher, prepared, pad_id, classes)?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let rows = logits.values.len() / classes;
    let tensors = vec![(
        "logits".to_string(),
        RawTensor::f32(vec![rows, classes], &logits.values),
    )];
    crate::io::atomic::replace_file(&file, |tmp| {
        write_safetensors(tmp, tensors, Default::default())
    })?;
    Ok((logits, false))
}

/// Parses `0:1,1:3` or builds the uniform map (student layer i ↔ teacher layer ⌈(i+1)·T/S⌉−1).
pub fn layer_pairs(
    text: Option<&str>,
    student: usize,
    teacher: usize,
) -> Result<Vec<(usize, usize)>> {
    let Some(text) = text else {
        return Ok((0..student)
            .map(|i| (i, ((i + 1) * teacher).div_ceil(student) - 1))
            .collect());
    };
    text.split(',')
        .map(|pair| {
            let (s, t) = pair
                .split_once(':')
                .and_then(|(s, t)| {
                    Some((
                        s.trim().parse::<usize>().ok()?,
                        t.trim().parse::<usize>().ok()?,
                    ))
                })
                .ok_or_else(|| {
                    Error::Spec(format!("--layer-map: `{pair}` is not student:teacher"))
                })?;
            if s >= student || t >= teacher {
                return Err(Error::Spec(format!(
                    "--layer-map {pair}: the student has layers 0..{}, the teacher 0..{}",
                    student - 1,
                    teacher - 1
                )));
            }
            Ok((s, t))
        })
        .collect()
}

/// `train distill`: trains `student` to match `teacher` on the training data.
pub fn distill(
    student_dir: &Path,
    teacher_dir: &Path,
    data: &DataSpec,
    spec: &TrainSpec,
    distill: &DistillSpec,
    out: &Path,
    options: RunOptions,
) -> Result<TrainOutcome> {
    if !(0.0..=1.0).contains(&distill.alpha) || distill.temperature <= 0.0 {
        return Err(Error::Spec(
            "--alpha must be in [0, 1] and --temperature positive".into(),
        ));
    }
    if !(distill.augment_ratio > 0.0 && distill.augment_ratio <= 20.0) {
        return Err(Error::Spec(format!(
            "--augment-ratio is {}; it must be in (0, 20]",
            distill.augment_ratio
        )));
    }
    spec.validate()?;
    let mut read = data.paths();
    read.extend([student_dir, teacher_dir]);
    if let Some(cache) = &distill.cache_teacher {
        crate::io::output::check_not_inside(cache, &read)?;
    }
    read.extend(distill.cache_teacher.as_deref());
    let (device, kernels) = options.compute.open()?;
    let run = options.open(out, &read)?;
    let teacher_ckpt = Checkpoint::open(teacher_dir)?;
    let teacher_labels = teacher_ckpt.require_labels()?;
    let labels = LabelSet::new(teacher_labels.clone())?;
    let read = data.read_options();
    let mut train_data = read_dataset(&data.train, &read)?;
    if let Some(n) = spec.max_train_sentences {
        train_data.sentences.truncate(n);
    }
    let augment_seed = distill.augment_seed.unwrap_or(spec.seed);
    let augmented = augment(
        &train_data.sentences,
        &distill.augment,
        distill.augment_ratio,
        augment_seed,
    );
    let augmented_sentences = augmented.len();
    if !augmented.is_empty() {
        eprintln!(
            "augmented: {} new sentences ({:?}) beside {} training sentences",
            augmented.len(),
            distill.augment,
            train_data.sentences.len()
        );
        train_data.sentences.extend(augmented);
    }
    let mut student = Checkpoint::open(student_dir)?;
    match student.classifier_labels() {
        Some(l) if l != teacher_labels => {
            return Err(Error::Spec(format!(
                "the student {} has labels [{}] but the teacher {} has [{}]",
                student_dir.display(),
                l.join(", "),
                teacher_dir.display(),
                teacher_labels.join(", ")
            )))
        }
        _ => ensure_classifier(&mut student, &labels, false, spec.seed)?,
    }
    let student_tok = WordTokenizer::from_checkpoint(&student)?;
    let teacher_tok = WordTokenizer::from_checkpoint(&teacher_ckpt)?;
    let max_len = crate::util::options::train_window_len(
        spec.max_len,
        &[
            ("the student", student.arch.max_positions),
            ("the teacher", teacher_ckpt.arch.max_positions),
        ],
    )?;
    let prepare = |tok: &WordTokenizer, d| {
        Prepared::new(
            tok,
            d,
            &labels,
            data.unknown_labels,
            spec.alignment(),
            max_len,
        )
    };
    let train = prepare(&student_tok, train_data.clone())?;
    let teacher_train = Prepared::new(
        &teacher_tok,
        train_data,
        &labels,
        UnknownLabels::Error,
        spec.alignment(),
        max_len,
    )?;
    let dev = prepare(&student_tok, read_dataset(&data.dev, &read)?)?;
    let test = data
        .test
        .as_deref()
        .map(|p| read_dataset(p, &read).and_then(|d| prepare(&student_tok, d)))
        .transpose()?;

    // Before the teacher's pass over the training set, not after it.
    require_resources(&run, &student.arch, spec, &device)?;
    let teacher = Bert::load(&teacher_ckpt, &device)?.with_kernels(kernels);
    let started = std::time::Instant::now();
    let train_bytes = std::fs::read(&data.train).map_err(|e| Error::io(&data.train, e))?;
    let mut key = format!(
        "{}|{max_len}|{:?}|{:?}",
        fnv1a(&train_bytes),
        spec.max_train_sentences,
        spec.alignment()
    );
    if !distill.augment.is_empty() {
        // Keys without augmentation stay as they were, so existing caches remain valid.
        key.push_str(&format!(
            "|augment {:?} {} {augment_seed}",
            distill.augment, distill.augment_ratio
        ));
    }
    let (cached, hit) = teacher_logits(
        teacher_dir,
        &teacher,
        &teacher_train,
        teacher_tok.pad_id(),
        labels.len(),
        distill.cache_teacher.as_deref(),
        key.as_bytes(),
    )?;
    let teacher_seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "teacher word logits: {} in {teacher_seconds:.1} s",
        if hit {
            "loaded from the cache"
        } else {
            "computed"
        }
    );

    let intermediate = distill.hidden_weight > 0.0 || distill.attention_weight > 0.0;
    let pairs = layer_pairs(
        distill.layer_map.as_deref(),
        student.arch.num_layers(),
        teacher_ckpt.arch.num_layers(),
    )?;
    let mut extra_params = vec![];
    let mut projection = None;
    // With another tokenizer (a pruned vocabulary) the teacher runs on its own tokens and hidden
    // states are compared word by word, at each word's first sub-token, like the logits.
    let same_tokens = student.tokenizer_files.get("tokenizer.json")
        == teacher_ckpt.tokenizer_files.get("tokenizer.json");
    let word_level = (!same_tokens).then(|| WordIndex::new(&teacher_train));
    if intermediate {
        if !same_tokens && distill.attention_weight > 0.0 {
            return Err(Error::Spec(
                "attention matching compares token by token and needs the teacher's tokenizer \
                 (hidden-state matching works across tokenizers, word by word)"
                    .into(),
            ));
        }
        if distill.attention_weight > 0.0 {
            for &(s, t) in &pairs {
                let (hs, ht) = (
                    student.arch.layers[student.arch.layer_map[s]].num_heads,
                    teacher_ckpt.arch.layers[teacher_ckpt.arch.layer_map[t]].num_heads,
                );
                if hs != ht {
                    return Err(Error::Spec(format!(
                        "attention matching needs equal head counts: student layer {s} has {hs}, teacher layer {t} has {ht}"
                    )));
                }
            }
        }
        if student.arch.hidden != teacher_ckpt.arch.hidden {
            let mut rng = crate::util::rng::Rng::new(spec.seed ^ 0xD15);
            let (ht, hs) = (teacher_ckpt.arch.hidden, student.arch.hidden);
            let w: Vec<f32> = (0..ht * hs).map(|_| rng.normal() * 0.02).collect();
            let var = Var::from_tensor(&Tensor::from_vec(w, (ht, hs), &device)?)?;
            extra_params.push(OptParam::external(
                "distill.hidden_projection",
                var.clone(),
                true,
                1.0,
            ));
            projection = Some(var);
        }
    }
    let provenance = serde_json::json!({
        "student": student_dir, "teacher": teacher_dir, "data": data, "distill": distill,
        "files": data.file_hashes()?,
        "layer_pairs": pairs, "teacher_cache_hit": hit, "teacher_logits_seconds": teacher_seconds,
        "augmented_sentences": augmented_sentences, "augment_seed": augment_seed,
    });
    let inputs = LoopInputs {
        ckpt: student,
        labels: labels.clone(),
        tokenizer: &student_tok,
        train,
        dev,
        test,
        spec: spec.clone(),
        device: device.clone(),
        kernels,
        provenance,
    };
    let mut objective = Distillation {
        cached,
        classes: labels.len(),
        temperature: distill.temperature,
        alpha: distill.alpha,
        hidden_weight: distill.hidden_weight,
        attention_weight: distill.attention_weight,
        outputs: Outputs {
            hidden_states: distill.hidden_weight > 0.0,
            attentions: distill.attention_weight > 0.0,
            ..Default::default()
        },
        teacher,
        teacher_pad: teacher_tok.pad_id(),
        pairs,
        projection,
        word_level,
        extra_params,
        device,
    };
    fit(inputs, &mut objective, run, options.stop_after)
}

/// α·CE + (1−α)·τ²·KL against the cached teacher logits at word starts, plus the optional
/// hidden-state and attention matching against the teacher run per batch.
struct Distillation<'a> {
    cached: TeacherLogits,
    classes: usize,
    temperature: f64,
    alpha: f64,
    hidden_weight: f64,
    attention_weight: f64,
    /// What the student's (and teacher's) forward passes return.
    outputs: Outputs,
    teacher: Bert,
    teacher_pad: u32,
    /// (student layer, teacher layer) pairs for intermediate matching.
    pairs: Vec<(usize, usize)>,
    /// Student → teacher width projection for hidden-state matching.
    projection: Option<Var>,
    /// Word-level alignment with the teacher's tokens when the tokenizers differ.
    word_level: Option<WordIndex<'a>>,
    extra_params: Vec<OptParam>,
    device: Device,
}

impl Distillation<'_> {
    fn intermediate(&self) -> bool {
        self.hidden_weight > 0.0 || self.attention_weight > 0.0
    }
}

impl Objective for Distillation<'_> {
    fn op(&self) -> &'static str {
        "train distill"
    }

    fn extra_params(&self) -> Vec<OptParam> {
        self.extra_params.clone()
    }

    fn loss(
        &mut self,
        model: &Bert,
        batch: &BatchData,
        examples: &[&Example],
        mode: &mut Mode,
    ) -> Result<Tensor> {
        let out = model.forward(&batch.batch, mode, self.outputs)?;
        let logits = out
            .logits
            .as_ref()
            .ok_or_else(|| Error::Spec("the student has no classifier".into()))?;
        let len = batch.labels.first().map_or(0, |r| r.len());
        let mut positions = vec![];
        let mut targets = vec![];
        for (b, ex) in examples.iter().enumerate() {
            for &(pos, word) in &ex.word_starts {
                positions.push((b * len + pos) as u32);
                targets.extend_from_slice(self.cached.row(ex.sentence, word));
            }
        }
        let n = positions.len();
        let positions = Tensor::from_vec(positions, n, &self.device)?;
        let teacher_logits = Tensor::from_vec(targets, (n, self.classes), &self.device)?;
        let student_logits = logits
            .reshape(((), self.classes))?
            .index_select(&positions, 0)?;
        let mut total =
            (soft_loss(&student_logits, &teacher_logits, self.temperature)? * (1.0 - self.alpha))?;
        if self.alpha > 0.0 {
            total = (total + (batch_cross_entropy(&out, &batch.labels)? * self.alpha)?)?;
        }
        if let (Some(index), true) = (&self.word_level, self.intermediate()) {
            let (t_batch, s_pos, t_pos) =
                index.teacher_batch(examples, len, self.teacher_pad, &self.device)?;
            let t_out = self
                .teacher
                .forward(&t_batch.batch, &mut Mode::Eval, self.outputs)?;
            let (s_pos, t_pos) = (
                Tensor::from_vec(s_pos, n, &self.device)?,
                Tensor::from_vec(t_pos, n, &self.device)?,
            );
            for &(s, t) in &self.pairs {
                let width = out.hidden_states[s + 1].dim(2)?;
                let hs = out.hidden_states[s + 1]
                    .reshape(((), width))?
                    .index_select(&s_pos, 0)?;
                let hs = match &self.projection {
                    Some(p) => hs.matmul(&p.as_tensor().t()?)?,
                    None => hs,
                };
                let ht = t_out.hidden_states[t + 1].detach();
                let t_width = ht.dim(2)?;
                let ht = ht.reshape(((), t_width))?.index_select(&t_pos, 0)?;
                let mse = ((hs - ht)?.sqr()?.sum_all()? / (n * t_width) as f64)?;
                total = (total + (mse * (self.hidden_weight / self.pairs.len() as f64))?)?;
            }
        } else if self.intermediate() {
            let t_out = self
                .teacher
                .forward(&batch.batch, &mut Mode::Eval, self.outputs)?;
            let mask = batch.batch.attention_mask.to_dtype(DType::F32)?;
            let real = batch.real_tokens as f64;
            for &(s, t) in &self.pairs {
                if self.hidden_weight > 0.0 {
                    let hs = &out.hidden_states[s + 1];
                    let hs = match &self.projection {
                        Some(p) => hs.broadcast_matmul(&p.as_tensor().t()?)?,
                        None => hs.clone(),
                    };
                    let ht = t_out.hidden_states[t + 1].detach();
                    let diff = (hs - ht)?.broadcast_mul(&mask.unsqueeze(2)?)?;
                    let width = diff.dim(2)? as f64;
                    let mse = (diff.sqr()?.sum_all()? / (real * width))?;
                    total = (total + (mse * (self.hidden_weight / self.pairs.len() as f64))?)?;
                }
                if self.attention_weight > 0.0 {
                    let (a_s, a_t) = (&out.attentions[s], t_out.attentions[t].detach());
                    let heads = a_s.dim(1)? as f64;
                    let query_mask = mask.unsqueeze(1)?.unsqueeze(3)?;
                    let diff = (a_s - a_t)?.broadcast_mul(&query_mask)?;
                    let mse = (diff.sqr()?.sum_all()? / (real * heads))?;
                    total = (total + (mse * (self.attention_weight / self.pairs.len() as f64))?)?;
                }
            }
        }
        Ok(total.to_dtype(DType::F32)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f32], shape: (usize, usize)) -> Tensor {
        Tensor::from_vec(v.to_vec(), shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn soft_loss_matches_a_hand_computation() {
        let (s, te) = ([0.5f32, -1.0, 2.0], [1.0f32, 0.0, 0.5]);
        let tau = 2.0f64;
        let softmax = |x: &[f32]| -> Vec<f64> {
            let e: Vec<f64> = x.iter().map(|v| (*v as f64 / tau).exp()).collect();
            let z: f64 = e.iter().sum();
            e.iter().map(|v| v / z).collect()
        };
        let (ps, pt) = (softmax(&s), softmax(&te));
        let kl: f64 = pt.iter().zip(&ps).map(|(a, b)| a * (a / b).ln()).sum();
        let got = soft_loss(&t(&s, (1, 3)), &t(&te, (1, 3)), tau)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
        assert!(
            (got - tau * tau * kl).abs() < 1e-5,
            "{got} vs {}",
            tau * tau * kl
        );
    }

    #[test]
    fn tau_squared_keeps_soft_gradients_comparable_across_temperatures() {
        // Small logit gaps: the gradient of τ²·KL tends to (z_s − z_t)/C whatever τ (Hinton et al.).
        let s = [0.10f32, -0.05, 0.02, 0.0];
        let te = [0.0f32, 0.04, -0.03, 0.01];
        let grad = |tau: f64| -> Vec<f32> {
            let v = Var::from_tensor(&t(&s, (1, 4))).unwrap();
            let g = soft_loss(v.as_tensor(), &t(&te, (1, 4)), tau)
                .unwrap()
                .backward()
                .unwrap();
            g.get(&v)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        let (g4, g8) = (grad(4.0), grad(8.0));
        for (a, b) in g4.iter().zip(&g8) {
            assert!((a - b).abs() < 0.02 * a.abs().max(1e-3), "{a} vs {b}");
        }
        // Without τ² the gradient would shrink by (8/4)² = 4.
        assert!(g4.iter().map(|v| v.abs()).sum::<f32>() > 1e-3);
    }

    #[test]
    fn uniform_layer_maps_end_at_the_last_layer() {
        assert_eq!(
            layer_pairs(None, 3, 6).unwrap(),
            vec![(0, 1), (1, 3), (2, 5)]
        );
        assert_eq!(
            layer_pairs(None, 4, 6).unwrap(),
            vec![(0, 1), (1, 2), (2, 4), (3, 5)]
        );
        assert_eq!(
            layer_pairs(Some("0:0,1:5"), 2, 6).unwrap(),
            vec![(0, 0), (1, 5)]
        );
        assert!(layer_pairs(Some("0:6"), 2, 6).is_err());
    }
}
