//! `surgery report`: reads recipe run folders (`NN-step/step.json`) and training run folders
//! (`run.json`, `metrics.jsonl`, `test.json`) and writes a Markdown report with SVG plots: F1 vs
//! unique parameters (Pareto front, the teacher and the goal marked), training loss and dev F1
//! curves, head-gate trajectories, inference tokens/s vs parameters. The pictures stay readable
//! with dozens of runs: runs that differ only in their seed are one point (mean ± sd), cut
//! families have their own colour and marker, and the curves are one small chart per family.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::budget::group;
use crate::error::{Error, Result};
use crate::io::artefacts::{
    read_eval, read_json, read_metrics, read_optional, run_best_dev_f1, MetricLine, RunRecord,
    StepRecord,
};
use crate::pipeline::plot::{grid_svg, Chart, Reference, Series, Style};
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
    /// For training runs: the operations that made the starting checkpoint, as `run.json`
    /// recorded them (`RunRecord::input_history`; `None` in runs made before it was recorded).
    pub input_history: Option<Vec<String>>,
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
    /// The cut family: the surgeries that made it, in order (`family_of`).
    pub family: String,
}

/// The share of the teacher's test F1 the F1 chart marks as the goal (the assignment's 97%).
pub const GOAL_FRACTION: f64 = 0.97;

/// Family of the models no surgery touched (the teacher, fine-tuned baselines).
const UNCUT: &str = "no cut";

/// Family of the models whose cuts nothing records: a copy of a run without its checkpoints,
/// made before `run.json` recorded the starting checkpoint's history.
const NOT_RECORDED: &str = "cuts not recorded";

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
    let run = read_optional::<serde_json::Value>(&dir.join("run.json"))?;
    let seed = run.as_ref().and_then(|run| spec_seed(run.get("spec")?));
    let seeded = seed.map(|seed| (config_key(&step.argv), seed));
    let input_history =
        run.and_then(|run| serde_json::from_value(run.get("input_history")?.clone()).ok());
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
        input_history,
    })
}

/// The seed a training run recorded in its spec (`TrainSpec::seed`).
fn spec_seed(spec: &serde_json::Value) -> Option<u64> {
    spec.get("seed")?.as_u64()
}

fn run_entry(dir: &Path) -> Result<Entry> {
    let run: RunRecord = read_json(&dir.join("run.json"))?;
    let test = read_eval(&dir.join("test.json"))?;
    // The command without the binary's path, which differs between builds. A recipe step's
    // copy without its step.json records only `run RECIPE`, which says nothing of its settings:
    // it is compared with no other run.
    let args = run.command.get(1..).unwrap_or(&[]);
    let seeded = spec_seed(&run.spec)
        .filter(|_| args.first().map(String::as_str) != Some("run"))
        .map(|seed| (config_key(args), seed));
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
        input_history: run.input_history,
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
        let family = family_of(e, &steps);
        models.push(Model {
            name: e.name.clone(),
            family,
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

/// The cut family of an entry's model: the surgeries in its checkpoint's history (`config.json`)
/// when it is there to read, else in the history its `run.json` recorded, else the surgery steps
/// of its recipe chain; "no cut" when the record has none, "cuts not recorded" when nothing
/// records them.
fn family_of(e: &Entry, steps: &[&Entry]) -> String {
    let is_surgery = |op: &str| !op.starts_with("train") && op != "eval" && op != "assert-budget";
    let ops = checkpoint_history(&e.dir)
        .or_else(|| {
            // A trained model's starting checkpoint, plus this run.
            let mut ops = e.input_history.clone()?;
            ops.push(e.kind.clone());
            Some(ops)
        })
        .or_else(|| {
            let kinds: Vec<String> = steps.iter().map(|s| s.kind.clone()).collect();
            kinds.iter().any(|k| is_surgery(k)).then_some(kinds)
        });
    let Some(ops) = ops else {
        return NOT_RECORDED.to_string();
    };
    let mut family: Vec<String> = vec![];
    for op in ops.into_iter().filter(|op| is_surgery(op)) {
        if !family.contains(&op) {
            family.push(op);
        }
    }
    if family.is_empty() {
        UNCUT.to_string()
    } else {
        family.join(" + ")
    }
}

/// The operations in the history of the model in `dir` (a training run's `best/`, or a surgery
/// step's folder), when its `config.json` is there to read.
fn checkpoint_history(dir: &Path) -> Option<Vec<String>> {
    ["best/config.json", "config.json"].iter().find_map(|file| {
        let bytes = std::fs::read(dir.join(file)).ok()?;
        let config: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
        let history = config.get("surgery")?.get("history")?.as_array()?;
        Some(
            history
                .iter()
                .filter_map(|h| h.get("op")?.as_str().map(String::from))
                .collect(),
        )
    })
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
    let families = family_order(&models);
    let points = plotted_points(&models);
    files.push((
        "f1-vs-params.svg".to_string(),
        f1_chart(&points, &families, reference).to_svg(),
    ));
    let (loss, dev) = curve_charts(entries, &models)?;
    let grid = |title: &str, charts: &[Chart]| grid_svg(title, charts, charts.len().min(3));
    if !loss.is_empty() {
        files.push((
            "training-loss.svg".into(),
            grid("Training loss, by cut family", &loss),
        ));
    }
    if !dev.is_empty() {
        files.push((
            "dev-f1.svg".into(),
            grid("Dev F1 during training, by cut family", &dev),
        ));
    }
    if let Some(c) = speed_chart(&models, &families) {
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

/// One point of the F1 and speed charts: a model, or the runs of one configuration with
/// different seeds (their mean, with the sample sd as the error).
#[derive(Debug, Clone)]
struct Point {
    label: String,
    family: String,
    params: u64,
    test_f1: Option<MeanSd>,
    tokens_per_s: Option<f64>,
    runs: usize,
}

/// The families in the order their first model appears, the uncut ones first.
fn family_order(models: &[Model]) -> Vec<String> {
    // The uncut models (the reference among them) first: they are what the others are read by.
    let mut order: Vec<String> = vec![];
    if models.iter().any(|m| m.family == UNCUT) {
        order.push(UNCUT.to_string());
    }
    for m in models {
        if !order.contains(&m.family) {
            order.push(m.family.clone());
        }
    }
    order
}

/// The models as plotted: the runs of a seed group (`seeds::seed_groups`) become one point, at
/// the group's mean; every other model is a point of its own. A run that repeats a group's seed
/// is left out, as in the table of seed groups.
fn plotted_points(models: &[Model]) -> Vec<Point> {
    let runs: Vec<SeededRun> = models
        .iter()
        .enumerate()
        .filter_map(|(i, m)| {
            let (config, seed) = m.seeded.clone()?;
            Some(SeededRun {
                name: i.to_string(),
                config,
                seed,
                best_dev_f1: m.best_dev_f1,
                test_f1: m.test_f1?,
            })
        })
        .collect();
    let groups = seed_groups(&runs);
    let grouped_configs: Vec<&str> = groups
        .iter()
        .filter_map(|g| models[g.names[0].parse::<usize>().ok()?].seeded.as_ref())
        .map(|(config, _)| config.as_str())
        .collect();
    let mut points = vec![];
    for (i, m) in models.iter().enumerate() {
        let config = m.seeded.as_ref().map(|(c, _)| c.as_str());
        let in_group = m.test_f1.is_some() && config.is_some_and(|c| grouped_configs.contains(&c));
        if !in_group {
            points.push(Point {
                label: m.name.clone(),
                family: m.family.clone(),
                params: m.params,
                test_f1: m.test_f1.map(|f| MeanSd { mean: f, sd: 0.0 }),
                tokens_per_s: m.tokens_per_s,
                runs: 1,
            });
            continue;
        }
        // The group's point goes where its first run is.
        let Some(g) = groups.iter().find(|g| g.names[0] == i.to_string()) else {
            continue;
        };
        let members: Vec<&Model> = g
            .names
            .iter()
            .filter_map(|n| models.get(n.parse::<usize>().ok()?))
            .collect();
        let speeds: Vec<f64> = members.iter().filter_map(|m| m.tokens_per_s).collect();
        points.push(Point {
            label: format!(
                "{} ({} seeds)",
                without_seed(&m.name, m.seeded.as_ref().map(|s| s.1)),
                members.len()
            ),
            family: m.family.clone(),
            params: m.params,
            test_f1: Some(g.test_f1),
            tokens_per_s: (!speeds.is_empty())
                .then(|| speeds.iter().sum::<f64>() / speeds.len() as f64),
            runs: members.len(),
        });
    }
    points
}

/// A run's name without the seed it ends with (`a6-s42` → `a6`), to name its seed group.
fn without_seed(name: &str, seed: Option<u64>) -> &str {
    let Some(seed) = seed else { return name };
    ["-s", "-seed", "_s", "_seed"]
        .iter()
        .find_map(|sep| name.strip_suffix(&format!("{sep}{seed}")))
        .filter(|rest| !rest.is_empty())
        .unwrap_or(name)
}

/// One labelled series per family that has points here, in the order of `families`, coloured by
/// its place among them.
fn family_series(
    points: &[&Point],
    families: &[String],
    value: impl Fn(&Point) -> Option<(f64, f64, String)>,
) -> Vec<Series> {
    let mut out = vec![];
    for family in families {
        let mut s = Series::new(family.clone(), vec![], Style::LabelledPoints);
        s.color = Some(out.len());
        // Largest models first, so the key reads like the chart from right to left.
        let mut members: Vec<&&Point> = points.iter().filter(|p| &p.family == family).collect();
        members.sort_by(|a, b| b.params.cmp(&a.params));
        for p in members {
            if let Some((y, error, text)) = value(p) {
                s.points.push((p.params as f64 / 1e6, y));
                s.errors.push(error);
                s.labels.push(text);
            }
        }
        if !s.points.is_empty() {
            out.push(s);
        }
    }
    out
}

fn f1_chart(points: &[Point], families: &[String], reference: &Model) -> Chart {
    let all: Vec<&Point> = points.iter().collect();
    let mut series = family_series(&all, families, |p| {
        let f1 = p.test_f1?;
        let text = if p.runs > 1 {
            format!("{}: {:.4} ± {:.4}", p.label, f1.mean, f1.sd)
        } else {
            format!("{}: {:.4}", p.label, f1.mean)
        };
        Some((f1.mean, f1.sd, text))
    });
    // The Pareto front of the plotted points (means for seed groups).
    let mut scored: Vec<(u64, f64)> = points
        .iter()
        .filter_map(|p| Some((p.params, p.test_f1?.mean)))
        .collect();
    scored.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.total_cmp(&a.1)));
    let mut front = vec![];
    let mut best = f64::NEG_INFINITY;
    for (params, f1) in scored {
        if f1 > best {
            front.push((params as f64 / 1e6, f1));
            best = f1;
        }
    }
    series.push(Series::new("Pareto front (means)", front, Style::Dashed));
    let mut references = vec![];
    if let Some(f1) = reference.test_f1 {
        references.push(Reference {
            name: format!("{} (reference): {f1:.4}", reference.name),
            y: f1,
            dashed: false,
        });
        references.push(Reference {
            name: format!(
                "goal: {:.0}% of it, {:.4}",
                GOAL_FRACTION * 100.0,
                GOAL_FRACTION * f1
            ),
            y: GOAL_FRACTION * f1,
            dashed: true,
        });
    }
    let max_params = points.iter().map(|p| p.params).max().unwrap_or(1) as f64 / 1e6;
    Chart {
        title: "Test F1 vs unique parameters (seed groups: mean ± sd)".into(),
        x_label: "unique parameters (millions)".into(),
        y_label: "test F1 (entity-level, micro)".into(),
        series,
        references,
        x_range: Some((0.0, max_params * 1.08)),
        y_range: None,
    }
}

/// Training loss and dev F1 against the optimizer step: one small chart per cut family, one
/// colour per configuration (the runs of a seed group share theirs and one legend entry), at
/// most a palette's worth of configurations per chart.
fn curve_charts(entries: &[Entry], models: &[Model]) -> Result<(Vec<Chart>, Vec<Chart>)> {
    let by_output: BTreeMap<&str, &Entry> = entries
        .iter()
        .filter_map(|e| Some((e.output.as_deref()?, e)))
        .filter(|(_, e)| e.kind != "eval" && e.kind != "assert-budget")
        .collect();
    let mut families = family_order(models);
    // Curves per family: (configuration, run name, loss points, dev points).
    type Run = (String, String, Vec<(f64, f64)>, Vec<(f64, f64)>);
    let mut runs: BTreeMap<String, Vec<Run>> = BTreeMap::new();
    // Gate runs are left out: their gated model is not a product (as in `models`), and their
    // gates have a picture of their own.
    for e in entries
        .iter()
        .filter(|e| e.kind.starts_with("train") && e.kind != "train gates")
    {
        let path = e.dir.join("metrics.jsonl");
        if !path.exists() {
            continue;
        }
        let lines = read_metrics(&path)?;
        let train: Vec<(f64, f64)> = lines
            .iter()
            .filter_map(|l| match l {
                MetricLine::Train(t) => Some((t.step as f64, t.loss)),
                _ => None,
            })
            .collect();
        let evals: Vec<(f64, f64)> = lines
            .iter()
            .filter_map(|l| match l {
                MetricLine::Eval(v) if v.eval == "dev" => Some((v.step as f64, v.f1)),
                _ => None,
            })
            .collect();
        let family = family_of(e, &chain(e, &by_output));
        if !families.contains(&family) {
            families.push(family.clone());
        }
        let config = e
            .seeded
            .as_ref()
            .map_or_else(|| e.label.clone(), |(c, _)| c.clone());
        let name = without_seed(&e.name, e.seeded.as_ref().map(|s| s.1)).to_string();
        runs.entry(family)
            .or_default()
            .push((config, name, train, evals));
    }
    let mut loss_charts = vec![];
    let mut dev_charts = vec![];
    for family in &families {
        let Some(family_runs) = runs.get(family) else {
            continue;
        };
        let mut configs: Vec<&str> = vec![];
        for (config, ..) in family_runs {
            if !configs.contains(&config.as_str()) {
                configs.push(config);
            }
        }
        let chunks: Vec<&[&str]> = configs
            .chunks(crate::pipeline::plot::PALETTE.len())
            .collect();
        for (c, chunk) in chunks.iter().enumerate() {
            let title = if chunks.len() > 1 {
                format!("{family} ({}/{})", c + 1, chunks.len())
            } else {
                family.clone()
            };
            let mut loss = vec![];
            let mut dev = vec![];
            for (color, config) in chunk.iter().enumerate() {
                let members: Vec<&Run> = family_runs.iter().filter(|r| r.0 == *config).collect();
                let name = if members.len() > 1 {
                    format!("{} ({} runs)", members[0].1, members.len())
                } else {
                    members[0].1.clone()
                };
                for (k, (_, _, train, evals)) in members.iter().enumerate() {
                    let legend = if k == 0 { name.clone() } else { String::new() };
                    if !train.is_empty() {
                        let mut s = Series::new(legend.clone(), train.clone(), Style::Line);
                        s.color = Some(color);
                        loss.push(s);
                    }
                    if !evals.is_empty() {
                        let style = if evals.len() == 1 {
                            Style::Points
                        } else {
                            Style::Line
                        };
                        let mut s = Series::new(legend, evals.clone(), style);
                        s.color = Some(color);
                        dev.push(s);
                    }
                }
            }
            let chart = |series: Vec<Series>, y: &str| Chart {
                title: title.clone(),
                x_label: "optimizer step".into(),
                y_label: y.into(),
                series,
                ..Chart::default()
            };
            if loss.iter().any(|s| !s.name.is_empty()) {
                loss_charts.push(chart(loss, "loss (logged mean)"));
            }
            if dev.iter().any(|s| !s.name.is_empty()) {
                dev_charts.push(chart(dev, "dev F1"));
            }
        }
    }
    Ok((loss_charts, dev_charts))
}

fn speed_chart(models: &[Model], families: &[String]) -> Option<Chart> {
    let points = plotted_points(models);
    let all: Vec<&Point> = points.iter().collect();
    let series = family_series(&all, families, |p| {
        let t = p.tokens_per_s?;
        Some((t, 0.0, format!("{}: {t:.0}", p.label)))
    });
    let max_params = models.iter().map(|m| m.params).max().unwrap_or(1) as f64 / 1e6;
    (!series.is_empty()).then(|| Chart {
        title: "Inference speed (the eval steps of the runs, test set)".into(),
        x_label: "unique parameters (millions)".into(),
        y_label: "tokens per second".into(),
        series,
        x_range: Some((0.0, max_params * 1.08)),
        ..Chart::default()
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
    use crate::pipeline::plot::Rect;

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
            family: UNCUT.into(),
        }
    }

    /// Configurations of a compression study, as (run name, cut family, unique parameters,
    /// training steps, test F1 mean, seeds): 43 runs in 9 families and 21 configurations.
    const STUDY: [(&str, &str, u64, usize, f64, usize); 21] = [
        ("teacher", "", 22_568_841, 1317, 0.866, 1),
        (
            "emb64-kd6",
            "factorize-embeddings",
            12_826_377,
            2634,
            0.840,
            3,
        ),
        (
            "emb64-aug6-hid",
            "factorize-embeddings",
            12_826_377,
            5268,
            0.853,
            3,
        ),
        (
            "emb128-kd",
            "factorize-embeddings",
            14_804_361,
            300,
            0.828,
            1,
        ),
        ("tie-kd6", "tie-layers", 17_245_449, 2634, 0.826, 3),
        ("tie-aug6-hid", "tie-layers", 17_245_449, 5268, 0.845, 1),
        ("tie-recover", "tie-layers", 17_245_449, 150, 0.615, 1),
        (
            "lowrank-whiten",
            "lowrank-layers",
            17_246_601,
            150,
            0.830,
            1,
        ),
        ("lowrank-svd", "lowrank-layers", 17_246_601, 150, 0.788, 1),
        (
            "a-full-aug6-hid",
            "factorize-embeddings,lowrank-layers",
            4_180_329,
            5268,
            0.843,
            3,
        ),
        (
            "a-full-aug4-hid",
            "factorize-embeddings,lowrank-layers",
            4_180_329,
            3512,
            0.838,
            3,
        ),
        (
            "a-full-aug4",
            "factorize-embeddings,lowrank-layers",
            4_180_329,
            3512,
            0.839,
            1,
        ),
        (
            "a-kd8",
            "prune-vocab,factorize-embeddings,lowrank-layers",
            4_188_297,
            3512,
            0.8205,
            3,
        ),
        (
            "a-aug4",
            "prune-vocab,factorize-embeddings,lowrank-layers",
            4_188_297,
            3512,
            0.8255,
            3,
        ),
        (
            "a-ce",
            "prune-vocab,factorize-embeddings,lowrank-layers",
            4_188_297,
            1756,
            0.804,
            1,
        ),
        (
            "a-kd",
            "prune-vocab,factorize-embeddings,lowrank-layers",
            4_188_297,
            1756,
            0.8155,
            1,
        ),
        ("heads-gates-kd", "remove-heads", 20_795_913, 1317, 0.864, 3),
        (
            "heads-importance-kd",
            "remove-heads",
            20_795_913,
            1317,
            0.865,
            3,
        ),
        ("sparse50-kd", "sparsegpt", 22_568_841, 878, 0.857, 3),
        ("sparse24-kd", "sparsegpt", 22_568_841, 878, 0.8516, 3),
        ("drop-3of6", "drop-layers", 17_245_449, 150, 0.6715, 1),
    ];

    /// A number in [-1, 1) that depends only on its arguments (the runs' "noise").
    fn jitter(a: usize, b: usize) -> f64 {
        let mut h = (a as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (b as u64 + 7);
        h ^= h >> 29;
        h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        h ^= h >> 32;
        (h % 2000) as f64 / 1000.0 - 1.0
    }

    /// Writes the study's runs as training run folders (`run.json`, `metrics.jsonl`,
    /// `test.json`, `best/config.json` with the surgery history) under `dir`.
    fn write_study(dir: &Path) {
        for (c, &(name, family, params, steps, f1, seeds)) in STUDY.iter().enumerate() {
            for s in 0..seeds {
                let seed = 42 + s;
                let run = if seeds > 1 {
                    format!("{name}-s{seed}")
                } else {
                    name.to_string()
                };
                let out = dir.join(&run);
                std::fs::create_dir_all(out.join("best")).unwrap();
                let command = [
                    "surgery",
                    "train",
                    "distill",
                    &format!("runs/{name}-input"),
                    "--lr",
                    "3e-4",
                    "--seed",
                    &seed.to_string(),
                    "--out",
                    &format!("runs/{run}"),
                ];
                let record = serde_json::json!({
                    "op": "train distill", "spec": {"seed": seed}, "spec_hash": "0",
                    "labels": ["O"], "surgery_version": "0", "git_commit": "0",
                    "command": command, "unique_parameters": params, "train_examples": 1,
                    "train_tokens": 1, "padding_ratio": 0.0, "steps": steps, "provenance": {},
                });
                std::fs::write(out.join("run.json"), record.to_string()).unwrap();
                let test = f1 + 0.002 * jitter(c, s);
                let report = serde_json::json!({"report": {"micro": {
                    "f1": test, "precision": test, "recall": test}}});
                std::fs::write(out.join("test.json"), report.to_string()).unwrap();
                let history: Vec<serde_json::Value> = family
                    .split(',')
                    .filter(|op| !op.is_empty())
                    .map(|op| serde_json::json!({"op": op}))
                    .chain([serde_json::json!({"op": "train distill"})])
                    .collect();
                let config = serde_json::json!({"surgery": {"history": history}});
                std::fs::write(out.join("best/config.json"), config.to_string()).unwrap();
                let mut lines = String::new();
                let epochs = 3 + c % 4;
                for k in 0..=40 {
                    let step = steps * k / 40;
                    let loss = 0.6 * (-(step as f64) / (steps as f64 / 4.0)).exp()
                        + 0.08
                        + 0.01 * jitter(c * 100 + k, s);
                    lines.push_str(&format!(
                        "{{\"step\":{step},\"epoch\":0,\"loss\":{loss},\"lr\":0.0001,\"grad_norm\":1.0,\"tokens_per_s\":1000.0}}\n"
                    ));
                }
                for e in 0..=epochs {
                    let step = steps * e / epochs;
                    let dev = (f1 + 0.04) - 0.25 * (-(e as f64) * 1.2).exp()
                        + 0.003 * jitter(c * 10 + e, s);
                    lines.push_str(&format!(
                        "{{\"step\":{step},\"epoch\":{e},\"eval\":\"dev\",\"f1\":{dev}}}\n"
                    ));
                }
                std::fs::write(out.join("metrics.jsonl"), lines).unwrap();
            }
        }
    }

    /// The picture's size, and every text's start and baseline (text-anchor start only).
    fn texts(svg: &str) -> ((f64, f64), Vec<(f64, f64, String)>) {
        let attr = |l: &str, name: &str| -> Option<f64> {
            let at = l.find(&format!(" {name}=\""))? + name.len() + 3;
            l[at..].split('"').next()?.parse().ok()
        };
        let first = svg.lines().next().unwrap();
        let size = (
            attr(first, "width").unwrap(),
            attr(first, "height").unwrap(),
        );
        let mut out = vec![];
        for piece in svg.split("<text").skip(1) {
            if piece.contains("text-anchor") || piece.contains("rotate") {
                continue;
            }
            let tag = format!(" {}", piece.split('>').next().unwrap());
            let text = piece.split('>').nth(1).unwrap().split('<').next().unwrap();
            out.push((
                attr(&tag, "x").unwrap(),
                attr(&tag, "y").unwrap(),
                text.to_string(),
            ));
        }
        (size, out)
    }

    /// Forty-three runs in nine cut families make pictures a reader can read: one point per
    /// configuration (seed groups as mean ± sd), the teacher and the goal drawn, every number
    /// and legend inside the picture with no two numbers overlapping, and no chart of curves
    /// with more configurations than colours. `SURGERY_REPORT_PREVIEW=DIR` keeps the runs and
    /// the pictures in DIR to look at.
    #[test]
    fn forty_runs_make_readable_pictures() {
        let temp = tempfile::tempdir().unwrap();
        let root = std::env::var_os("SURGERY_REPORT_PREVIEW")
            .map_or_else(|| temp.path().to_path_buf(), PathBuf::from);
        let runs = root.join("runs");
        write_study(&runs);
        let entries = collect(&[runs]).unwrap();
        assert_eq!(entries.len(), 43);
        let models = models(&entries);
        let points = plotted_points(&models);
        assert_eq!(points.len(), STUDY.len(), "one point per configuration");
        let a6 = points
            .iter()
            .find(|p| p.label == "a-full-aug6-hid (3 seeds)")
            .unwrap();
        assert_eq!(
            (a6.runs, a6.family.as_str()),
            (3, "factorize-embeddings + lowrank-layers")
        );
        assert!((a6.test_f1.unwrap().mean - 0.843).abs() < 0.002);
        let rendered = build(&entries, Some("teacher"), "surgery report runs").unwrap();
        if root != temp.path() {
            let report = root.join("report");
            std::fs::create_dir_all(&report).unwrap();
            for (file, svg) in &rendered.files {
                std::fs::write(report.join(file), svg).unwrap();
            }
        }
        let file = |name: &str| &rendered.files.iter().find(|f| f.0 == name).unwrap().1;
        let f1 = file("f1-vs-params.svg");
        assert!(f1.contains("teacher (reference): 0.86") && f1.contains("goal: 97% of it"));
        let bars = f1.matches(r#"stroke-width="1.3""#).count();
        assert_eq!(
            bars,
            STUDY.iter().filter(|c| c.5 > 1).count(),
            "one error bar per group"
        );
        for name in ["f1-vs-params.svg", "dev-f1.svg", "training-loss.svg"] {
            let ((w, h), texts) = texts(file(name));
            for (x, y, text) in &texts {
                let right = x + text.chars().count() as f64 * 11.0 * 0.6;
                assert!(
                    *x >= 0.0 && right <= w && *y > 0.0 && *y <= h,
                    "{name}: {text} at {x}, {y}"
                );
            }
        }
        // Numbers in the F1 chart: one per point, none overlapping another.
        let (_, texts) = texts(f1);
        let numbers: Vec<Rect> = texts
            .iter()
            .filter(|(_, _, t)| t.parse::<usize>().is_ok())
            .map(|(x, y, t)| Rect {
                x: *x,
                y: y - 10.0,
                w: t.len() as f64 * 6.6,
                h: 12.0,
            })
            .collect();
        assert_eq!(numbers.len(), STUDY.len(), "one number per point");
        for (i, a) in numbers.iter().enumerate() {
            for b in &numbers[i + 1..] {
                assert!(!a.overlaps(b), "{a:?} overlaps {b:?}");
            }
        }
        let (loss, dev) = curve_charts(&entries, &models).unwrap();
        assert_eq!(dev.len(), 9, "one chart per family");
        for chart in loss.iter().chain(&dev) {
            let colors: std::collections::BTreeSet<usize> =
                chart.series.iter().filter_map(|s| s.color).collect();
            assert!(colors.len() <= crate::pipeline::plot::PALETTE.len());
            assert!(colors
                .iter()
                .all(|c| *c < crate::pipeline::plot::PALETTE.len()));
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

    /// A run's family comes from its model's history, else from the history its run.json
    /// recorded; a copy that records neither is "cuts not recorded", never "no cut". A recipe
    /// step's copy that records only `run RECIPE` is compared with no other run.
    #[test]
    fn families_and_settings_come_from_what_the_run_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let run = |name: &str, input_history: Option<&[&str]>, config: Option<&[&str]>| {
            let out = dir.path().join(name);
            std::fs::create_dir_all(&out).unwrap();
            let mut record = serde_json::json!({
                "op": "train distill", "spec": {"seed": 42}, "spec_hash": "0", "labels": ["O"],
                "surgery_version": "0", "git_commit": "0",
                "command": if name.starts_with("step") {
                    vec!["surgery", "run", "recipes/r.toml"]
                } else {
                    vec!["surgery", name]
                },
                "unique_parameters": 10, "train_examples": 1, "train_tokens": 1,
                "padding_ratio": 0.0, "steps": 1, "provenance": {},
            });
            if let Some(h) = input_history {
                record["input_history"] = serde_json::json!(h);
            }
            std::fs::write(out.join("run.json"), record.to_string()).unwrap();
            if let Some(ops) = config {
                std::fs::create_dir_all(out.join("best")).unwrap();
                let history: Vec<_> = ops.iter().map(|op| serde_json::json!({"op": op})).collect();
                let config = serde_json::json!({"surgery": {"history": history}});
                std::fs::write(out.join("best/config.json"), config.to_string()).unwrap();
            }
        };
        run("copy-of-an-old-run", None, None);
        run(
            "copy",
            Some(&["train finetune", "factorize-embeddings", "lowrank-layers"]),
            None,
        );
        run("uncut-copy", Some(&["train finetune"]), None);
        run(
            "with-model",
            None,
            Some(&["train finetune", "sparsegpt", "train distill"]),
        );
        run("step-a", Some(&[]), None);
        run("step-b", Some(&[]), None);
        let entries = collect(&[dir.path().to_path_buf()]).unwrap();
        let seeded = |name: &str| {
            entries
                .iter()
                .find(|e| e.name == name)
                .unwrap()
                .seeded
                .clone()
        };
        assert!(seeded("copy").is_some());
        assert_eq!((seeded("step-a"), seeded("step-b")), (None, None));
        let family = |name: &str| {
            let m = models(&entries)
                .into_iter()
                .find(|m| m.name == name)
                .unwrap();
            m.family
        };
        assert_eq!(family("copy-of-an-old-run"), NOT_RECORDED);
        assert_eq!(family("copy"), "factorize-embeddings + lowrank-layers");
        assert_eq!(family("uncut-copy"), UNCUT);
        assert_eq!(family("with-model"), "sparsegpt");
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
