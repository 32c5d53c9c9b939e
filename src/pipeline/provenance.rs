//! Provenance of a recipe step's output: `step.json` (the completion marker, with the spec hash
//! a rerun compares), `recipe-step.toml` (the step as it ran, variables substituted) and a short
//! model card, `README.md`: what was done, the budget before → after, F1, how to reproduce.

use std::path::Path;

use crate::budget::{group, Budget};
use crate::error::{Error, Result};
use crate::io::artefacts::{read_eval, run_best_dev_f1, write_json, StepFiles, StepRecord};
use crate::io::Checkpoint;
use crate::pipeline::recipe::{Recipe, Step};
use crate::util::shell::shell_words;

/// F1 figures a step produced (training runs and evaluations).
#[derive(Default)]
struct Quality {
    best_dev_f1: Option<f64>,
    test_f1: Option<f64>,
    eval_f1: Option<f64>,
    eval_data: Option<String>,
    tokens_per_s: Option<f64>,
}

fn quality(dir: &Path) -> Result<Quality> {
    let test = read_eval(&dir.join("test.json"))?;
    let eval = read_eval(&dir.join("eval.json"))?;
    Ok(Quality {
        best_dev_f1: run_best_dev_f1(dir)?,
        test_f1: test.map(|t| t.f1),
        eval_f1: eval.as_ref().map(|e| e.f1),
        eval_data: eval.as_ref().map(|e| e.data.display().to_string()),
        tokens_per_s: eval.as_ref().map(|e| e.tokens_per_s),
    })
}

fn unique_params(checkpoint: &Path) -> Option<u64> {
    let ckpt = Checkpoint::open(checkpoint).ok()?;
    Budget::of_checkpoint(&ckpt).ok().map(|b| b.unique)
}

fn write(path: &Path, text: &str) -> Result<()> {
    crate::io::atomic::write_text(path, text)
}

/// Writes the provenance files of a finished step; `step.json` last, as the completion marker.
/// `dir` is the step's folder and `output` the checkpoint it hands on.
pub fn record(
    recipe: &Recipe,
    step: &Step,
    dir: &Path,
    output: &Path,
    argv: &[String],
    seconds: f64,
    files: StepFiles,
) -> Result<()> {
    let input = std::path::PathBuf::from(&argv[step.kind.name().split(' ').count()]);
    let before = unique_params(&input);
    let after = unique_params(output);
    let q = quality(dir)?;
    let history = Checkpoint::open(output)
        .map(|c| c.history())
        .unwrap_or_default();

    let fragment = format!(
        "# Step {} of recipe `{}` ({}), variables substituted.\n[[step]]\n{}",
        step.index + 1,
        recipe.name,
        recipe.path.display(),
        toml::to_string(&step.fragment)
            .map_err(|e| Error::Internal(format!("serialising step {}: {e}", step.name)))?
    );
    write(&dir.join("recipe-step.toml"), &fragment)?;

    let mut card = format!(
        "# {} — step {} of recipe `{}`\n\n`{}` on `{}`; made by surgery {} in {seconds:.1} s.\n\n",
        step.name,
        step.index + 1,
        recipe.name,
        step.kind.name(),
        input.display(),
        crate::util::build_info::VERSION,
    );
    if let (Some(b), Some(a)) = (before, after) {
        card.push_str(&format!(
            "| unique parameters | |\n|---|---:|\n| before | {} |\n| after | {} |\n| change | {:+.1}% |\n\n",
            group(b),
            group(a),
            100.0 * (a as f64 / b as f64 - 1.0)
        ));
    }
    let mut quality_lines = vec![];
    if let Some(f) = q.best_dev_f1 {
        quality_lines.push(format!("- best dev F1: {f:.4}"));
    }
    if let Some(f) = q.test_f1 {
        quality_lines.push(format!("- test F1 (best checkpoint): {f:.4}"));
    }
    if let (Some(f), Some(data)) = (q.eval_f1, &q.eval_data) {
        quality_lines.push(format!("- F1 on `{data}`: {f:.4}"));
    }
    if let Some(t) = q.tokens_per_s {
        quality_lines.push(format!("- inference: {t:.0} tokens/s"));
    }
    if !quality_lines.is_empty() {
        card.push_str(&format!("Quality:\n\n{}\n\n", quality_lines.join("\n")));
    }
    if !history.is_empty() {
        card.push_str("History of the model:\n\n");
        for (i, h) in history.iter().enumerate() {
            card.push_str(&format!(
                "{}. `{}` — {} → {} unique parameters\n",
                i + 1,
                h.op,
                group(h.params_before),
                group(h.params_after)
            ));
        }
        card.push('\n');
    }
    card.push_str(&format!(
        "## Reproduce\n\n```sh\nsurgery run {} --from {}   # this step and the ones after it\nsurgery {}   # this step alone\n```\n\nThe step as written in the recipe: `recipe-step.toml`.\n",
        recipe.path.display(),
        step.name,
        shell_words(argv)
    ));
    write(&dir.join("README.md"), &card)?;
    if step.kind.is_training() && output.is_dir() {
        write(&output.join("README.md"), &card)?;
    }

    let record = StepRecord {
        recipe: recipe.name.clone(),
        recipe_file: recipe.path.clone(),
        step: step.index + 1,
        name: step.name.clone(),
        kind: step.kind.name().to_string(),
        hash: step.hash.clone(),
        argv: argv.to_vec(),
        input,
        output: output.to_path_buf(),
        seconds,
        finished_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        params_before: before,
        params_after: after,
        best_dev_f1: q.best_dev_f1,
        test_f1: q.test_f1,
        eval_f1: q.eval_f1,
        eval_data: q.eval_data,
        tokens_per_s: q.tokens_per_s,
        files: Some(files),
    };
    write_json(&dir.join("step.json"), &record)
}
