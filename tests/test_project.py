"""The project's promises about itself: README commands, CI script, accelerate configs."""

import re
import subprocess

import pytest
import yaml

from tests.conftest import ROOT

CONFIGS = ROOT / "accelerate_configs"


def quickstart_commands():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Quickstart.*?```bash\n(.*?)```", text, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def test_readme_quickstart_is_two_commands_and_ci_runs_the_test_one():
    install_and_run, install_and_test = quickstart_commands()
    assert "accelerate launch recipes/pretrain.py" in install_and_run
    assert "pytest" in install_and_test
    assert install_and_test in (ROOT / ".ci" / "run").read_text()


@pytest.mark.slow
def test_ci_script_fails_when_pytest_collects_nothing(tmp_path):
    script = (ROOT / ".ci" / "run").read_text()
    assert 'if [ "$status" -eq 5 ]' in script
    # Run the script's exit-code logic against a pytest that finds no tests.
    logic = script.split("status=$?", 1)[1]
    result = subprocess.run(["bash", "-c", f"cd {tmp_path} && python -m pytest -q -p no:cacheprovider; status=$?{logic}"],
                            capture_output=True, text=True)
    assert result.returncode == 1


@pytest.mark.parametrize(
    "name, kind, processes",
    [("cpu.yaml", "NO", 1), ("cpu_2proc.yaml", "MULTI_GPU", 2), ("gpu.yaml", "NO", 1),
     ("multi_gpu.yaml", "MULTI_GPU", 8), ("fsdp.yaml", "FSDP", 8), ("multi_node.yaml", "MULTI_GPU", 16),
     ("cpu_2machines.yaml", "MULTI_GPU", 2)],
)
def test_accelerate_configs_load_with_accelerate(name, kind, processes):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(CONFIGS / name))
    assert config.distributed_type.value == kind
    assert config.num_processes == processes
    if name == "fsdp.yaml":
        assert config.fsdp_config["fsdp_version"] == 2
        assert config.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    if name == "cpu.yaml":
        assert config.use_cpu is True
    if name in ("multi_node.yaml", "cpu_2machines.yaml"):  # torchrun's static rendezvous at the main machine
        assert config.num_machines == 2 and config.rdzv_backend == "static" and config.same_network is True
    raw = yaml.safe_load((CONFIGS / name).read_text())
    assert raw["compute_environment"] == "LOCAL_MACHINE"


def test_every_accelerate_config_is_documented_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    for path in CONFIGS.glob("*.yaml"):
        assert f"accelerate_configs/{path.name}" in readme, path.name
