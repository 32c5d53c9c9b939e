#!/usr/bin/env bash
# Where the edit → test loop's rebuild goes: edit one cut's source file (one error message
# changed, put back at the end), rebuild everything `cargo test --release` needs with
# `--timings`, and print the seconds of each of the crate's units (library, binary, integration
# tests), then the test run's seconds. MODE=incremental does the same with incremental
# compilation of the crate (dependencies are never incremental), which keeps what an edit did
# not touch, as a split into crates would; a plain `touch` would show it nothing to redo.
# Nothing else may run. Usage: MODE=default|incremental experiments/code-shape/build-units.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
mode=${MODE:-default}
if [ "$mode" = incremental ]; then export CARGO_PROFILE_RELEASE_INCREMENTAL=true; fi
cut=src/cuts/drop_layers.rs
cargo test --release --no-run > /dev/null 2>&1    # everything built once, in this mode
cp "$cut" /tmp/build-units-cut.rs
trap 'cp /tmp/build-units-cut.rs "$cut"' EXIT
sed -i 's/--keep names no layer"/--keep names no layer at all"/' "$cut"
grep -q 'no layer at all' "$cut"
start=$(date +%s.%N)
cargo test --release --no-run --timings > /tmp/build-units.log 2>&1
built=$(date +%s.%N)
cargo test --release > /tmp/build-units-test.log 2>&1 || { tail -30 /tmp/build-units-test.log; exit 1; }
done=$(date +%s.%N)
report=$(ls -t target/cargo-timings/cargo-timing-*.html | head -1)
python3 - "$report" "$mode" "$cut" "$start" "$built" "$done" <<'EOF'
import json, re, sys
report, mode, cut, start, built, done = sys.argv[1:]
html = open(report).read()
units = json.loads(re.search(r"const UNIT_DATA = (\[.*?\]);", html, re.S).group(1))
ours = {f'{u["mode"]}{u["target"]}': round(u["duration"], 1)
        for u in units if u["name"] == "surgery"}
print(json.dumps({"mode": mode, "edited": cut, "rebuild_s": round(float(built) - float(start), 1),
                  "units_s": ours, "tests_s": round(float(done) - float(built), 1)}))
EOF
