//! `train distill`: knowledge distillation into a student. Loss = α·CE(gold) +
//! (1−α)·τ²·KL(softmax(t/τ) ‖ softmax(s/τ)), averaged over the scored positions — the first
//! sub-token of each word — so a student with another vocabulary learns word by word. The teacher
//! runs in eval mode once over the training set (its word logits are cached, optionally on disk:
//! [`teacher_cache`]); optional hidden-state and attention matching run the teacher per batch
//! ([`matching`]).

pub(crate) mod matching;
pub(crate) mod teacher_cache;

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor, D};
use serde::{Deserialize, Serialize};

use crate::data::augment::{augment, AugmentKind};
use crate::data::tokenize::WordTokenizer;
use crate::data::{Dataset, Example, LabelSet};
use crate::error::{Error, Result};
use crate::eval::{BatchData, Prepared};
use crate::io::Checkpoint;
use crate::model::loss::batch_cross_entropy;
use crate::model::{log_softmax, Bert, Mode};
use crate::train::command::{CommonArgs, TrainingCommand};
use crate::train::inputs::{ensure_classifier, prepare, read_train, PreparedRun};
use crate::train::objective::Objective;
use crate::train::optim::OptParam;
use crate::train::setup::{self, OpenRun};
use crate::train::spec::TrainSpec;
use crate::train::trainer::TrainOutcome;

use matching::{layer_pairs, Matching, Models, Weights};
use teacher_cache::{CacheKey, TeacherLogits};

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

impl DistillSpec {
    /// The checks the CLI's parsers make, for callers of the library.
    fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.alpha) || self.temperature <= 0.0 {
            return Err(Error::Spec(
                "--alpha must be in [0, 1] and --temperature positive".into(),
            ));
        }
        if !(self.augment_ratio > 0.0 && self.augment_ratio <= 20.0) {
            return Err(Error::Spec(format!(
                "--augment-ratio is {}; it must be in (0, 20]",
                self.augment_ratio
            )));
        }
        Ok(())
    }

    /// The augmentation's seed: `--augment-seed`, else the run's `--seed`.
    fn augment_seed(&self, spec: &TrainSpec) -> u64 {
        self.augment_seed.unwrap_or(spec.seed)
    }

    fn weights(&self) -> Weights {
        Weights {
            hidden: self.hidden_weight,
            attention: self.attention_weight,
        }
    }
}

/// `train distill`'s own options.
#[derive(Debug, Clone, clap::Args)]
pub struct DistillArgs {
    /// Student checkpoint folder (from init-student or any surgery).
    pub student: PathBuf,
    /// Fine-tuned teacher checkpoint folder.
    #[arg(long)]
    pub teacher: PathBuf,
    #[command(flatten)]
    pub distill: DistillSpec,
}

impl TrainingCommand for DistillArgs {
    const NAME: &'static str = "train distill";
    const ABOUT: &'static str = "Distill a teacher into a student (KL·τ² on softened logits + hard CE, optional hidden-state / attention matching)";
    const EXAMPLE: &'static [&'static str] = &["--teacher", "{teacher}", "--hidden-weight", "1"];

    /// Trains the student to match the teacher on the training data.
    fn train(&self, common: &CommonArgs) -> Result<TrainOutcome> {
        let (distill, spec) = (&self.distill, &common.spec);
        distill.validate()?;
        spec.validate()?;
        let open = self.open(common)?;
        let teacher_ckpt = Checkpoint::open(&self.teacher)?;
        let inputs = DistillInputs::prepare(self, &teacher_ckpt, common)?;
        let DistillInputs {
            student,
            teacher_tokenizer,
            teacher_train,
            augmented,
            augment_seed,
        } = inputs;
        // Before the teacher's pass over the training set, not after it.
        let ready = open.ready(student, common)?;
        let device = ready.open.device.clone();
        let teacher = Bert::load(&teacher_ckpt, &device)?.with_kernels(ready.open.kernels);
        let teacher = matching::Teacher {
            model: teacher,
            pad_id: teacher_tokenizer.pad_id(),
            train: teacher_train,
        };
        let (cached, hit, seconds) = self.teacher_logits(&teacher, &ready.prepared, common)?;
        let layers = |c: &Checkpoint| c.arch.num_layers();
        let student_ckpt = &ready.prepared.ckpt;
        let (student_layers, teacher_layers) = (layers(student_ckpt), layers(&teacher_ckpt));
        let pairs = layer_pairs(distill.layer_map.as_deref(), student_layers, teacher_layers)?;
        let provenance = serde_json::json!({
            "student": self.student, "teacher": self.teacher, "data": common.data,
            "distill": distill, "files": ready.prepared.files,
            "layer_pairs": pairs, "teacher_cache_hit": hit, "teacher_logits_seconds": seconds,
            "augmented_sentences": augmented, "augment_seed": augment_seed,
        });
        let models = Models {
            student: student_ckpt,
            teacher: &teacher_ckpt,
            pairs,
        };
        let matching = Matching::new(&models, teacher, distill.weights(), spec.seed)?;
        let mut objective = Distillation::new(cached, distill, matching, &device);
        ready.fit(common, provenance, &mut objective)
    }
}

impl DistillArgs {
    /// Opens the run (never inside what the run reads, nor the teacher cache inside an input).
    fn open(&self, common: &CommonArgs) -> Result<OpenRun> {
        let models = [self.student.as_path(), self.teacher.as_path()];
        if let Some(cache) = &self.distill.cache_teacher {
            let mut read = common.data.paths();
            read.extend(models);
            crate::io::output::check_not_inside(cache, &read)?;
        }
        let mut reads = models.to_vec();
        reads.extend(self.distill.cache_teacher.as_deref());
        setup::open(common, &reads)
    }

    /// The teacher's word logits over the (augmented) training set (from the cache when it has
    /// them), whether the cache was hit, and the seconds they took.
    fn teacher_logits(
        &self,
        teacher: &matching::Teacher,
        student: &PreparedRun,
        common: &CommonArgs,
    ) -> Result<(TeacherLogits, bool, f64)> {
        let (distill, spec) = (&self.distill, &common.spec);
        let started = std::time::Instant::now();
        let pass = teacher_cache::Teacher {
            dir: &self.teacher,
            model: &teacher.model,
            train: &teacher.train,
            pad_id: teacher.pad_id,
        };
        let key = CacheKey {
            train: &common.data.train,
            spec,
            max_len: student.max_len,
            augment: &distill.augment,
            augment_ratio: distill.augment_ratio,
            augment_seed: distill.augment_seed(spec),
        };
        let cache = distill.cache_teacher.as_deref().map(|dir| (dir, &key));
        let (logits, hit) = teacher_cache::teacher_logits(&pass, student.labels.len(), cache)?;
        let seconds = started.elapsed().as_secs_f64();
        let how = if hit {
            "loaded from the cache"
        } else {
            "computed"
        };
        eprintln!("teacher word logits: {how} in {seconds:.1} s");
        Ok((logits, hit, seconds))
    }
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

/// The student's inputs, prepared like any run's but with the teacher's labels, and the
/// (augmented) training set in the teacher's tokenisation.
struct DistillInputs {
    student: PreparedRun,
    teacher_tokenizer: WordTokenizer,
    teacher_train: Prepared,
    augmented: usize,
    augment_seed: u64,
}

impl DistillInputs {
    fn prepare(args: &DistillArgs, teacher: &Checkpoint, common: &CommonArgs) -> Result<Self> {
        let (student_dir, distill) = (&args.student, &args.distill);
        let (data, spec) = (&common.data, &common.spec);
        let labels = LabelSet::new(teacher.require_labels()?)?;
        let mut train = read_train(data, spec)?;
        let augment_seed = distill.augment_seed(spec);
        let augmented = augment_with(&mut train, distill, augment_seed);
        let mut student = Checkpoint::open(student_dir)?;
        match student.classifier_labels() {
            // The same labels in another order: the student's rows follow the teacher's.
            Some(l) if l != labels.labels() && labels.same_labels(&l) => {
                crate::model::generate::reorder_classifier(&mut student, labels.labels())?
            }
            Some(l) if l != labels.labels() => {
                return Err(Error::Spec(format!(
                    "the student {} has labels [{}] but the teacher {} has [{}]",
                    student_dir.display(),
                    l.join(", "),
                    teacher.source().display(),
                    labels.labels().join(", ")
                )))
            }
            _ => {
                ensure_classifier(&mut student, labels.clone(), false, spec.seed)?;
            }
        }
        let teacher_positions = [("the teacher", teacher.arch.max_positions)];
        let student = prepare(train.clone(), (student, labels), common, &teacher_positions)?;
        let teacher_tokenizer = WordTokenizer::from_checkpoint(teacher)?;
        let teacher_train = student
            .splits(data, spec)
            .train(&teacher_tokenizer, train)?;
        Ok(DistillInputs {
            student,
            teacher_tokenizer,
            teacher_train,
            augmented,
            augment_seed,
        })
    }
}

/// Adds the augmented sentences to the training set; returns how many.
fn augment_with(train: &mut Dataset, distill: &DistillSpec, seed: u64) -> usize {
    let augmented = augment(
        &train.sentences,
        &distill.augment,
        distill.augment_ratio,
        seed,
    );
    let count = augmented.len();
    if count > 0 {
        eprintln!(
            "augmented: {count} new sentences ({:?}) beside {} training sentences",
            distill.augment,
            train.sentences.len()
        );
        train.sentences.extend(augmented);
    }
    count
}

/// α·CE + (1−α)·τ²·KL against the cached teacher logits at word starts, plus the optional
/// hidden-state and attention matching against the teacher run per batch.
struct Distillation {
    cached: TeacherLogits,
    classes: usize,
    temperature: f64,
    alpha: f64,
    /// The matching terms' weights (what the student's forward pass returns).
    weights: Weights,
    matching: Option<Matching>,
    device: Device,
}

impl Distillation {
    fn new(
        cached: TeacherLogits,
        distill: &DistillSpec,
        matching: Option<Matching>,
        device: &Device,
    ) -> Self {
        Distillation {
            classes: cached.classes(),
            cached,
            temperature: distill.temperature,
            alpha: distill.alpha,
            weights: distill.weights(),
            matching,
            device: device.clone(),
        }
    }

    /// The student's logits at every word start of the batch and the teacher's cached ones.
    fn word_logits(
        &self,
        logits: &Tensor,
        len: usize,
        examples: &[&Example],
    ) -> Result<(Tensor, Tensor)> {
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
        let teacher = Tensor::from_vec(targets, (n, self.classes), &self.device)?;
        let student = logits
            .reshape(((), self.classes))?
            .index_select(&positions, 0)?;
        Ok((student, teacher))
    }
}

impl Objective for Distillation {
    fn op(&self) -> &'static str {
        DistillArgs::NAME
    }

    fn extra_params(&self) -> Vec<OptParam> {
        self.matching
            .as_ref()
            .map_or_else(Vec::new, Matching::extra_params)
    }

    fn loss(
        &mut self,
        model: &Bert,
        batch: &BatchData,
        examples: &[&Example],
        mode: &mut Mode,
    ) -> Result<Tensor> {
        let out = model.forward(&batch.batch, mode, self.weights.outputs())?;
        let logits = out
            .logits
            .as_ref()
            .ok_or_else(|| Error::Internal("the student was given no classifier".into()))?;
        let len = batch.labels.first().map_or(0, |r| r.len());
        let (student, teacher) = self.word_logits(logits, len, examples)?;
        let soft = soft_loss(&student, &teacher, self.temperature)?;
        let mut total = (soft * (1.0 - self.alpha))?;
        if self.alpha > 0.0 {
            total = (total + (batch_cross_entropy(&out, &batch.labels)? * self.alpha)?)?;
        }
        if let Some(matching) = &self.matching {
            total = matching.add_to(total, &out, batch, examples)?;
        }
        Ok(total.to_dtype(DType::F32)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

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
}
