//! `surgery report`: reads recipe run folders (`NN-step/step.json`) and training run folders
//! (`run.json`, `metrics.jsonl`, `test.json`) and writes a Markdown report with SVG plots: F1 vs
//! unique parameters (Pareto front marked), training loss and dev F1 curves, head-gate
//! trajectories, inference tokens/s vs parameters.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::budget::group;
use crate::error::{Error, Result};
use crate::io::artefacts::{
    read_eval, read_json, read_metrics, read_optional, run_best_dev_f1, MetricLine, RunRecord,
    StepRecord,
};
use crate::pipeline::plot::{Chart, Series, Style};
use crate::pipeline::seeds::{config_key, seed_groups, MeanSd, SeededRun};

/// One finished step of a recipe, or one training run outside recipes.
#[derive(Debug, Clone)]
pub struct Entry {
    /// `recipe/NN-name`, or the run folder's name.
    pub label: String,
    pub name: String,
    pub kind: String,
    pub dir: PathBuf,
    pub input: Option<String>,
    pub output: Option<String>,
    pub params: Option<u64>,
    pub best_dev_f1: Option<f64>,
    pub test_f1: Option<f64>,
    pub eval_f1: Option<f64>,
    pub tokens_per_s: Option<f64>,
    pub seconds: Option<f64>,
    /// For training runs: the configuration without the seed (`seeds::config_key`), and the seed.
    pub seeded: Option<(String, u64)>,
}

/// A model in the comparison: a training run's best checkpoint (or an evaluated surgery output).
#[derive(Debug, Clone)]
pub struct Model {
    pub name: String,
    /// What made it, oldest first (the chain of steps from the recipe's first input).
    pub chain: Vec<String>,
    pub params: u64,
    pub test_f1: Option<f64>,
    pub tokens_per_s: Option<f64>,
    /// Seconds of the steps that made it (for the teacher: its own training), when recorded.
    pub seconds: Option<f64>,
    pub best_dev_f1: Option<f64>,
    /// The configuration without the seed, and the seed (training runs only).
    pub seeded: Option<(String, u64)>,
}

/// Reads every entry under the given folders (recipe run folders, run folders, or folders of
/// run folders).
pub fn collect(dirs: &[PathBuf]) -> Result<Vec<Entry>> {
    let mut entries = vec![];
    for dir in dirs {
        if !dir.is_dir() {
            return Err(Error::Spec(format!("{}: not a folder", dir.display())));
        }
        let before = entries.len();
        let mut subdirs: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect();
        subdirs.sort();
        if dir.join("run.json").exists() {
            entries.push(run_entry(dir)?);
        }
        // In a recipe's folder, a step without step.json is unfinished (or failed): left out.
        let is_recipe = subdirs.iter().any(|s| s.join("step.json").exists());
        for sub in &subdirs {
            if let Some(step) = read_optional::<StepRecord>(&sub.join("step.json"))? {
                entries.push(step_entry(sub, step)?);
            } else if !is_recipe && sub.join("run.json").exists() {
                entries.push(run_entry(sub)?);
            }
        }
        if entries.len() == before {
            return Err(Error::Spec(format!(
                "{}: no recipe steps (NN-name/step.json) or training runs (run.json) found",
                dir.display()
            )));
        }
    }
    Ok(entries)
}

fn step_entry(dir: &Path, step: StepRecord) -> Result<Entry> {
    // A training step's folder also holds the run's own run.json, which records the seed. Read
    // loosely: an older layout still gives its seed; only unreadable JSON is an error.
    let seed = read_optional::<serde_json::Value>(&dir.join("run.json"))?
        .and_then(|run| spec_seed(run.get("spec")?));
    let seeded = seed.map(|seed| (config_key(&step.argv), seed));
    Ok(Entry {
        label: format!(
            "{}/{}",
            step.recipe,
            dir.file_name().unwrap_or_default().to_string_lossy()
        ),
        name: step.name,
        kind: step.kind,
        dir: dir.to_path_buf(),
        input: Some(step.input.display().to_string()),
        output: Some(step.output.display().to_string()),
        params: step.params_after,
        best_dev_f1: step.best_dev_f1,
        test_f1: step.test_f1,
        eval_f1: step.eval_f1,
        tokens_per_s: step.tokens_per_s,
        seconds: Some(step.seconds),
        seeded,
    })
}

/// The seed a training run recorded in its spec (`TrainSpec::seed`).
fn spec_seed(spec: &serde_json::Value) -> Option<u64> {
    spec.get("seed")?.as_u64()
}

fn run_entry(dir: &Path) -> Result<Entry> {
    let run: RunRecord = read_json(&dir.join("run.json"))?;
    let test = read_eval(&dir.join("test.json"))?;
    // The command without the binary's path, which differs between builds.
    let seeded =
        spec_seed(&run.spec).map(|seed| (config_key(run.command.get(1..).unwrap_or(&[])), seed));
    let name = dir
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    Ok(Entry {
        label: name.clone(),
        name,
        kind: run.op,
        dir: dir.to_path_buf(),
        input: None,
        output: Some(dir.join("best").display().to_string()),
        params: Some(run.unique_parameters),
        best_dev_f1: run_best_dev_f1(dir)?,
        test_f1: test.map(|t| t.f1),
        eval_f1: None,
        tokens_per_s: None,
        // Only recipe steps record their wall time (step.json).
        seconds: None,
        seeded,
    })
}

/// The models to compare: training outputs (gate runs excluded: their gated model is not a
/// product), with the tokens/s and F1 of the evaluations that read them.
pub fn models(entries: &[Entry]) -> Vec<Model> {
    let by_output: BTreeMap<&str, &Entry> = entries
        .iter()
        .filter_map(|e| Some((e.output.as_deref()?, e)))
        .filter(|(_, e)| e.kind != "eval" && e.kind != "assert-budget")
        .collect();
    let mut models = vec![];
    for e in entries {
        let evals: Vec<&Entry> = entries
            .iter()
            .filter(|v| v.kind == "eval" && v.input == e.output && e.output.is_some())
            .collect();
        let trained = e.kind.starts_with("train") && e.kind != "train gates";
        if e.kind == "eval" || e.kind == "assert-budget" || (!trained && evals.is_empty()) {
            continue;
        }
        let Some(params) = e.params else { continue };
        let steps = chain(e, &by_output);
        let is_root = steps.len() == 1;
        let timed: Vec<f64> = steps
            .iter()
            .skip(usize::from(!is_root))
            .filter_map(|s| s.seconds)
            .collect();
        let seconds = (!timed.is_empty()).then(|| timed.iter().fold(0.0, |a, b| a + b));
        models.push(Model {
            name: e.name.clone(),
            chain: steps
                .iter()
                .map(|s| format!("{} ({})", s.name, s.kind))
                .collect(),
            params,
            test_f1: e.test_f1.or_else(|| evals.iter().find_map(|v| v.eval_f1)),
            tokens_per_s: evals.iter().find_map(|v| v.tokens_per_s),
            seconds,
            best_dev_f1: e.best_dev_f1,
            seeded: e.seeded.clone().filter(|_| trained),
        });
    }
    models
}

/// The chain of steps that made an entry's output, oldest first.
fn chain<'a>(e: &'a Entry, by_output: &BTreeMap<&str, &'a Entry>) -> Vec<&'a Entry> {
    let mut out = vec![e];
    let mut cur = e;
    while let Some(&prev) = cur.input.as_deref().and_then(|i| by_output.get(i)) {
        if out.iter().any(|x| std::ptr::eq(*x, prev)) {
            break;
        }
        out.push(prev);
        cur = prev;
    }
    out.reverse();
    out
}

/// Indices of the models on the Pareto front: no other model has fewer (or equal) parameters
/// and a higher F1.
pub fn pareto_front(models: &[Model]) -> Vec<usize> {
    let mut scored: Vec<(usize, u64, f64)> = models
        .iter()
        .enumerate()
        .filter_map(|(i, m)| Some((i, m.params, m.test_f1?)))
        .collect();
    scored.sort_by(|a, b| a.1.cmp(&b.1).then(b.2.total_cmp(&a.2)));
    let mut front = vec![];
    let mut best = f64::NEG_INFINITY;
    for (i, _, f1) in scored {
        if f1 > best {
            front.push(i);
            best = f1;
        }
    }
    front
}

/// The written report: Markdown text and the SVG files it links to.
pub struct Rendered {
    pub markdown: String,
    pub files: Vec<(String, String)>,
    /// The assignment-style table alone (for docs/results.md).
    pub table: String,
}

fn pct(a: f64, b: f64) -> String {
    format!("{:.1}%", 100.0 * a / b)
}

/// Builds the report. `teacher` names the reference model (default: the first root model).
pub fn build(entries: &[Entry], teacher: Option<&str>, command: &str) -> Result<Rendered> {
    let models = models(entries);
    if models.is_empty() {
        return Err(Error::Spec(
            "no trained or evaluated models in these folders".into(),
        ));
    }
    let reference = match teacher {
        Some(name) => models.iter().find(|m| m.name == name).ok_or_else(|| {
            Error::Spec(format!(
                "--teacher `{name}`: no such model (models: {})",
                models
                    .iter()
                    .map(|m| m.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?,
        None => models
            .iter()
            .find(|m| m.chain.len() == 1)
            .unwrap_or(&models[0]),
    };
    let front = pareto_front(&models);

    let mut table = format!(
        "Reference: **{}** ({} unique parameters, test F1 {}). Regenerate with `{command}`.\n\n\
         | model | made by | unique params | % of reference | test F1 | % of reference F1 | tokens/s | time (s) |\n\
         |---|---|---:|---:|---:|---:|---:|---:|\n",
        reference.name,
        group(reference.params),
        reference.test_f1.map_or("—".into(), |f| format!("{f:.4}"))
    );
    for (i, m) in models.iter().enumerate() {
        let f1 = m.test_f1.map_or("—".into(), |f| format!("{f:.4}"));
        let rel = match (m.test_f1, reference.test_f1) {
            (Some(a), Some(b)) => pct(a, b),
            _ => "—".into(),
        };
        let made_by = m
            .chain
            .iter()
            .skip(usize::from(m.chain.len() > 1))
            .cloned()
            .collect::<Vec<_>>()
            .join(" → ");
        let _ = std::fmt::Write::write_fmt(
            &mut table,
            format_args!(
                "| {}{} | {} | {} | {} | {} | {} | {} | {} |\n",
                m.name,
                if front.contains(&i) { " ★" } else { "" },
                made_by,
                group(m.params),
                pct(m.params as f64, reference.params as f64),
                f1,
                rel,
                m.tokens_per_s.map_or("—".into(), |t| format!("{t:.0}")),
                m.seconds.map_or("—".into(), |s| format!("{s:.0}"))
            ),
        );
    }
    table.push_str("\n★ on the Pareto front (no model with fewer or equal parameters has a higher test F1). Time: the seconds of the steps that made the model after the reference (for the reference, its own training).\n");
    table.push_str(&seeds_table(&models, reference.test_f1));

    let mut files = vec![];
    files.push((
        "f1-vs-params.svg".to_string(),
        f1_chart(&models, &front).to_svg(),
    ));
    let (loss, dev) = curve_charts(entries)?;
    if let Some(c) = loss {
        files.push(("training-loss.svg".into(), c.to_svg()));
    }
    if let Some(c) = dev {
        files.push(("dev-f1.svg".into(), c.to_svg()));
    }
    if let Some(c) = speed_chart(&models) {
        files.push(("tokens-per-s.svg".into(), c.to_svg()));
    }
    for e in entries.iter().filter(|e| e.kind == "train gates") {
        let metrics = read_metrics(&e.dir.join("metrics.jsonl"))?;
        if let Some(svg) = crate::train::gates::gates_svg(&metrics) {
            files.push((format!("gates-{}.svg", e.name), svg));
        }
    }

    let mut md =
        format!("# Compression report\n\nGenerated by `{command}`.\n\n## Models\n\n{table}\n");
    for (file, _) in &files {
        let title = match file.as_str() {
            "f1-vs-params.svg" => "Test F1 vs unique parameters".to_string(),
            "training-loss.svg" => "Training loss".to_string(),
            "dev-f1.svg" => "Dev F1 during training".to_string(),
            "tokens-per-s.svg" => "Inference speed vs unique parameters".to_string(),
            other => format!(
                "Head gates ({})",
                other.trim_start_matches("gates-").trim_end_matches(".svg")
            ),
        };
        md.push_str(&format!("## {title}\n\n![{title}]({file})\n\n"));
    }
    let steps: Vec<&Entry> = entries.iter().filter(|e| e.label.contains('/')).collect();
    if !steps.is_empty() {
        md.push_str("## Recipe steps\n\n| step | kind | unique params after | seconds |\n|---|---|---:|---:|\n");
        let mut total = 0.0;
        for e in &steps {
            total += e.seconds.unwrap_or(0.0);
            md.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                e.label,
                e.kind,
                e.params.map_or("—".into(), group),
                e.seconds.map_or("—".into(), |s| format!("{s:.1}"))
            ));
        }
        md.push_str(&format!("| **total** | | | **{total:.1}** |\n"));
    }
    Ok(Rendered {
        markdown: md,
        files,
        table,
    })
}

/// The runs that differ only in their seed, as mean ± sd; empty when there are none.
fn seeds_table(models: &[Model], reference_f1: Option<f64>) -> String {
    let runs: Vec<SeededRun> = models
        .iter()
        .filter_map(|m| {
            let (config, seed) = m.seeded.clone()?;
            Some(SeededRun {
                name: m.name.clone(),
                config,
                seed,
                best_dev_f1: m.best_dev_f1,
                test_f1: m.test_f1?,
            })
        })
        .collect();
    let groups = seed_groups(&runs);
    if groups.is_empty() {
        return String::new();
    }
    let show = |v: MeanSd| format!("{:.4} ± {:.4}", v.mean, v.sd);
    let mut out = String::from(
        "\n**Over seeds** (runs whose settings differ only in the seed; sample sd):\n\n\
         | runs | seeds | best dev F1 | test F1 | % of reference F1 |\n|---|---|---:|---:|---:|\n",
    );
    for g in groups {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            g.names.join(", "),
            g.seeds
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            g.best_dev_f1.map_or("—".into(), show),
            show(g.test_f1),
            reference_f1.map_or("—".into(), |r| pct(g.test_f1.mean, r)),
        ));
    }
    out
}

fn f1_chart(models: &[Model], front: &[usize]) -> Chart {
    let mut all = Series::new("model", vec![], Style::LabelledPoints);
    for m in models {
        if let Some(f1) = m.test_f1 {
            all.points.push((m.params as f64 / 1e6, f1));
            all.labels.push(m.name.clone());
        }
    }
    let mut front_points: Vec<(f64, f64)> = front
        .iter()
        .filter_map(|&i| Some((models[i].params as f64 / 1e6, models[i].test_f1?)))
        .collect();
    front_points.sort_by(|a, b| a.0.total_cmp(&b.0));
    let max_params = models.iter().map(|m| m.params).max().unwrap_or(1) as f64 / 1e6;
    Chart {
        title: "Test F1 vs unique parameters".into(),
        x_label: "unique parameters (millions)".into(),
        y_label: "test F1 (entity-level, micro)".into(),
        series: vec![
            all,
            Series::new("Pareto front", front_points, Style::Dashed),
        ],
        x_range: Some((0.0, max_params * 1.15)),
        y_range: None,
    }
}

/// Training loss and dev F1 against the optimizer step, one line per training run.
fn curve_charts(entries: &[Entry]) -> Result<(Option<Chart>, Option<Chart>)> {
    let mut loss = vec![];
    let mut dev = vec![];
    for e in entries.iter().filter(|e| e.kind.starts_with("train")) {
        let path = e.dir.join("metrics.jsonl");
        if !path.exists() {
            continue;
        }
        let lines = read_metrics(&path)?;
        let train: Vec<(f64, f64)> = lines
            .iter()
            .filter_map(|l| match l {
                MetricLine::Train(t) => Some((t.step as f64, t.loss)),
                MetricLine::Eval(_) => None,
            })
            .collect();
        let evals: Vec<(f64, f64)> = lines
            .iter()
            .filter_map(|l| match l {
                MetricLine::Eval(v) if v.eval == "dev" => Some((v.step as f64, v.f1)),
                _ => None,
            })
            .collect();
        // Gate runs add the L0 penalty to the loss: another scale, left out of the loss chart.
        if !train.is_empty() && e.kind != "train gates" {
            loss.push(Series::new(e.name.clone(), train, Style::Line));
        }
        if !evals.is_empty() {
            let style = if evals.len() == 1 {
                Style::Points
            } else {
                Style::Line
            };
            dev.push(Series::new(e.name.clone(), evals, style));
        }
    }
    let chart = |title: &str, y: &str, series: Vec<Series>| {
        (!series.is_empty()).then(|| Chart {
            title: title.into(),
            x_label: "optimizer step".into(),
            y_label: y.into(),
            series,
            x_range: None,
            y_range: None,
        })
    };
    Ok((
        chart("Training loss", "loss (logged mean)", loss),
        chart("Dev F1 during training", "dev F1", dev),
    ))
}

fn speed_chart(models: &[Model]) -> Option<Chart> {
    let mut s = Series::new("model", vec![], Style::LabelledPoints);
    for m in models {
        if let Some(t) = m.tokens_per_s {
            s.points.push((m.params as f64 / 1e6, t));
            s.labels.push(m.name.clone());
        }
    }
    let max_params = models.iter().map(|m| m.params).max().unwrap_or(1) as f64 / 1e6;
    (!s.points.is_empty()).then(|| Chart {
        title: "Inference speed (the eval steps of the runs, test set)".into(),
        x_label: "unique parameters (millions)".into(),
        y_label: "tokens per second".into(),
        series: vec![s],
        x_range: Some((0.0, max_params * 1.15)),
        y_range: None,
    })
}

/// Replaces the text between `<!-- report:begin -->` and `<!-- report:end -->` in a file.
pub fn splice(text: &str, replacement: &str) -> Option<String> {
    const BEGIN: &str = "<!-- report:begin -->";
    const END: &str = "<!-- report:end -->";
    let a = text.find(BEGIN)? + BEGIN.len();
    let b = a + text[a..].find(END)?;
    Some(format!(
        "{}\n{}\n{}",
        &text[..a],
        replacement.trim_end(),
        &text[b..]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(name: &str, params: u64, f1: Option<f64>) -> Model {
        Model {
            name: name.into(),
            chain: vec![name.into()],
            params,
            test_f1: f1,
            tokens_per_s: None,
            seconds: None,
            best_dev_f1: None,
            seeded: None,
        }
    }

    #[test]
    fn the_pareto_front_keeps_models_no_smaller_model_beats() {
        let models = vec![
            model("big", 100, Some(0.90)),
            model("mid", 50, Some(0.88)),
            model("worse-mid", 60, Some(0.85)),
            model("small", 10, Some(0.70)),
            model("untested", 5, None),
            model("tie", 50, Some(0.80)),
        ];
        let front: Vec<&str> = pareto_front(&models)
            .into_iter()
            .map(|i| models[i].name.as_str())
            .collect();
        assert_eq!(front, ["small", "mid", "big"]);
    }

    #[test]
    fn splice_replaces_only_the_marked_section() {
        let text = "intro\n<!-- report:begin -->\nold\n<!-- report:end -->\noutro\n";
        let out = splice(text, "new table\n").unwrap();
        assert_eq!(
            out,
            "intro\n<!-- report:begin -->\nnew table\n<!-- report:end -->\noutro\n"
        );
        assert!(splice("no markers", "x").is_none());
    }
}
