"""Markdown tables from the experiment result files (runs/cuts/results.jsonl, runs/distill/results.jsonl).
Usage: python3 tools/experiment-helpers/table.py cuts|distill FILE TEACHER_TEST_F1"""
import json
import sys

kind, path, teacher = sys.argv[1], sys.argv[2], float(sys.argv[3])
rows = [json.loads(l) for l in open(path)]
if kind == "cuts":
    print("| cut | command (after the teacher) | unique params | test F1 after cut | after recovery | % of teacher | cut time (s) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        args = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in r["args"].items()
                        if v not in (None, False, [], "") and k not in ("calib_sentences", "damp", "block", "modules", "coverage", "corpus", "calib"))
        print(f"| {r['name']} | `{r['op']} {args}` | {r['params_after']:,} | {r['test_f1_after_cut']:.4f} | "
              f"{r['test_f1_after_recovery']:.4f} | {100 * r['test_f1_after_recovery'] / teacher:.1f}% | {r['cut_seconds']:.1f} |")
else:
    print("| run | unique params | loss | steps | best dev F1 | test F1 | % of teacher | eval tokens/s |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        d = r["distill"]
        loss = "CE" if d["alpha"] == 1.0 else f"{d['alpha']}·CE + {1 - d['alpha']}·τ²KL (τ={d['temperature']})"
        if d["hidden_weight"]:
            loss += f" + {d['hidden_weight']}·hidden MSE"
        print(f"| {r['name']} | {r['unique_parameters']:,} | {loss} | {r['steps']} | {r['best_dev_f1']:.4f} | "
              f"{r['test_f1']:.4f} | {100 * r['test_f1'] / teacher:.1f}% | {r['eval_tokens_per_s']:.0f} |")
