//! Entity-level metrics equal seqeval's on random and adversarial tag sequences (golden numbers
//! from tools/fixtures/make_seqeval_fixtures.py), in the default and the strict IOB2 mode.

use surgery::metrics::{evaluate, Matching, Report, Row};

use crate::util::repo;

fn assert_row(ours: &Row, theirs: &serde_json::Value, what: &str) {
    for (name, value) in [
        ("precision", ours.precision),
        ("recall", ours.recall),
        ("f1", ours.f1),
    ] {
        // seqeval's NaN (an average over no entity types) is stored as null; we report 0.
        let Some(expected) = theirs[name].as_f64() else {
            assert_eq!(value, 0.0);
            continue;
        };
        assert!(
            (value - expected).abs() < 1e-12,
            "{what} {name}: {value} vs seqeval {expected}"
        );
    }
    assert_eq!(
        ours.support as u64,
        theirs["support"].as_u64().unwrap(),
        "{what} support"
    );
}

fn assert_report(ours: &Report, theirs: &serde_json::Value, case: usize) {
    let theirs = theirs.as_object().unwrap();
    let types: Vec<&String> = theirs.keys().filter(|k| !k.ends_with(" avg")).collect();
    assert_eq!(
        ours.per_type.len(),
        types.len(),
        "case {case}: types {:?}",
        types
    );
    for t in types {
        assert_row(
            &ours.per_type[t.as_str()],
            &theirs[t],
            &format!("case {case} {t}"),
        );
    }
    assert_row(
        &ours.micro,
        &theirs["micro avg"],
        &format!("case {case} micro"),
    );
    assert_row(
        &ours.macro_avg,
        &theirs["macro avg"],
        &format!("case {case} macro"),
    );
    assert_row(
        &ours.weighted,
        &theirs["weighted avg"],
        &format!("case {case} weighted"),
    );
}

#[test]
fn entity_scores_equal_seqeval_default_and_strict() {
    let text = std::fs::read_to_string(repo().join("fixtures/seqeval/cases.json")).unwrap();
    let cases: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    let (mut strict_checked, mut sentences) = (0, 0);
    for (i, case) in cases.iter().enumerate() {
        let read =
            |key: &str| -> Vec<Vec<String>> { serde_json::from_value(case[key].clone()).unwrap() };
        let (gold, pred) = (read("gold"), read("pred"));
        sentences += gold.len();
        let ours = evaluate(&gold, &pred, Matching::Default).unwrap();
        assert_report(&ours, &case["default"], i);
        if !case["strict"].is_null() {
            let ours = evaluate(&gold, &pred, Matching::StrictIob2).unwrap();
            assert_report(&ours, &case["strict"], i);
            strict_checked += 1;
        }
    }
    assert!(
        sentences > 2000 && strict_checked > 200,
        "{sentences} {strict_checked}"
    );
}
