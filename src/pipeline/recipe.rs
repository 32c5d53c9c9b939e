//! Recipes: a compression pipeline written once as TOML and run as one command.
//!
//! ```toml
//! [recipe]
//! name = "example"
//! [vars]
//! data = "../shared/data/conll2003"
//! [[step]]
//! name = "teacher"               # folder runs/example/01-teacher
//! kind = "train finetune"        # the CLI's words
//! input = "${model}"             # default: the previous step's output
//! train = "${data}/train.txt"    # every other key is the CLI option of the same name
//! ```
//!
//! This module reads and checks the file (keys, kinds, variables, step references) and turns a
//! step into the command line the CLI parses: the options are parsed by the CLI's own parser, so
//! a recipe and a command line can never disagree. A step's hash covers its kind, its options
//! and the hashes of the steps it reads from, so changing a step re-runs it and everything
//! downstream.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::util::hash::fnv1a;

/// The commands a step can run: every registered surgery, every registered training command,
/// `eval` and `assert-budget`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A checkpoint-to-checkpoint surgery, by its registered name.
    Surgery(&'static str),
    /// A training command, by its registered name (`train finetune`).
    Train(&'static str),
    Eval,
    AssertBudget,
}

impl Kind {
    /// Every kind: the surgeries and the training commands in their registries' order, then
    /// the other commands.
    pub fn all() -> impl Iterator<Item = Kind> {
        let surgeries = crate::cuts::registry::NAMES.iter();
        let training = crate::train::registry::NAMES.iter();
        surgeries
            .map(|&name| Kind::Surgery(name))
            .chain(training.map(|&name| Kind::Train(name)))
            .chain([Kind::Eval, Kind::AssertBudget])
    }

    /// The name in a recipe: the CLI's words.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Surgery(name) | Kind::Train(name) => name,
            Kind::Eval => "eval",
            Kind::AssertBudget => "assert-budget",
        }
    }

    fn parse(text: &str) -> Option<Kind> {
        let words = text.split_whitespace().collect::<Vec<_>>().join(" ");
        Kind::all().find(|k| k.name() == words)
    }

    /// True for the checkpoint-to-checkpoint surgeries.
    pub fn is_surgery(self) -> bool {
        matches!(self, Kind::Surgery(_))
    }

    /// True for the training commands, whose folder is a run folder with the model in `best/`.
    pub fn is_training(self) -> bool {
        matches!(self, Kind::Train(_))
    }
}

/// A value in a step: text, or the output of an earlier step (`@name` or `@name/file`).
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    Text(String),
    Step { index: usize, sub: String },
}

/// One option of a step as the CLI sees it: `--key` followed by each value (none for a flag).
#[derive(Debug, Clone, PartialEq)]
pub struct StepOption {
    pub key: String,
    pub values: Vec<Arg>,
}

#[derive(Debug, Clone)]
pub struct Step {
    /// 0-based position; the folder is `NN-name` with NN = index + 1.
    pub index: usize,
    pub name: String,
    pub kind: Kind,
    pub input: Arg,
    pub options: Vec<StepOption>,
    /// The step's table with variables substituted (written beside its output).
    pub fragment: toml::Table,
    /// FNV-1a of the kind, the options and the hashes of the steps it reads.
    pub hash: String,
}

impl Step {
    /// False for a step with problems (kept only so later steps can refer to it).
    pub fn is_valid(&self) -> bool {
        !self.hash.is_empty()
    }

    /// `NN-name`, the step's folder under the recipe's run folder.
    pub fn folder_name(&self) -> String {
        format!("{:02}-{}", self.index + 1, self.name)
    }

    /// The steps this one reads from.
    pub fn dependencies(&self) -> BTreeSet<usize> {
        std::iter::once(&self.input)
            .chain(self.options.iter().flat_map(|o| &o.values))
            .filter_map(|a| match a {
                Arg::Step { index, .. } => Some(*index),
                Arg::Text(_) => None,
            })
            .collect()
    }

    /// The command line (without the program name) that runs this step writing to `dir`;
    /// `resolve` turns arguments into paths.
    pub fn argv(&self, dir: &Path, resolve: &dyn Fn(&Arg) -> String) -> Vec<String> {
        let mut argv: Vec<String> = self.kind.name().split(' ').map(String::from).collect();
        argv.push(resolve(&self.input));
        let dir = dir.display().to_string();
        match self.kind {
            k if k.is_surgery() => argv.push(dir),
            k if k.is_training() => argv.extend(["--out".into(), dir]),
            Kind::Eval => argv.extend(["--save-json".into(), format!("{dir}/eval.json")]),
            _ => {}
        }
        // `--key=value` in one word: a value that starts with `-` (`lr = -1e-5`) stays the
        // option's value, for its own parser to judge, instead of being read as a flag.
        for option in &self.options {
            if option.values.is_empty() {
                argv.push(format!("--{}", option.key));
            }
            for value in &option.values {
                argv.push(format!("--{}={}", option.key, resolve(value)));
            }
        }
        argv
    }
}

#[derive(Debug, Clone)]
pub struct Recipe {
    pub path: PathBuf,
    pub name: String,
    pub description: String,
    pub vars: BTreeMap<String, String>,
    pub steps: Vec<Step>,
}

impl Recipe {
    /// Reads and checks a recipe; every problem in the file is reported at once.
    pub fn load(path: &Path, overrides: &[(String, String)]) -> Result<Recipe> {
        let (recipe, problems) = Recipe::load_lenient(path, overrides)?;
        if problems.is_empty() {
            Ok(recipe)
        } else {
            Err(Error::Recipe {
                path: path.to_path_buf(),
                problems,
            })
        }
    }

    /// Reads a recipe and lists its problems without failing on them, so that a caller can add
    /// its own checks of the valid steps (`Step::is_valid`) and report everything together.
    /// Fails only when the file cannot be read or is not TOML.
    pub fn load_lenient(
        path: &Path,
        overrides: &[(String, String)],
    ) -> Result<(Recipe, Vec<String>)> {
        let text = crate::io::text_input::read_text(path)?;
        Recipe::parse(path, &text, overrides)
    }

    /// The step with this name or 1-based number.
    pub fn find_step(&self, key: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.name == key).or_else(|| {
            key.parse::<usize>()
                .ok()
                .filter(|n| (1..=self.steps.len()).contains(n))
                .map(|n| n - 1)
        })
    }

    pub fn parse(
        path: &Path,
        text: &str,
        overrides: &[(String, String)],
    ) -> Result<(Recipe, Vec<String>)> {
        let fail = |problems: Vec<String>| Error::Recipe {
            path: path.to_path_buf(),
            problems,
        };
        let doc: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let line = e
                .span()
                .map(|s| text[..s.start].lines().count().max(1))
                .unwrap_or(0);
            fail(vec![format!("line {line}: {}", e.message())])
        })?;
        let mut problems = vec![];
        for key in doc.keys() {
            if !["recipe", "vars", "step"].contains(&key.as_str()) {
                problems.push(format!(
                    "unknown section `{key}`{}",
                    did_you_mean(key, ["recipe", "vars", "step"])
                ));
            }
        }
        let header = doc.get("recipe").and_then(|v| v.as_table());
        let text_of = |key: &str| header.and_then(|h| h.get(key)).and_then(|v| v.as_str());
        let name = text_of("name").map(String::from).unwrap_or_else(|| {
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "recipe".into())
        });
        if !is_simple_name(&name) {
            problems.push(format!(
                "[recipe] name `{name}` may use only letters, digits, - and _ (it names a folder)"
            ));
        }
        let description = text_of("description").unwrap_or_default().to_string();
        if let Some(h) = header {
            for key in h
                .keys()
                .filter(|k| !["name", "description"].contains(&k.as_str()))
            {
                problems.push(format!("[recipe]: unknown key `{key}` (name, description)"));
            }
        }

        let vars = resolve_vars(doc.get("vars"), overrides, text, &mut problems);
        let raw_steps: Vec<toml::Table> = match doc.get("step") {
            Some(toml::Value::Array(items)) => {
                items.iter().filter_map(|v| v.as_table().cloned()).collect()
            }
            _ => {
                problems.push("no steps: add [[step]] tables".into());
                vec![]
            }
        };
        let mut steps: Vec<Step> = vec![];
        for (index, raw) in raw_steps.iter().enumerate() {
            match parse_step(index, raw, &vars, &steps) {
                Ok(step) => steps.push(step),
                Err(errs) => {
                    problems.extend(errs.into_iter().filter(|e| !e.is_empty()));
                    // Keep a placeholder so that later steps can still refer to it by name.
                    steps.push(Step {
                        index,
                        name: raw
                            .get("name")
                            .and_then(|v| v.as_str())
                            .unwrap_or("?")
                            .to_string(),
                        kind: Kind::Eval,
                        input: Arg::Text(String::new()),
                        options: vec![],
                        fragment: raw.clone(),
                        hash: String::new(),
                    });
                }
            }
        }
        let recipe = Recipe {
            path: path.to_path_buf(),
            name,
            description,
            vars: vars
                .into_iter()
                .filter_map(|(k, v)| Some((k, v?)))
                .collect(),
            steps,
        };
        Ok((recipe, problems))
    }
}

/// Each variable's value, or `None` when its definition is broken (the problem is reported once,
/// and every use of it is then left unreported).
type Vars = BTreeMap<String, Option<String>>;

/// Substitutes `${name}` in every variable (variables may use others) and checks for cycles,
/// NUL characters (no path or option can hold one) and `--set` names the recipe never uses.
fn resolve_vars(
    table: Option<&toml::Value>,
    overrides: &[(String, String)],
    text: &str,
    problems: &mut Vec<String>,
) -> Vars {
    let mut raw: BTreeMap<String, String> = BTreeMap::new();
    if let Some(t) = table.and_then(|v| v.as_table()) {
        for (k, v) in t {
            match v {
                toml::Value::String(s) => raw.insert(k.clone(), s.clone()),
                toml::Value::Array(_) | toml::Value::Table(_) => {
                    problems.push(format!("[vars] {k}: a variable holds one value"));
                    None
                }
                other => raw.insert(k.clone(), other.to_string()),
            };
        }
    }
    for (k, v) in overrides {
        // A `--set` for a name the recipe neither defines nor uses would be silently ignored;
        // `device` and `kernels` are always taken (the runner passes them to the steps).
        let placement = PLACEMENT_OPTIONS.contains(&k.as_str());
        if !placement && !raw.contains_key(k) && !text.contains(&format!("${{{k}}}")) {
            problems.push(format!(
                "--set {k}: the recipe has no variable `{k}`{}",
                did_you_mean(k, raw.keys().map(String::as_str))
            ));
        }
        raw.insert(k.clone(), v.clone());
    }
    let mut done: Vars = BTreeMap::new();
    for (name, value) in &raw {
        if value.contains('\0') {
            problems.push(format!("[vars] {name}: the value holds a NUL character"));
            done.insert(name.clone(), None);
        }
    }
    for name in raw.keys() {
        let mut path = vec![];
        if let Err(e) = expand_var(name, &raw, &mut done, &mut path) {
            if !e.is_empty() {
                problems.push(e);
            }
            // One problem per cause: the variables involved are not reported again.
            for p in path.into_iter().chain([name.clone()]) {
                done.insert(p, None);
            }
        }
    }
    done
}

fn expand_var(
    name: &str,
    raw: &BTreeMap<String, String>,
    done: &mut Vars,
    path: &mut Vec<String>,
) -> std::result::Result<String, String> {
    if let Some(v) = done.get(name) {
        return v.clone().ok_or_else(String::new);
    }
    if path.iter().any(|p| p == name) {
        path.push(name.to_string());
        return Err(format!("variables form a cycle: {}", path.join(" → ")));
    }
    let value = raw.get(name).ok_or_else(|| {
        format!(
            "variable `{name}` is not defined (add it to [vars] or pass --set {name}=VALUE){}",
            did_you_mean(name, raw.keys().map(String::as_str))
        )
    })?;
    path.push(name.to_string());
    let out = interpolate(value, |inner| expand_var(inner, raw, done, path))?;
    path.pop();
    done.insert(name.to_string(), Some(out.clone()));
    Ok(out)
}

/// The longest value a substitution may produce: variables that double each other would
/// otherwise grow without bound.
const MAX_EXPANDED: usize = 1 << 20;

/// Replaces each `${name}` in `text` with `lookup(name)`.
fn interpolate(
    text: &str,
    mut lookup: impl FnMut(&str) -> std::result::Result<String, String>,
) -> std::result::Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find('}')
            .ok_or_else(|| format!("unclosed `${{` in `{text}`"))?;
        out.push_str(&lookup(&rest[start + 2..start + end])?);
        if out.len() > MAX_EXPANDED {
            return Err(format!(
                "`{}` expands to more than {MAX_EXPANDED} characters",
                text.chars().take(60).collect::<String>()
            ));
        }
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Substitutes variables in a step's text value.
fn substitute(text: &str, vars: &Vars) -> std::result::Result<String, String> {
    interpolate(text, |name| match vars.get(name) {
        // Its definition's problem is already reported.
        Some(None) => Err(String::new()),
        Some(Some(v)) => Ok(v.clone()),
        None => Err(format!(
            "variable `{name}` is not defined (add it to [vars] or pass --set {name}=VALUE){}",
            did_you_mean(name, vars.keys().map(String::as_str))
        )),
    })
}

fn parse_step(
    index: usize,
    raw: &toml::Table,
    vars: &Vars,
    earlier: &[Step],
) -> std::result::Result<Step, Vec<String>> {
    let label = format!(
        "step {} ({})",
        index + 1,
        raw.get("name")
            .and_then(|v| v.as_str())
            .or_else(|| raw.get("kind").and_then(|v| v.as_str()))
            .unwrap_or("unnamed")
    );
    let mut problems = vec![];
    let kind = match raw.get("kind").and_then(|v| v.as_str()) {
        Some(text) => Kind::parse(text).or_else(|| {
            problems.push(format!(
                "{label}: unknown step kind `{text}`{} (kinds: {})",
                did_you_mean(text, Kind::all().map(|k| k.name())),
                Kind::all().map(|k| k.name()).collect::<Vec<_>>().join(", ")
            ));
            None
        }),
        None => {
            problems.push(format!("{label}: missing `kind`"));
            None
        }
    };
    let name = raw
        .get("name")
        .and_then(|v| v.as_str())
        .map(String::from)
        .or_else(|| kind.map(|k| k.name().replace(' ', "-")))
        .unwrap_or_default();
    if raw.get("name").is_some_and(|v| !v.is_str()) {
        problems.push(format!("{label}: `name` must be a string"));
    } else if (raw.contains_key("name") || !name.is_empty()) && !is_simple_name(&name) {
        problems.push(format!(
            "{label}: name `{name}` may use only letters, digits, - and _"
        ));
    }
    if earlier.iter().any(|s| s.name == name) {
        problems.push(format!("{label}: another step is already named `{name}`"));
    }

    let mut fragment = toml::Table::new();
    let mut value_of = |key: &str, v: &toml::Value, problems: &mut Vec<String>| {
        option_values(&label, key, v, vars, earlier, problems, &mut fragment)
    };
    let input = match raw.get("input") {
        Some(v) => value_of("input", v, &mut problems).pop(),
        None if index > 0 => Some(Arg::Step {
            index: index - 1,
            sub: String::new(),
        }),
        None => {
            problems.push(format!(
                "{label}: the first step needs `input` (a checkpoint folder)"
            ));
            None
        }
    };
    let mut options = vec![];
    for (key, v) in raw {
        if ["name", "kind", "input"].contains(&key.as_str()) {
            continue;
        }
        if let toml::Value::Table(_) = v {
            problems.push(format!("{label}: {key}: options take values, not tables"));
            continue;
        }
        if let toml::Value::Boolean(false) = v {
            continue;
        }
        let values = value_of(key, v, &mut problems);
        options.push(StepOption {
            key: key.clone(),
            values,
        });
    }
    fragment.insert("name".into(), name.clone().into());
    if let Some(k) = kind {
        fragment.insert("kind".into(), k.name().into());
    }
    let (Some(kind), Some(input), true) = (kind, input, problems.is_empty()) else {
        return Err(problems);
    };
    let hash = step_hash(kind, &input, &options, earlier);
    Ok(Step {
        index,
        name,
        kind,
        input,
        options,
        fragment,
        hash,
    })
}

/// The arguments of one option (variables substituted, `@step` references resolved); records the
/// resolved value in the step's fragment.
fn option_values(
    label: &str,
    key: &str,
    v: &toml::Value,
    vars: &Vars,
    earlier: &[Step],
    problems: &mut Vec<String>,
    fragment: &mut toml::Table,
) -> Vec<Arg> {
    let texts: Vec<String> = match v {
        toml::Value::Array(items) => items.iter().map(scalar_text).collect(),
        toml::Value::Boolean(_) => vec![],
        other => vec![scalar_text(other)],
    };
    let mut args = vec![];
    let mut resolved = vec![];
    for t in texts {
        match substitute(&t, vars) {
            Ok(s) if s.contains('\0') => {
                problems.push(format!("{label}: {key}: the value holds a NUL character"))
            }
            Ok(s) => {
                match step_ref(&s, earlier) {
                    Ok(arg) => args.push(arg),
                    Err(e) => problems.push(format!("{label}: {key}: {e}")),
                }
                resolved.push(toml::Value::String(s));
            }
            Err(e) if e.is_empty() => problems.push(String::new()),
            Err(e) => problems.push(format!("{label}: {key}: {e}")),
        }
    }
    let recorded = match v {
        toml::Value::Array(_) => toml::Value::Array(resolved),
        toml::Value::String(_) => resolved.pop().unwrap_or_else(|| v.clone()),
        other => other.clone(),
    };
    fragment.insert(key.to_string(), recorded);
    args
}

/// Letters (of any script), digits, `-` and `_` only: the name is a folder name.
fn is_simple_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || c == '-' || c == '_')
}

/// A TOML scalar as the command line writes it.
fn scalar_text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `@name` or `@name/sub/path` names an earlier step's output; anything else is text.
fn step_ref(text: &str, earlier: &[Step]) -> std::result::Result<Arg, String> {
    let Some(rest) = text.strip_prefix('@') else {
        return Ok(Arg::Text(text.to_string()));
    };
    let (name, sub) = rest.split_once('/').unwrap_or((rest, ""));
    match earlier.iter().position(|s| s.name == name) {
        Some(i) => Ok(Arg::Step {
            index: i,
            sub: sub.to_string(),
        }),
        None => Err(format!(
            "`@{name}` names no earlier step (a step reads only from the steps before it, so recipes cannot form cycles){}",
            did_you_mean(name, earlier.iter().map(|s| s.name.as_str()))
        )),
    }
}

/// Options that say where a step computes, not what: outside the step's hash, so a recipe run on
/// the CPU resumes on a GPU (and back) without re-running its finished steps. Recipe variables
/// of the same names (`--set device=cuda`) are passed to every step that takes them.
pub const PLACEMENT_OPTIONS: [&str; 2] = ["device", "kernels"];

fn step_hash(kind: Kind, input: &Arg, options: &[StepOption], earlier: &[Step]) -> String {
    let text_of = |a: &Arg| match a {
        Arg::Text(t) => t.clone(),
        Arg::Step { index, sub } => format!("@{}/{sub}", earlier[*index].hash),
    };
    let mut canonical = format!("{}\ninput={}\n", kind.name(), text_of(input));
    let mut sorted: Vec<&StepOption> = options
        .iter()
        .filter(|o| !PLACEMENT_OPTIONS.contains(&o.key.as_str()))
        .collect();
    sorted.sort_by(|a, b| a.key.cmp(&b.key));
    for o in sorted {
        let values: Vec<String> = o.values.iter().map(text_of).collect();
        canonical.push_str(&format!("{}={}\n", o.key, values.join("\u{1f}")));
    }
    fnv1a(canonical.as_bytes())
}

/// `, did you mean `x`?` for the closest candidate within a small edit distance, or nothing.
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    candidates
        .into_iter()
        .map(|c| {
            // A shortening (`eval` for `evaluate`) counts as close.
            let prefix = c.len() >= 3 && (word.starts_with(c) || c.starts_with(word));
            (
                if prefix {
                    1
                } else {
                    strsim::levenshtein(word, c)
                },
                c,
            )
        })
        .filter(|(d, c)| *d <= (c.len() / 3).max(2))
        .min()
        .map(|(_, c)| format!(" (did you mean `{c}`?)"))
        .unwrap_or_default()
}
