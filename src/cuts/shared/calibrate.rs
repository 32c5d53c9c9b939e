//! Calibration for data-aware surgeries: the options every calibrated cut shares
//! ([`CalibOptions`], flattened into its command line) and the [`Calibrator`] that reads and
//! tokenises its sentences once and serves what the cut needs, on the chosen device: the Gram
//! matrices XᵀX of every linear's inputs ([`Calibrator::grams`]), layer-by-layer inputs
//! ([`super::layer_inputs`]), Fisher and importance scores ([`super::unit_scores`]) and the
//! held-out layer errors of the cut model ([`super::layer_inputs::heldout_errors`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use faer::Mat;
use serde::{Deserialize, Serialize};

use crate::data::tokenize::WordTokenizer;
use crate::data::{read_dataset, LabelSet, ReadOptions};
use crate::error::{Error, Result};
use crate::eval::{collate, Prepared};
use crate::io::Checkpoint;
use crate::kernels::{Compute, Kernels};
use crate::model::{dropouts_of, Bert, Mode, Outputs, Params};

/// The damping of a least-squares solve when `--damp` is not given, times the mean diagonal of
/// its Gram matrix.
pub(crate) const DEFAULT_DAMP: f64 = 0.01;

/// The calibration options of every calibrated cut. Each cut sets its own default sentence
/// counts ([`defaults`]): Gram matrices settle on a few hundred sentences, Fisher scores want
/// thousands.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct CalibOptions {
    // Where the calibration passes run (the linear algebra stays on the CPU); not part of the
    // spec: the same cut may be computed on another device.
    #[command(flatten)]
    #[serde(skip)]
    pub compute: Compute,
    /// Calibration sentences (CoNLL or JSONL); labelled where the cut scores units on the task
    /// loss.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calib: Option<PathBuf>,
    /// How many calibration sentences to use (the file's first).
    #[arg(long, value_parser = crate::util::options::positive)]
    pub calib_sentences: usize,
    /// Damping of the cut's least-squares solves, times the mean diagonal of their Gram matrix
    /// [default: 0.01].
    #[arg(long, value_parser = crate::util::options::positive_number)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub damp: Option<f64>,
    /// Held-out sentences (e.g. the dev set) on which the cut's error is measured as well: the
    /// calibration error alone flatters the fit.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heldout: Option<PathBuf>,
    /// How many held-out sentences to use.
    #[arg(long, value_parser = crate::util::options::positive)]
    pub heldout_sentences: usize,
}

impl CalibOptions {
    /// The first `sentences` of `calib` (none: no calibration file), on the CPU, with the default
    /// damping and no held-out file.
    pub fn new(calib: Option<PathBuf>, sentences: usize) -> CalibOptions {
        CalibOptions {
            compute: Compute::default(),
            calib,
            calib_sentences: sentences,
            damp: None,
            heldout: None,
            heldout_sentences: sentences,
        }
    }

    /// The damping the least-squares solves use.
    pub(crate) fn damping(&self) -> f64 {
        self.damp.unwrap_or(DEFAULT_DAMP)
    }

    /// The files the options name.
    pub(crate) fn reads(&self) -> Vec<&Path> {
        self.calib
            .iter()
            .chain(&self.heldout)
            .map(PathBuf::as_path)
            .collect()
    }

    /// Refuses `--damp` on a cut that solves nothing, rather than ignoring it.
    pub(crate) fn refuse_damp(&self, cut: &str) -> Result<()> {
        match self.damp {
            Some(d) => Err(Error::Spec(format!(
                "--damp {d}: {cut} solves no least-squares problem, so it has nothing to damp"
            ))),
            None => Ok(()),
        }
    }
}

/// Whether a cut needs its calibration file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Calib {
    Required,
    Optional,
}

/// A cut's calibration defaults, for `#[command(mut_args(calibrate::defaults(..)))]` on its
/// options: whether `--calib` is required, and the default calibration and held-out sentence
/// counts.
pub(crate) fn defaults(
    calib: Calib,
    sentences: &'static str,
    heldout_sentences: &'static str,
) -> impl FnMut(clap::Arg) -> clap::Arg {
    move |arg| {
        let id = arg.get_id().as_str().to_owned();
        match id.as_str() {
            "calib" => arg.required(calib == Calib::Required),
            "calib_sentences" => arg.default_value(sentences).required(false),
            "heldout_sentences" => arg.default_value(heldout_sentences).required(false),
            _ => arg,
        }
    }
}

/// Which input a linear reads (query, key and value share one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Input {
    Attention,
    Context,
    Ffn,
    FfnActivation,
}

impl Input {
    pub fn of(slot: crate::arch::LinearSlot) -> Input {
        use crate::arch::LinearSlot::*;
        match slot {
            Query | Key | Value => Input::Attention,
            AttentionOutput => Input::Context,
            Intermediate => Input::Ffn,
            Output => Input::FfnActivation,
        }
    }
}

/// XᵀX per (stored layer, input), in f64.
pub struct Calibration {
    pub grams: BTreeMap<(usize, Input), Mat<f64>>,
    /// Real tokens the statistics were taken over.
    pub tokens: usize,
    pub sentences: usize,
    /// Set when the file had fewer sentences than asked.
    pub note: Option<String>,
}

/// What a cut reads of its calibration sentences' tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tags {
    /// Nothing: every tag reads as O (the cut looks at the inputs only).
    Ignored,
    /// The model's labels, for scores on the task loss: a tag the model does not know is
    /// refused (as `eval` refuses it), since reading it as O would rank units against wrong
    /// targets.
    Labels,
}

/// Sentences tokenised for the checkpoint being cut.
pub(crate) struct Sentences {
    pub(crate) prepared: Prepared,
    pub(crate) pad_id: u32,
    /// Set when the file had fewer sentences than asked.
    pub(crate) note: Option<String>,
}

/// One cut's calibration: its sentences read and tokenised once, and the device and kernels
/// every pass runs on.
pub struct Calibrator<'a> {
    original: &'a Checkpoint,
    device: Device,
    kernels: Kernels,
    calib: Option<Sentences>,
    heldout: Option<Sentences>,
}

impl<'a> Calibrator<'a> {
    /// Opens the device and reads the held-out sentences and, when the cut uses them (`tags`
    /// given), the calibration sentences.
    pub fn open(
        original: &'a Checkpoint,
        options: &CalibOptions,
        tags: Option<Tags>,
    ) -> Result<Calibrator<'a>> {
        let (device, kernels) = options.compute.open()?;
        let calib = match (tags, &options.calib) {
            (Some(tags), Some(path)) => Some(read_sentences(
                original,
                path,
                options.calib_sentences,
                tags,
            )?),
            _ => None,
        };
        let heldout = options
            .heldout
            .as_deref()
            .map(|path| read_sentences(original, path, options.heldout_sentences, Tags::Ignored))
            .transpose()?;
        Ok(Calibrator {
            original,
            device,
            kernels,
            calib,
            heldout,
        })
    }

    pub(crate) fn original(&self) -> &Checkpoint {
        self.original
    }

    pub(crate) fn device(&self) -> &Device {
        &self.device
    }

    /// The calibration sentences, or the error that `what` (the option asking for them) needs
    /// `--calib`.
    pub(crate) fn calib(&self, what: &str) -> Result<&Sentences> {
        self.calib
            .as_ref()
            .ok_or_else(|| Error::Spec(format!("{what} needs --calib FILE")))
    }

    /// The held-out sentences, when `--heldout` is given.
    pub(crate) fn heldout(&self) -> Option<&Sentences> {
        self.heldout.as_ref()
    }

    /// A checkpoint's model on the calibrator's device, its weights constants.
    pub(crate) fn frozen(&self, ckpt: &Checkpoint) -> Result<Bert> {
        Ok(Bert::load(ckpt, &self.device)?.with_kernels(self.kernels))
    }

    /// A checkpoint's model on the calibrator's device with its weights as variables (for their
    /// gradients, or refits in place).
    pub(crate) fn variables(&self, ckpt: &Checkpoint) -> Result<(Params, Bert)> {
        let params = Params::from_checkpoint(ckpt, &self.device)?;
        let model =
            Bert::new(&ckpt.arch, &params, dropouts_of(&ckpt.config)).with_kernels(self.kernels);
        Ok((params, model))
    }

    /// XᵀX of the original model's linear inputs, accumulated over the real (non-pad) tokens of
    /// the calibration sentences (the forward passes on the device, the sums on the host).
    pub fn grams(&self, what: &str) -> Result<Calibration> {
        let sentences = self.calib(what)?;
        let model = self.frozen(self.original)?;
        let mut grams: BTreeMap<(usize, Input), Mat<f64>> = BTreeMap::new();
        let mut tokens = 0;
        let outputs = Outputs {
            linear_inputs: true,
            ..Default::default()
        };
        let examples: Vec<_> = sentences.prepared.examples.iter().collect();
        let progress =
            crate::util::progress::Progress::new("calibration", examples.len() as u64, "sentences");
        for chunk in examples.chunks(32) {
            progress.inc(chunk.len() as u64);
            let batch = collate(chunk, sentences.pad_id, &self.device)?;
            let real: Vec<u32> = batch
                .batch
                .attention_mask
                .flatten_all()?
                .to_vec1::<f32>()?
                .iter()
                .enumerate()
                .filter(|(_, m)| **m > 0.0)
                .map(|(i, _)| i as u32)
                .collect();
            tokens += real.len();
            let rows = Tensor::from_vec(real.clone(), real.len(), &self.device)?;
            let out = model.forward(&batch.batch, &mut Mode::Eval, outputs)?;
            for (logical, inputs) in out.linear_inputs.iter().enumerate() {
                let stored = self.original.arch.layer_map[logical];
                let mut add = |kind: Input, x: &Tensor| -> Result<()> {
                    let x = x.index_select(&rows, 0)?;
                    let g = x.t()?.matmul(&x)?;
                    let (d, _) = g.dims2()?;
                    let v = g.flatten_all()?.to_vec1::<f32>()?;
                    let entry = grams
                        .entry((stored, kind))
                        .or_insert_with(|| Mat::zeros(d, d));
                    for i in 0..d {
                        for j in 0..d {
                            entry[(i, j)] += v[i * d + j] as f64;
                        }
                    }
                    Ok(())
                };
                add(Input::Attention, &inputs.attention)?;
                if let Some(c) = &inputs.context {
                    add(Input::Context, c)?;
                }
                add(Input::Ffn, &inputs.ffn)?;
                add(Input::FfnActivation, &inputs.ffn_activation)?;
            }
        }
        Ok(Calibration {
            grams,
            tokens,
            sentences: sentences.prepared.data.sentences.len(),
            note: sentences.note.clone(),
        })
    }
}

/// The first `n` sentences of `path` tokenised for `ckpt`, with a note when the file has fewer;
/// no sentence at all is an error.
fn read_sentences(ckpt: &Checkpoint, path: &Path, n: usize, tags: Tags) -> Result<Sentences> {
    let mut data = read_dataset(path, &ReadOptions::default())?;
    let available = data.sentences.len();
    let note = (available < n).then(|| {
        format!(
            "{} has {available} sentences, fewer than the {n} asked; using all of them",
            path.display()
        )
    });
    data.sentences.truncate(n);
    let labels = match tags {
        Tags::Ignored => LabelSet::new(vec!["O".into()])?,
        Tags::Labels => {
            let labels = LabelSet::new(ckpt.require_labels()?)?;
            check_known_tags(&data, &labels)?;
            labels
        }
    };
    let tokenizer = WordTokenizer::from_checkpoint(ckpt)?;
    let max_len = ckpt.arch.max_positions.min(128);
    let prepared = Prepared::for_inference(&tokenizer, data, &labels, max_len)?;
    if prepared.examples.is_empty() {
        return Err(Error::Input {
            path: path.to_path_buf(),
            line: 0,
            msg: "no calibration sentences".into(),
        });
    }
    Ok(Sentences {
        prepared,
        pad_id: tokenizer.pad_id(),
        note,
    })
}

/// Refuses a labelled calibration file with a tag outside the model's labels, naming file:line.
fn check_known_tags(data: &crate::data::Dataset, labels: &LabelSet) -> Result<()> {
    match labels.first_unknown(data) {
        Some((line, tag)) => Err(Error::Input {
            path: data.path.clone(),
            line,
            msg: format!(
                "tag `{tag}` is not one of the model's labels ({}); the scores are computed \
                 on the task loss, so calibration tags must be the model's",
                labels.labels().join(", ")
            ),
        }),
        None => Ok(()),
    }
}
