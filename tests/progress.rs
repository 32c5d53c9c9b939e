//! Progress of long work: plain lines on stderr when it is not a terminal (stage, count, rate,
//! time), none with `--quiet`; standard output (the command's result) unchanged either way.

use crate::util::{repo, surgery, tempdir};

#[test]
fn long_work_logs_plain_progress_lines_and_quiet_shows_none() {
    let dir = tempdir();
    let input = repo().join("fixtures/tiny-bert-tc");
    let run = |name: &str, quiet: bool| {
        let out = dir.path().join(name);
        let mut args = vec![
            "lowrank-layers",
            input.to_str().unwrap(),
            out.to_str().unwrap(),
            "--rank",
            "3",
            "--json",
        ];
        if quiet {
            args.push("--quiet");
        }
        let r = surgery(&args);
        assert_eq!(r.code, 0, "{}", r.stderr);
        r
    };
    let plain = run("plain", false);
    let line = plain
        .stderr
        .lines()
        .find(|l| l.starts_with("svd: "))
        .unwrap_or_else(|| panic!("no progress line in {}", plain.stderr));
    assert!(line.starts_with("svd: 12/12 linears in "), "{line}");
    assert!(line.contains("linears/s"), "{line}");
    let quiet = run("quiet", true);
    assert!(!quiet.stderr.contains("svd: "), "{}", quiet.stderr);
    // The report on stdout is the same JSON either way.
    let report = |s: &str| -> serde_json::Value { serde_json::from_str(s).unwrap() };
    assert_eq!(
        report(&plain.stdout)["params_after"],
        report(&quiet.stdout)["params_after"]
    );
}
