"""The light client install: ``AlignmentClient`` and ``dynalign query`` work without torch or any other module of
the ``service`` extra, and a service command says how to install it instead of raising a traceback.

The commands run in a fresh interpreter whose import system refuses every ``service`` module (a ``sys.meta_path``
finder), which is what a client-only install looks like to the code, in a real terminal."""

from __future__ import annotations

import sys

import redis

from aligner.cli.app import SERVICE_MODULES
from aligner.publish.redis_alignments import RedisPublisher
from tests.aligner.test_redis_alignments import make_update
from tests.terminal import REPO, in_terminal

WITHOUT_SERVICE = f"""
import sys

class RefuseServiceModules:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {sorted(SERVICE_MODULES)!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (not installed)", name=name)

sys.meta_path.insert(0, RefuseServiceModules())
"""


def without_service(*lines: str) -> list[str]:
    return [sys.executable, "-c", WITHOUT_SERVICE + "\n".join(lines)]


def dynalign_without_service(*args: str) -> list[str]:
    return without_service("from aligner.cli import main", f"sys.argv = ['dynalign', *{list(args)!r}]", "main()")


def test_query_and_client_need_no_service_module(redis_url):
    RedisPublisher(redis.Redis.from_url(redis_url)).publish(make_update(1))
    env = {"PYTHONPATH": str(REPO)}
    shown = in_terminal(dynalign_without_service("query", "a1", "--net", "netA", "--to", "netB", "--redis", redis_url),
                        env=env, timeout_s=60)
    assert shown.returncode == 0, shown.text
    assert "version 1 of netA -> netB: snapshot 1" in shown.text and "netA:a1 -> netB" in shown.text
    assert "b2" in shown.text

    shown = in_terminal(without_service(
        "from aligner import AlignmentClient",
        f"print([c.node for c in AlignmentClient.from_url({redis_url!r}).top('a0', 'netA', 'netB')])",
        f"assert not set({sorted(SERVICE_MODULES)!r}) & set(sys.modules)"), env=env, timeout_s=60)
    assert shown.returncode == 0 and "['b0', 'b1']" in shown.text, shown.text


def test_a_service_command_without_the_service_install_says_how_to_get_it(tmp_path):
    shown = in_terminal(dynalign_without_service("run", "--source", "-", "--state", str(tmp_path / "state")),
                        env={"PYTHONPATH": str(REPO)}, timeout_s=60)
    assert shown.returncode == 1
    line = shown.text.strip()
    assert "\n" not in line and line.startswith("dynalign: error: this command needs ") and "dynalign[service]" in line
