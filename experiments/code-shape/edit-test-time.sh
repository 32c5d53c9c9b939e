#!/usr/bin/env bash
# The edit → test loop on this machine: touch one cut's source file, then time the rebuild of
# everything `cargo test --release` needs and the test run itself. Nothing else may run.
# Usage: experiments/code-shape/edit-test-time.sh REPO_DIR   (a checkout whose target/ is built)
set -euo pipefail
repo=${1:?checkout}
cd "$repo"
cut=$(find src/cuts -name drop_layers.rs | head -1)
cargo test --release --no-run > /dev/null 2>&1    # everything built once
touch "$cut"
start=$(date +%s.%N)
cargo test --release --no-run > /dev/null 2>&1
built=$(date +%s.%N)
cargo test --release > /tmp/edit-test-time.log 2>&1 || { tail -30 /tmp/edit-test-time.log; exit 1; }
done=$(date +%s.%N)
passed=$(grep -oE "[0-9]+ passed" /tmp/edit-test-time.log | awk '{s+=$1} END {print s}')
python3 -c "print('{\"repo\": \"$repo\", \"commit\": \"$(git rev-parse --short HEAD)\", \"touched\": \"$cut\", \"rebuild_s\": %.1f, \"tests_s\": %.1f, \"total_s\": %.1f, \"tests_passed\": $passed}' % ($built - $start, $done - $built, $done - $start))"
