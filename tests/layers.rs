//! The library's layering: every module under `src/` imports only modules of the layers below
//! it (the order `lib.rs` documents; siblings in a layer, such as `train` and `cuts`, stay
//! independent), and no two files import each other through a cycle.

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

/// The `crate::x` and `crate::x::y` paths a file's code (not its comments) names.
fn crate_paths(text: &str) -> Vec<Vec<String>> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect()
    };
    let mut out = vec![];
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            let first = ident(rest);
            if first.is_empty() {
                continue;
            }
            let mut path = vec![first.clone()];
            if let Some(after) = rest[first.len()..].strip_prefix("::") {
                let second = ident(after);
                if !second.is_empty() {
                    path.push(second);
                }
            }
            out.push(path);
        }
    }
    out
}

#[test]
fn the_module_tree_keeps_its_layers_without_cycles() {
    let src = repo().join("src");
    let mut files = vec![];
    rust_files(&src, &mut files);
    files.sort();
    let mut problems = vec![];
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for path in &files {
        let parts = module_of(&src, path);
        if parts.is_empty() || ["lib", "main", "cli"].contains(&parts[0].as_str()) {
            continue;
        }
        let own = parts.join("::");
        let Some(own_rank) = rank(&parts[0]) else {
            problems.push(format!("{own}: not in any layer (add it to LAYERS)"));
            continue;
        };
        let mut deps = BTreeSet::new();
        for target in crate_paths(&std::fs::read_to_string(path).unwrap()) {
            let Some(r) = rank(&target[0]) else { continue };
            if r > own_rank {
                problems.push(format!(
                    "{own} imports crate::{}, a higher layer",
                    target[0]
                ));
            } else if r == own_rank && target[0] != parts[0] && r > 0 {
                problems.push(format!("{own} imports its sibling crate::{}", target[0]));
            }
            let candidate = src.join(target.join("/"));
            let is_file =
                candidate.with_extension("rs").is_file() || candidate.join("mod.rs").is_file();
            deps.insert(if is_file {
                target.join("::")
            } else {
                target[0].clone()
            });
        }
        deps.remove(&own);
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
