"""The container image recipe (Containerfile), its build context filter, compose.yaml and its
provision script.

compose.yaml is validated against the Compose Specification's schema that check-jsonschema
ships (``--builtin-schema vendor.compose-spec``), and the provision script that compose runs
in a container is run here for real, then every kit and node.toml it wrote is loaded by
biofed itself. Building and running the image needs podman and root: scripts/build_image.sh
(docs/how-to/deploy.md says where it ran).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from biofed.identity import load_kit
from biofed.node import NodeConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
SITES = ("hospital-a", "hospital-b", "hospital-c")


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Containerfile, continuation lines joined."""
    lines: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    assert not pending, "a continuation line ends the file"
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def stages(steps: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = []
    for step in steps:
        if step[0] == "FROM":
            out.append([])
        if out:
            out[-1].append(step)
    return out


def test_the_containerfile_takes_its_base_as_an_argument_and_runs_biofed_as_non_root() -> None:
    steps = instructions(ROOT / "Containerfile")
    assert steps[0][0] == "ARG"
    assert steps[0][1].startswith("BASE_IMAGE=")
    assert "bookworm" in steps[0][1]
    *_, runtime = stages(steps)
    assert runtime[0] == ("FROM", "base AS runtime")
    assert ("FROM", "${BASE_IMAGE} AS base") in steps
    users = [args for op, args in runtime if op == "USER"]
    assert users == ["10001:10001"]  # numeric: Kubernetes' runAsNonRoot can check it
    assert ("ENTRYPOINT", '["biofed"]') in runtime
    assert ("CMD", '["--help"]') in runtime
    labels = " ".join(args for op, args in runtime if op == "LABEL")
    for key in ("title", "description", "version", "licenses", "base.name"):
        assert f"org.opencontainers.image.{key}=" in labels
    assert 'org.opencontainers.image.licenses="Apache-2.0"' in labels
    # no pip settings (a mirror's URL, a token) in the runtime stage's history
    runtime_text = " ".join(args for _, args in runtime)
    assert "PIP_" not in runtime_text
    assert not [args for op, args in steps if op in {"ADD"}]
    copies = [args for op, args in steps if op == "COPY"]
    assert copies == [
        "pyproject.toml README.md /tmp/biofed-src/",
        "src /tmp/biofed-src/src",
        "--from=build /opt/biofed /opt/biofed",
    ]


def test_the_image_installs_the_torch_extra_that_pins_torch() -> None:
    steps = instructions(ROOT / "Containerfile")
    extras = [args for op, args in steps if op == "ARG" and args.startswith("BIOFED_EXTRAS=")]
    assert extras == ["BIOFED_EXTRAS=torch,postgres"]
    with (ROOT / "pyproject.toml").open("rb") as file:
        optional = tomllib.load(file)["project"]["optional-dependencies"]
    (torch,) = [r for r in optional["torch"] if r.startswith("torch")]
    assert re.fullmatch(r"torch==\d+\.\d+\.\d+", torch), torch
    run = " ".join(args for op, args in steps if op == "RUN")
    assert '"/tmp/biofed-src[${BIOFED_EXTRAS}]"' in run
    # the build fails unless pip installed exactly the pinned release (a CPU build or not)
    assert f'== "{torch.removeprefix("torch==")}"' in run
    assert "pip install torch" not in run


def test_the_build_context_holds_only_what_pip_needs() -> None:
    ignore = (ROOT / ".containerignore").read_text()
    assert (ROOT / ".dockerignore").read_text() == ignore
    patterns = [p for p in ignore.splitlines() if p and not p.startswith("#")]
    assert patterns[0] == "*"  # .venv, .git, mlruns/, consortium/ (keys), logs: all out
    assert {p for p in patterns if p.startswith("!")} == {"!pyproject.toml", "!README.md", "!src"}


def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


def compose_schema() -> dict[str, Any]:
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads((vendor / "compose-spec.json").read_text())
    assert isinstance(schema, dict)
    return schema


def test_compose_file_validates_against_the_compose_spec() -> None:
    done = subprocess.run(
        [
            sys.executable,
            *("-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec"),
            str(ROOT / "compose.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # the same schema refuses a wrong condition: the check can fail
    broken = compose()
    broken["services"]["hospital-a"]["depends_on"]["coordinator"]["condition"] = "started"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, compose_schema())


def test_compose_starts_a_coordinator_and_three_nodes_after_provisioning() -> None:
    services = compose()["services"]
    assert set(services) == {"provision", "coordinator", *SITES, "researcher"}
    coordinator = services["coordinator"]
    command = coordinator["command"]
    assert command[:2] == ["coordinator", "start"]
    assert command[command.index("--listen") + 1] == "0.0.0.0:7443"
    assert command[command.index("--state") + 1] == "sqlite:////data/state.db"
    assert coordinator["ports"] == ["127.0.0.1:7443:7443"]  # the host's loopback only
    assert "healthcheck" in coordinator
    assert coordinator["depends_on"] == {
        "provision": {"condition": "service_completed_successfully"}
    }
    for site in SITES:
        node = services[site]
        assert node["command"] == ["node", "start", "--kit", "/kit", "--config", "/kit/node.toml"]
        assert node["depends_on"] == {
            "provision": {"condition": "service_completed_successfully"},
            "coordinator": {"condition": "service_healthy"},
        }
        assert "ports" not in node  # nodes dial out
        assert node["volumes"] == [f"{site}:/kit"]  # its own kit and data, nothing else
    for name, service in services.items():
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        assert service.get("user", "10001") != "0:0" or name == "provision", name
    # the CA (volume operator) is mounted by provision alone
    for name, service in services.items():
        uses = {v.split(":")[0] for v in service.get("volumes", [])}
        assert ("operator" in uses) == (name == "provision"), name


@pytest.mark.slow  # five biofed commands: about 5 s of CPU
def test_the_provision_script_makes_kits_and_sites_that_biofed_loads(tmp_path: Path) -> None:
    script = ROOT / "deploy" / "compose" / "provision.sh"
    (command,) = [c for c in compose()["services"]["provision"]["entrypoint"][1:]]
    assert command == "/deploy/provision.sh"
    env = {
        **os.environ,
        "OUT": str(tmp_path / "out"),
        "DEPLOY": str(script.parent),
        "TMPDIR": str(tmp_path),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    first = subprocess.run(
        ["/bin/sh", str(script)], env=env, capture_output=True, text=True, timeout=120
    )
    assert first.returncode == 0, first.stderr
    out = tmp_path / "out"
    coordinator = load_kit(out / "coordinator")
    assert coordinator.role == "coordinator"
    assert coordinator.coordinator == "coordinator:7443"  # compose's service name and port
    for site in SITES:
        kit = load_kit(out / site)
        assert (kit.role, kit.name) == ("site", site)
        config = NodeConfig.from_toml(out / site / "node.toml")
        data = config.datasets["tcga-brca"].load()
        assert len(data.train) > 0
    assert load_kit(out / "alice").role == "researcher"
    assert (out / "operator" / "ca").is_dir()
    assert not any((out / kit / "ca").exists() for kit in ("coordinator", *SITES, "alice"))
    for volume in out.iterdir():
        assert volume.stat().st_mode & 0o077 == 0, volume
    again = subprocess.run(
        ["/bin/sh", str(script)], env=env, capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 0, again.stderr
    assert "nothing to do" in again.stdout


def test_the_build_script_is_strict_bash() -> None:
    script = ROOT / "scripts" / "build_image.sh"
    text = script.read_text()
    assert "set -euo pipefail" in text
    assert os.access(script, os.X_OK)
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=10)
    for step in ("mmdebstrap --variant=apt", "podman_ import", "-f Containerfile", " demo"):
        assert step in text, step
    assert '--build-arg "BASE_IMAGE=$BASE_TAG"' in text
