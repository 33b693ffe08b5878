"""No Docker engine here: check instead that the deploy files only use commands, flags and settings that exist."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import yaml

from aligner.cli import cli
from aligner.config import env_names

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def check_invocation(args: list[str]) -> None:
    """Walk click's command tree with ``args`` (after ``dynalign``) and fail on any unknown command or option."""
    command: click.Command = cli
    i = 0
    while isinstance(command, click.Group) and i < len(args) and not args[i].startswith("-"):
        assert args[i] in command.commands, f"unknown dynalign command {args[i]!r}"
        command = command.commands[args[i]]
        i += 1
    known = {opt for p in command.params for opt in getattr(p, "opts", [])}
    ctx = command.make_context("dynalign", list(args[i:]), resilient_parsing=True)
    for arg in args[i:]:
        if arg.startswith("--"):
            assert arg.split("=")[0] in known, f"{command.name}: unknown option {arg}"
    assert ctx is not None


def dockerfile_instruction(name: str) -> list[str]:
    text = (DEPLOY / "Dockerfile").read_text()
    match = re.search(rf"^{name}\s+(\[.*\])\s*$", text, re.M)
    assert match, f"Dockerfile has no exec-form {name}"
    return yaml.safe_load(match.group(1))


def test_dockerfile_runs_a_real_command():
    assert dockerfile_instruction("ENTRYPOINT") == ["dynalign"]
    check_invocation(dockerfile_instruction("CMD"))


def test_dockerfile_env_vars_exist():
    text = (DEPLOY / "Dockerfile").read_text()
    for name in re.findall(r"\b(DYNALIGN_[A-Z_]+)=", text):
        assert name in env_names(), f"Dockerfile sets unknown {name}"


def test_compose_services_and_worker_command():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"kafka", "redis", "dynalign"} <= set(services)
    kafka_env = services["kafka"]["environment"]
    assert "controller" in kafka_env["KAFKA_PROCESS_ROLES"]  # KRaft, no ZooKeeper
    worker = services["dynalign"]
    command = worker["command"]
    check_invocation(shlex.split(command) if isinstance(command, str) else command)
    for name in worker["environment"]:
        if name.startswith("DYNALIGN_"):
            assert name in env_names(), f"compose sets unknown {name}"
    source = command[command.index("--source") + 1]
    assert source.startswith("kafka://kafka:9092/")  # the worker consumes from the compose broker
    assert worker["environment"]["DYNALIGN_PUBLISH_REDIS_URL"].startswith("redis://redis:")


def worker_healthcheck(port: int | None = None) -> list[str]:
    """The compose worker's healthcheck command (after ``CMD``), pointed at ``port`` instead of its own."""
    worker = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]["dynalign"]
    kind, *command = worker["healthcheck"]["test"]
    assert kind == "CMD", "exec form: the image has no shell tools to rely on"
    configured = worker["environment"]["DYNALIGN_SERVICE_METRICS_PORT"]
    assert f"http://127.0.0.1:{configured}/healthz" in command[-1], "the healthcheck must ask the worker's endpoint"
    return [c.replace(f":{configured}/", f":{port}/") for c in command] if port is not None else command


def test_compose_worker_healthcheck_uses_the_health_endpoint():
    command = worker_healthcheck()
    assert command[:2] == ["python", "-c"]  # the image is python:*-slim: no curl
    compile(command[2], "healthcheck", "exec")
    # Run for real against a live service in tests/aligner/test_metrics.py (healthy: 0, degraded: 1).


def test_deploy_readme_commands_exist():
    blocks = re.findall(r"```(?:sh|bash)?\n(.*?)```", (DEPLOY / "README.md").read_text(), re.S)
    lines = [line.strip() for block in blocks for line in block.splitlines() if line.strip().startswith("dynalign ")]
    assert lines, "the deploy README shows no dynalign command"
    for line in lines:
        check_invocation(shlex.split(line.split("#")[0])[1:])


def test_checker_rejects_unknown_flags():
    import pytest

    with pytest.raises(AssertionError):
        check_invocation(["run", "--sauce", "x"])
    with pytest.raises(AssertionError):
        check_invocation(["serve"])
