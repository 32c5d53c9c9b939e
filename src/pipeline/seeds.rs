//! Groups training runs that differ only in their seed, so a report can give mean ± sd instead of
//! one lucky (or unlucky) run: a few tenths of an F1 point are within seed noise.

use std::collections::BTreeMap;

/// Flags that do not change the trained model (where it is written, whether an old output of
/// this tool may be replaced, resuming, logging, progress display, where teacher logits are
/// cached) or that are the seed itself.
const IGNORED_FLAGS: [&str; 8] = [
    "--seed",
    "--augment-seed",
    "--out",
    "--force",
    "--resume",
    "--tensorboard",
    "--cache-teacher",
    "--quiet",
];

/// The training commands' flags that take no value, so the word after one is a positional
/// argument (a test keeps this list equal to the CLI's).
pub const FLAGS_WITHOUT_VALUE: [&str; 7] = [
    "--force",
    "--iob1",
    "--label-all-subtokens",
    "--quiet",
    "--reinit-classifier",
    "--resume",
    "--tensorboard",
];

/// The run's configuration as a comparable string: its arguments with the seed and the flags
/// above removed, flags sorted, numbers written one way (`3e-4` and `0.0003` are equal), so a
/// recipe step and a hand-typed command with the same settings match.
pub fn config_key(argv: &[String]) -> String {
    let mut positional = vec![];
    let mut flags: Vec<(String, Option<String>)> = vec![];
    let mut i = 0;
    while i < argv.len() {
        let arg = &argv[i];
        if let Some((flag, value)) = arg.split_once('=').filter(|_| arg.starts_with("--")) {
            flags.push((flag.to_string(), Some(value.to_string())));
        } else if arg.starts_with("--") {
            let takes_value = !FLAGS_WITHOUT_VALUE.contains(&arg.as_str());
            let value = argv
                .get(i + 1)
                .filter(|v| takes_value && !v.starts_with("--"))
                .cloned();
            i += usize::from(value.is_some());
            flags.push((arg.clone(), value));
        } else {
            positional.push(arg.clone());
        }
        i += 1;
    }
    flags.retain(|(flag, _)| !IGNORED_FLAGS.contains(&flag.as_str()));
    flags.sort();
    let canonical = |v: &str| v.parse::<f64>().map_or(v.to_string(), |x| format!("{x}"));
    let mut key = positional.join(" ");
    for (flag, value) in flags {
        key.push(' ');
        key.push_str(&flag);
        if let Some(v) = value {
            key.push('=');
            key.push_str(&canonical(&v));
        }
    }
    key
}

/// One finished training run, as the grouping needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct SeededRun {
    pub name: String,
    pub config: String,
    pub seed: u64,
    pub best_dev_f1: Option<f64>,
    pub test_f1: f64,
}

/// Runs with the same configuration and different seeds.
#[derive(Debug, Clone, PartialEq)]
pub struct SeedGroup {
    /// The run names, in the order given.
    pub names: Vec<String>,
    pub seeds: Vec<u64>,
    pub test_f1: MeanSd,
    /// Present when every run recorded a dev F1.
    pub best_dev_f1: Option<MeanSd>,
}

/// Mean and sample standard deviation (n − 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeanSd {
    pub mean: f64,
    pub sd: f64,
}

impl MeanSd {
    /// `None` for fewer than two values: one run has no spread to report.
    pub fn of(values: &[f64]) -> Option<MeanSd> {
        let n = values.len();
        if n < 2 {
            return None;
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        Some(MeanSd {
            mean,
            sd: var.sqrt(),
        })
    }
}

/// Groups of at least two distinct seeds, in the order their first run appears. A seed that
/// repeats within a group (the same run made twice) counts once: the first run is kept.
pub fn seed_groups(runs: &[SeededRun]) -> Vec<SeedGroup> {
    let mut order: Vec<&str> = vec![];
    let mut by_config: BTreeMap<&str, Vec<&SeededRun>> = BTreeMap::new();
    for run in runs {
        let members = by_config.entry(run.config.as_str()).or_default();
        if members.is_empty() {
            order.push(run.config.as_str());
        }
        if !members.iter().any(|m| m.seed == run.seed) {
            members.push(run);
        }
    }
    order
        .into_iter()
        .filter_map(|config| {
            let members = &by_config[config];
            let test: Vec<f64> = members.iter().map(|m| m.test_f1).collect();
            let dev: Option<Vec<f64>> = members.iter().map(|m| m.best_dev_f1).collect();
            Some(SeedGroup {
                names: members.iter().map(|m| m.name.clone()).collect(),
                seeds: members.iter().map(|m| m.seed).collect(),
                test_f1: MeanSd::of(&test)?,
                best_dev_f1: dev.and_then(|d| MeanSd::of(&d)),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    fn run(name: &str, config: &str, seed: u64, test: f64) -> SeededRun {
        SeededRun {
            name: name.into(),
            config: config.into(),
            seed,
            best_dev_f1: Some(test + 0.05),
            test_f1: test,
        }
    }

    #[test]
    fn the_key_ignores_seed_output_and_flag_order_but_not_settings() {
        let recipe = config_key(&argv(
            "train distill S --alpha 0.5 --lr 0.0003 --out runs/r/05-kd --seed 42 --force",
        ));
        let typed = config_key(&argv(
            "train distill S --lr 3e-4 --seed=43 --out runs/x --alpha 0.5 --cache-teacher c",
        ));
        assert_eq!(recipe, typed);
        let other_lr = config_key(&argv("train distill S --lr 1e-4 --alpha 0.5 --seed 44"));
        assert_ne!(recipe, other_lr);
        let other_student = config_key(&argv("train distill T --lr 3e-4 --alpha 0.5"));
        assert_ne!(recipe, other_student);
        // A flag without a value does not swallow the positional argument after it.
        let flag_first = |input: &str| {
            config_key(&argv(&format!(
                "train distill --force --reinit-classifier {input} --lr 3e-4"
            )))
        };
        assert_ne!(flag_first("S"), flag_first("T"));
    }

    #[test]
    fn groups_need_two_distinct_seeds_and_give_the_sample_sd() {
        let runs = vec![
            run("a-s42", "a", 42, 0.80),
            run("b", "b", 42, 0.70),
            run("a-s43", "a", 43, 0.82),
            run("a-again", "a", 42, 0.10),
            run("a-s44", "a", 44, 0.84),
        ];
        let groups = seed_groups(&runs);
        assert_eq!(
            groups.len(),
            1,
            "b has one seed; a's repeated seed 42 counts once"
        );
        let g = &groups[0];
        assert_eq!(g.names, ["a-s42", "a-s43", "a-s44"]);
        assert_eq!(g.seeds, [42, 43, 44]);
        assert!((g.test_f1.mean - 0.82).abs() < 1e-12);
        assert!((g.test_f1.sd - 0.02).abs() < 1e-12);
        assert!((g.best_dev_f1.unwrap().mean - 0.87).abs() < 1e-12);
    }
}
