//! Provenance of a recipe step's output: `step.json` (the completion marker, with the spec hash
//! a rerun compares), `recipe-step.toml` (the step as it ran, variables substituted) and a short
//! model card, `README.md`: what was done, the budget before → after, F1, how to reproduce.

use std::path::Path;

use anyhow::Context;

use surgery::budget::Budget;
use surgery::io::Checkpoint;
use surgery::pipeline::recipe::Step;

use super::recipe::{shell_words, Plan};
use surgery::budget::group;

/// F1 figures a step produced (training runs and evaluations).
#[derive(Default)]
struct Quality {
    best_dev_f1: Option<f64>,
    test_f1: Option<f64>,
    eval_f1: Option<f64>,
    eval_data: Option<String>,
    tokens_per_s: Option<f64>,
}

fn read_json(path: &Path) -> Option<serde_json::Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

fn quality(dir: &Path) -> Quality {
    let best_dev_f1 = std::fs::read_to_string(dir.join("metrics.jsonl"))
        .ok()
        .and_then(|text| {
            text.lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|v| v["eval"] == "dev")
                .filter_map(|v| v["f1"].as_f64())
                .reduce(f64::max)
        });
    let test_f1 =
        read_json(&dir.join("test.json")).and_then(|v| v["report"]["micro"]["f1"].as_f64());
    let eval = read_json(&dir.join("eval.json"));
    Quality {
        best_dev_f1,
        test_f1,
        eval_f1: eval.as_ref().and_then(|v| v["f1"].as_f64()),
        eval_data: eval
            .as_ref()
            .and_then(|v| v["data"].as_str().map(String::from)),
        tokens_per_s: eval.as_ref().and_then(|v| v["tokens_per_s"].as_f64()),
    }
}

fn unique_params(checkpoint: &Path) -> Option<u64> {
    let ckpt = Checkpoint::open(checkpoint).ok()?;
    Budget::of_checkpoint(&ckpt).ok().map(|b| b.unique)
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    surgery::io::atomic::write_text(path, text)
        .with_context(|| format!("writing {}", path.display()))
}

/// Writes the provenance files of a finished step; `step.json` last, as the completion marker.
pub fn record(plan: &Plan, step: &Step, argv: &[String], seconds: f64) -> anyhow::Result<()> {
    let dir = plan.dir(step.index);
    let input = std::path::PathBuf::from(&argv[step.kind.name().split(' ').count()]);
    let output = plan.output_checkpoint(step.index);
    let before = unique_params(&input);
    let after = unique_params(&output);
    let q = quality(&dir);
    let history = Checkpoint::open(&output)
        .map(|c| c.history())
        .unwrap_or_default();

    let fragment = format!(
        "# Step {} of recipe `{}` ({}), variables substituted.\n[[step]]\n{}",
        step.index + 1,
        plan.recipe.name,
        plan.recipe.path.display(),
        toml::to_string(&step.fragment).context("serialising the step")?
    );
    write(&dir.join("recipe-step.toml"), &fragment)?;

    let mut card = format!(
        "# {} — step {} of recipe `{}`\n\n`{}` on `{}`; made by surgery {} in {seconds:.1} s.\n\n",
        step.name,
        step.index + 1,
        plan.recipe.name,
        step.kind.name(),
        input.display(),
        env!("CARGO_PKG_VERSION"),
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
        plan.recipe.path.display(),
        step.name,
        shell_words(argv)
    ));
    write(&dir.join("README.md"), &card)?;
    if step.kind.is_training() && output.is_dir() {
        write(&output.join("README.md"), &card)?;
    }

    let record = serde_json::json!({
        "recipe": plan.recipe.name, "recipe_file": plan.recipe.path, "step": step.index + 1,
        "name": step.name, "kind": step.kind.name(), "hash": step.hash, "argv": argv,
        "input": input, "output": output, "seconds": seconds,
        "finished_unix": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "params_before": before, "params_after": after,
        "best_dev_f1": q.best_dev_f1, "test_f1": q.test_f1, "eval_f1": q.eval_f1,
        "eval_data": q.eval_data, "tokens_per_s": q.tokens_per_s,
    });
    write(
        &dir.join("step.json"),
        &serde_json::to_string_pretty(&record).expect("json"),
    )
}
