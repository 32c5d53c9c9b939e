//! `surgery predict` and the printing commands: answers stream line by line, control characters
//! are dropped, empty lines get empty answers, CR-only line ends are lines, and a command whose
//! reader is gone ends quietly.

use std::io::{BufRead, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::util::{conll, model, recipe, s, surgery, tempdir};

// ------------------------------------------------------------------------------------------
// Output pipes closed early.
/// Runs the binary with its standard output on a pipe whose reader is already closed.
fn surgery_into_closed_pipe(args: &[&str]) -> std::process::Output {
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut fds = [0; 2];
    // SAFETY: pipe writes two new descriptors into `fds`.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both descriptors were just created and are owned here alone.
    let (reader, writer) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(reader);
    Command::new(env!("CARGO_BIN_EXE_surgery"))
        .args(args)
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

#[test]
fn predict_streams_answers_line_by_line() {
    let dir = tempdir();
    let m = model(dir.path());
    let mut child = Command::new(env!("CARGO_BIN_EXE_surgery"))
        .args(["predict", s(&m)])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    // The answer to the first line comes while standard input is still open.
    writeln!(stdin, "John lives in Paris").unwrap();
    stdin.flush().unwrap();
    // The limit only tells an answer per line from one at the end of the input.
    let first = rx.recv_timeout(Duration::from_secs(120));
    writeln!(stdin, "Anna").unwrap();
    drop(stdin);
    let first = first.expect("no answer before the end of the input");
    assert!(first.contains("John lives in Paris"), "{first}");
    let second = rx.recv_timeout(Duration::from_secs(120)).unwrap();
    assert!(second.contains("Anna"), "{second}");
    assert!(child.wait().unwrap().success());
}

#[test]
fn predict_drops_control_and_format_characters() {
    let dir = tempdir();
    let m = model(dir.path());
    let input = dir.path().join("in.txt");
    // BEL, NUL, zero-width space, BOM, bidi marks, a zero-width joiner: no words at all.
    std::fs::write(
        &input,
        "\u{7}\u{0} \u{200b}\u{feff} \u{200e}\u{202e} \u{200d}\u{2066}\nJohn\n",
    )
    .unwrap();
    let r = surgery(&["predict", s(&m), "--input", s(&input)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let lines: Vec<serde_json::Value> = r
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["entities"], serde_json::json!([]));
}

#[test]
fn predict_answers_nothing_to_empty_input_and_every_blank_line() {
    let dir = tempdir();
    let m = model(dir.path());
    for (input, lines) in [("", 0), ("\n\n\n", 3), ("John\r\nAnna\r\n", 2)] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_surgery"))
            .args(["predict", s(&m)])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        assert_eq!(text.lines().count(), lines, "{input:?}: {text}");
    }
}

#[test]
fn predict_reads_cr_only_line_ends_as_lines() {
    let dir = tempdir();
    let m = model(dir.path());
    let input = dir.path().join("mac.txt");
    std::fs::write(&input, "John lives in Paris\rAnna visited Berlin\rPeter\r").unwrap();
    let r = surgery(&["predict", s(&m), "--input", s(&input)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout.lines().count(), 3, "{}", r.stdout);
}

#[test]
fn every_printing_command_ends_quietly_when_its_reader_is_gone() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempdir();
    let m = model(dir.path());
    let data = conll(dir.path());
    let scores = dir.path().join("scores.txt");
    std::fs::write(&scores, "John B-PER B-PER\nParis B-LOC O\n").unwrap();
    let sentences = dir.path().join("s.txt");
    std::fs::write(&sentences, "John lives in Paris\n").unwrap();
    let recipe = recipe(dir.path(), &m, "", "MODEL");
    let runs = dir.path().join("runs");
    let (ms, ds) = (s(&m), s(&data));
    let out = |name: &str| dir.path().join(name).display().to_string();
    let (cut, onnx) = (out("cut"), out("onnx"));
    let commands: Vec<Vec<&str>> = vec![
        vec!["inspect", ms],
        vec!["inspect", ms, "--json"],
        vec!["eval", ms, "--data", ds],
        vec!["score", s(&scores)],
        vec!["predict", ms, "--input", s(&sentences)],
        vec!["check-device", "--steps", "1"],
        vec!["run", s(&recipe), "--runs", s(&runs), "--dry-run"],
        vec!["drop-layers", ms, &cut, "--keep", "0", "--json"],
        vec!["export", ms, &onnx, "--json"],
    ];
    for args in commands {
        let r = surgery_into_closed_pipe(&args);
        let stderr = String::from_utf8_lossy(&r.stderr);
        assert!(
            !stderr.contains("panicked") && r.status.code() != Some(101),
            "{args:?}: {:?} {stderr}",
            r.status
        );
        assert!(
            r.status.signal() == Some(libc::SIGPIPE) || r.status.success(),
            "{args:?}: {:?} {stderr}",
            r.status
        );
    }
}
