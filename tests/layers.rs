//! The library's layering: every module under `src/` imports only modules of the layers below
//! it (the order `lib.rs` documents; siblings in a layer, such as `train` and `cuts`, stay
//! independent), and no two files import each other through a cycle (a file and its parent
//! module excepted: they are one module split into files). `super::`, `self::` and submodule
//! paths count, and a path to a re-exported item counts as a use of the file that defines it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::util::repo;

/// The layers, lowest first.
const LAYERS: &[&[&str]] = &[
    &["error", "util"],
    &["arch"],
    &["io"],
    &["budget"],
    &["data"],
    &["metrics"],
    &["kernels"],
    &["model"],
    &["eval"],
    &["cuts", "train", "export"],
    &["pipeline"],
];

fn rank(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `a::b` for src/a/b.rs and src/a/b/mod.rs.
fn module_of(src: &Path, path: &Path) -> Vec<String> {
    let mut parts: Vec<String> = path
        .strip_prefix(src)
        .unwrap()
        .with_extension("")
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// A file's code: comments and its test module (at the end of the file) left out.
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod ") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

fn ident_len(s: &str) -> usize {
    s.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .count()
}

/// The paths of a `use` tree starting at `s`, each after `prefix`: `a::b::{c, d::e}` gives
/// `a::b::c` and `a::b::d::e`. Returns how many bytes were read.
fn use_tree(s: &str, prefix: &[String], out: &mut Vec<Vec<String>>) -> usize {
    let mut path = prefix.to_vec();
    let mut i = 0;
    loop {
        let n = ident_len(&s[i..]);
        if n > 0 {
            path.push(s[i..i + n].to_string());
            i += n;
            if s[i..].starts_with("::") {
                i += 2;
                continue;
            }
            out.push(path);
            return i;
        }
        if s[i..].starts_with('{') {
            i += 1;
            loop {
                i += s[i..]
                    .chars()
                    .take_while(|c| c.is_whitespace() || *c == ',')
                    .count();
                if s[i..].starts_with('}') || i >= s.len() {
                    return (i + 1).min(s.len());
                }
                i += use_tree(&s[i..], &path, out);
            }
        }
        out.push(path);
        return i;
    }
}

/// The module paths a file's code names: `crate::`, `super::` and `self::` paths, and `use` of
/// its own submodules, each made absolute. `pub use` statements (re-exports: the module's face,
/// not what its code depends on) are returned apart.
fn named_paths(module: &[String], text: &str) -> (Vec<Vec<String>>, Vec<Vec<String>>) {
    let code = code_of(text);
    let children: Vec<String> = code
        .match_indices("mod ")
        .filter_map(|(i, _)| {
            let rest = &code[i + 4..];
            let n = ident_len(rest);
            (n > 0 && rest[n..].trim_start().starts_with(';')).then(|| rest[..n].to_string())
        })
        .collect();
    let parent = module[..module.len().saturating_sub(1)].to_vec();
    let (mut uses, mut reexports) = (vec![], vec![]);
    for statement in code.split(';') {
        let trimmed = statement.trim_start();
        let is_reexport = trimmed.starts_with("pub use ") || trimmed.starts_with("pub(crate) use ");
        let out = if is_reexport {
            &mut reexports
        } else {
            &mut uses
        };
        for (start, _) in statement.match_indices("::") {
            let before = &statement[..start];
            let word_start = before
                .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(0, |i| i + 1);
            if word_start > 0 && statement[..word_start].ends_with("::") {
                continue;
            }
            let base = match &before[word_start..] {
                "crate" => vec![],
                "super" => parent.clone(),
                "self" => module.to_vec(),
                child if children.iter().any(|c| c == child) && trimmed.contains("use ") => {
                    let mut m = module.to_vec();
                    m.push(child.to_string());
                    let mut paths = vec![];
                    use_tree(&statement[start + 2..], &m, &mut paths);
                    out.extend(paths);
                    continue;
                }
                _ => continue,
            };
            use_tree(&statement[start + 2..], &base, out);
        }
    }
    (uses, reexports)
}

/// The file a path names: the longest prefix that is a module file, followed through that
/// module's re-exports (`pub use child::Item`) to the file that defines the item.
fn resolve(
    path: &[String],
    files: &BTreeSet<Vec<String>>,
    reexports: &BTreeMap<Vec<String>, BTreeMap<String, Vec<String>>>,
    depth: usize,
) -> Option<Vec<String>> {
    let k = (1..=path.len())
        .rev()
        .find(|&k| files.contains(&path[..k]))?;
    let module = path[..k].to_vec();
    if let Some(target) = path
        .get(k)
        .and_then(|item| reexports.get(&module)?.get(item))
        .filter(|_| depth < 5)
    {
        let mut next = target.clone();
        next.extend_from_slice(&path[k + 1..]);
        return resolve(&next, files, reexports, depth + 1);
    }
    Some(module)
}

#[test]
fn the_module_tree_keeps_its_layers_without_cycles() {
    let src = repo().join("src");
    let mut paths = vec![];
    rust_files(&src, &mut paths);
    paths.sort();
    let modules: Vec<(Vec<String>, String)> = paths
        .iter()
        .map(|p| (module_of(&src, p), std::fs::read_to_string(p).unwrap()))
        .filter(|(parts, _)| {
            !parts.is_empty() && !["lib", "main", "cli"].contains(&parts[0].as_str())
        })
        .collect();
    let files: BTreeSet<Vec<String>> = modules.iter().map(|(m, _)| m.clone()).collect();
    let mut reexports: BTreeMap<Vec<String>, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    let mut uses = BTreeMap::new();
    for (module, text) in &modules {
        let (used, exported) = named_paths(module, text);
        for path in exported {
            if let Some(item) = path.last() {
                reexports
                    .entry(module.clone())
                    .or_default()
                    .insert(item.clone(), path.clone());
            }
        }
        uses.insert(module.clone(), used);
    }
    let mut problems = vec![];
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, text) in &modules {
        let own = module.join("::");
        let Some(own_rank) = rank(&module[0]) else {
            problems.push(format!("{own}: not in any layer (add it to LAYERS)"));
            continue;
        };
        for target in crate_paths(&code_of(text)) {
            let Some(r) = rank(&target) else { continue };
            if r > own_rank {
                problems.push(format!("{own} imports crate::{target}, a higher layer"));
            } else if r == own_rank && target != module[0] && r > 0 {
                problems.push(format!("{own} imports its sibling crate::{target}"));
            }
        }
        // A file may use its parent module's items and the parent its children's (one module,
        // split into files); any other pair of files must not import each other in a cycle.
        let deps: BTreeSet<String> = uses[module]
            .iter()
            .filter_map(|p| resolve(p, &files, &reexports, 0))
            .filter(|d| {
                d != module && d[..] != module[..module.len() - 1] && d[..d.len() - 1] != module[..]
            })
            .map(|d| d.join("::"))
            .collect();
        edges.insert(own, deps);
    }
    problems.extend(cycles(&edges));
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// The top-level modules a file's code names as `crate::x`.
fn crate_paths(code: &str) -> Vec<String> {
    code.match_indices("crate::")
        .map(|(i, _)| {
            let rest = &code[i + "crate::".len()..];
            rest[..ident_len(rest)].to_string()
        })
        .filter(|m| !m.is_empty() && m.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        .collect()
}

/// The import cycles between files (Tarjan's strongly connected components of two or more).
fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    struct State<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        found: Vec<String>,
    }
    fn strong<'a>(s: &mut State<'a>, v: &'a str) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.edges[v].iter().filter(|w| s.edges.contains_key(*w)) {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                strong(s, w);
                let lw = s.low[w];
                s.low.insert(v, s.low[v].min(lw));
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                s.low.insert(v, s.low[v].min(iw));
            }
        }
        if s.low[v] == s.index[v] {
            let mut members = vec![];
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                members.push(w);
                if w == v {
                    break;
                }
            }
            if members.len() > 1 {
                members.sort();
                s.found
                    .push(format!("import cycle: {}", members.join(" → ")));
            }
        }
    }
    let mut state = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: vec![],
        on_stack: BTreeSet::new(),
        found: vec![],
    };
    for v in edges.keys() {
        if !state.index.contains_key(v.as_str()) {
            strong(&mut state, v);
        }
    }
    state.found
}
