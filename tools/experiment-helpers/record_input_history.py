"""Adds `input_history` to the copies of training runs under experiments/ that were made before
run.json recorded it, so that `surgery report` tells their cut family.

A run's input history is the list of operations in its starting checkpoint's config.json. The
checkpoints were not kept; each student below is named by the path its run.json records
(`provenance.student`), and its operations are those of the command that made it, read from:
the recipe step of that name (recipes/*.toml), the script that made it, or the `surgery inspect`
output kept beside the runs. A run whose student is not listed is left as it is.

Usage: python3 tools/experiment-helpers/record_input_history.py [--check]
"""
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]

# The teacher: `train finetune` of the pre-trained model (whose config has no history).
TEACHER = ["train finetune"]

STUDENTS = {
    # recipes/conll2003-minilm-recovery.toml, steps emb64 and tie (both from @teacher).
    "runs/conll2003-minilm-recovery/02-emb64": TEACHER + ["factorize-embeddings"],
    "runs/conll2003-minilm-recovery/04-tie": TEACHER + ["tie-layers"],
    # recipes/conll2003-minilm-sparse.toml, steps sparse50 and sparse24 (from the teacher).
    "runs/conll2003-minilm-sparse/01-sparse50": TEACHER + ["sparsegpt"],
    "runs/conll2003-minilm-sparse/03-sparse24": TEACHER + ["sparsegpt"],
    # recipes/conll2003-minilm-heads.toml, steps heads-gates and heads-importance.
    "runs/conll2003-minilm-heads/02-heads-gates": TEACHER + ["remove-heads"],
    "runs/conll2003-minilm-heads/04-heads-importance": TEACHER + ["remove-heads"],
    # recipes/conll2003-minilm.toml, steps vocab → vocab-emb48 → student-a (4,188,297 params).
    "runs/student-a/student-a": TEACHER + ["prune-vocab", "factorize-embeddings", "lowrank-layers"],
    # experiments/student-a-structure/student-fv6.inspect.txt (its history, printed).
    "runs/s7/student-fv6": TEACHER + ["factorize-embeddings", "lowrank-layers"],
    # experiments/student-a-structure/recipe-step.sh (its log: a-full-aug6-hid-s42/recipe-step.log).
    "runs/sa42/student-a-full": TEACHER + ["factorize-embeddings", "lowrank-layers"],
    # experiments/student-a-structure/student-a4.inspect.txt and a4.sh.
    "runs/s7/student-a4": TEACHER
    + ["prune-vocab", "factorize-embeddings", "drop-layers", "lowrank-layers"],
    # experiments/structured-pruning/run.sh (prune-structured of the teacher).
    "runs/structured-pruning/structured-0.5": TEACHER + ["prune-structured"],
    # recipes/conll2003-minilm-structured.toml, steps structured-a-emb48 → structured-a.
    "runs/student-a-structured/structured": TEACHER
    + ["factorize-embeddings", "prune-structured"],
}


def main():
    check = "--check" in sys.argv[1:]
    missing = []
    for run_json in sorted((ROOT / "experiments").rglob("run.json")):
        run = json.loads(run_json.read_text())
        if "input_history" in run:
            continue
        student = (run.get("provenance") or {}).get("student")
        if run["op"] == "train finetune":
            # Every fine-tuning run kept here starts from the pre-trained model.
            pretrained = run["command"][1] == "run" or "minilm-l6-h384-uncased" in run["command"][3]
            ops = [] if pretrained else None
        elif run["op"] == "train gates":
            ops = TEACHER  # experiments/heads: gates trained on the teacher
        else:
            ops = STUDENTS.get(student)
        if ops is None:
            missing.append(f"{run_json.relative_to(ROOT)} ({student})")
            continue
        if check:
            missing.append(f"{run_json.relative_to(ROOT)}: not recorded yet")
            continue
        run["input_history"] = ops
        run_json.write_text(json.dumps(run, indent=2) + "\n")
        print(f"{run_json.relative_to(ROOT)}: {ops}")
    for m in missing:
        print(f"left as it is: {m}", file=sys.stderr)
    return 1 if check and missing else 0


if __name__ == "__main__":
    sys.exit(main())
