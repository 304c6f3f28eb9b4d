"""GPU check: the pretraining recipe under the single-GPU config and under FSDP2, on one GPU.

    python benchmarks/fsdp_check.py [--steps 60] [--out /tmp/fsdp-check]

For each config it trains the default recipe (shortened), then reloads the saved model
with `from_pretrained` in a fresh process and scores it on the same held-out blocks. The
reloaded perplexity must equal the run's own (the saved file is the trained model: FSDP's
sharded checkpoints were consolidated), and the two configs must agree with each other
(same data, same seed; bf16 arithmetic differs slightly between them). Prints a table
and a final JSON line; exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {"gpu": ["--config_file", "accelerate_configs/gpu.yaml"],
           "fsdp": ["--config_file", "accelerate_configs/fsdp.yaml", "--num_processes", "1"]}
RELOAD_TOLERANCE = 1e-3  # relative: the same weights scored again
BETWEEN_TOLERANCE = 0.05  # relative: two bf16 runs of the same recipe


def rescore(out: Path) -> float:
    """Held-out perplexity of the model saved in `out`, reloaded from disk (run in a fresh process)."""
    sys.path.insert(0, str(ROOT))
    from toolkit.tasks import rescore_run

    return rescore_run(out)["eval_perplexity"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--out", default="/tmp/fsdp-check")
    p.add_argument("--rescore", help=argparse.SUPPRESS)  # internal: score one saved run
    args = p.parse_args()
    if args.rescore:
        print(json.dumps({"perplexity": rescore(Path(args.rescore))}))
        return 0

    rows = {}
    for name, launch in CONFIGS.items():
        out = Path(args.out) / name
        command = ["accelerate", "launch", *launch, "recipes/pretrain.py", f"training.output_dir={out}",
                   f"training.max_steps={args.steps}", f"training.eval_steps={args.steps}",
                   f"training.save_steps={args.steps // 2}", f"training.warmup_steps={args.steps // 10}"]
        print("$", " ".join(command), flush=True)
        run = subprocess.run(command, cwd=ROOT)
        if run.returncode != 0:
            rows[name] = {"error": f"exit {run.returncode}"}
            continue
        own = json.loads((out / "eval_results.json").read_text())
        reloaded = subprocess.run([sys.executable, __file__, "--rescore", str(out)], cwd=ROOT,
                                  capture_output=True, text=True)
        score = json.loads(reloaded.stdout.strip().splitlines()[-1])["perplexity"] if reloaded.returncode == 0 else None
        rows[name] = {"run_perplexity": own["eval_perplexity"], "reloaded_perplexity": score,
                      "init_perplexity": own.get("init_eval_perplexity"),
                      "files": sorted(p.name for p in out.glob("*.safetensors"))}
        if score is None:
            rows[name]["error"] = "reload failed: " + reloaded.stderr.strip()[-300:]

    checks = {}
    for name, row in rows.items():
        ok = "error" not in row and abs(row["reloaded_perplexity"] / row["run_perplexity"] - 1) <= RELOAD_TOLERANCE
        checks[f"{name}: reloaded model scores the run's perplexity"] = ok
    if all("error" not in r for r in rows.values()):
        a, b = rows["gpu"]["run_perplexity"], rows["fsdp"]["run_perplexity"]
        checks["gpu and fsdp agree"] = abs(a / b - 1) <= BETWEEN_TOLERANCE
    print(f"\n{'config':<6} {'before':>10} {'after':>10} {'reloaded':>10}  files")
    for name, row in rows.items():
        if "error" in row:
            print(f"{name:<6} {row['error']}")
        else:
            print(f"{name:<6} {row['init_perplexity']:>10.2f} {row['run_perplexity']:>10.3f}"
                  f" {row['reloaded_perplexity']:>10.3f}  {', '.join(row['files'])}")
    for check, ok in checks.items():
        print(("PASS " if ok else "FAIL ") + check)
    print(json.dumps({"rows": rows, "checks": checks}))
    return 0 if checks and all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
