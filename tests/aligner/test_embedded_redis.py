import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from aligner.publish.embedded_redis import EmbeddedRedis, free_port, redis_server_binary


def test_data_survives_a_stop_and_restart(tmp_path):
    with EmbeddedRedis(tmp_path) as server:
        redis.Redis.from_url(server.url).set("k", "v")
    assert (tmp_path / "dump.rdb").exists()
    with EmbeddedRedis(tmp_path) as server:
        assert redis.Redis.from_url(server.url).get("k") == b"v"


def test_a_second_user_of_the_directory_shares_the_running_server(tmp_path):
    with EmbeddedRedis(tmp_path) as first:
        second = EmbeddedRedis(tmp_path).start()
        assert second.port == first.port and not second.owned
        second.stop()  # not its server: must not stop it
        assert redis.Redis.from_url(first.url).ping()
    assert not (tmp_path / "server.json").exists()


def test_the_server_needs_its_password_and_refuses_what_could_take_over_the_host(tmp_path):
    with EmbeddedRedis(tmp_path / "redis") as server:
        anyone = redis.Redis(port=server.port)
        with pytest.raises(redis.AuthenticationError):
            anyone.get("k")
        owner = redis.Redis.from_url(server.url)
        owner.set("k", "v")
        for command in (("CONFIG", "SET", "dir", str(tmp_path)), ("DEBUG", "SLEEP", "0"), ("MODULE", "LIST"),
                        ("REPLICAOF", "127.0.0.1", "1")):
            with pytest.raises(redis.ResponseError, match="unknown command"):
                owner.execute_command(*command)
        cmdline = Path(f"/proc/{server.process.pid}/cmdline").read_bytes().decode()
        assert server.password not in cmdline and server.password not in server.info_file.read_text()
    for name in ("password", "redis.conf", "server.json"):
        path = tmp_path / "redis" / name
        assert not path.exists() or stat.S_IMODE(path.stat().st_mode) == 0o600, name
    assert stat.S_IMODE((tmp_path / "redis").stat().st_mode) == 0o700


def test_a_stale_server_file_does_not_make_another_server_trusted(tmp_path):
    """Someone else's server now listens where ours was: it must not be used, whatever server.json says."""
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    port = free_port()
    impostor = subprocess.Popen([redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir",
                                 str(other_dir), "--save", ""], stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: redis.Redis(port=port).ping())
        ours = tmp_path / "redis"
        ours.mkdir()
        (ours / "server.json").write_text(json.dumps({"port": port, "pid": impostor.pid, "run_id": "guess"}))
        with EmbeddedRedis(ours) as server:
            assert server.owned and server.port != port
            redis.Redis.from_url(server.url).set("mine", "1")
        assert redis.Redis(port=port).get("mine") is None
    finally:
        impostor.terminate()
        impostor.wait()


def test_a_killed_owner_leaves_no_server_behind(tmp_path):
    script = ("import sys, time; from aligner.publish.embedded_redis import EmbeddedRedis; "
              f"s = EmbeddedRedis({str(tmp_path)!r}).start(); print(s.process.pid, flush=True); time.sleep(60)")
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    server_pid = int(owner.stdout.readline())
    owner.kill()  # kill -9: no cleanup code runs in the owner
    owner.wait()
    wait_for(lambda: not Path(f"/proc/{server_pid}").exists() or "Z" in Path(f"/proc/{server_pid}/stat").read_text().split()[2])
    assert (tmp_path / "dump.rdb").exists()  # SIGTERM from the parent-death signal: it saved first


def wait_for(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if condition():
                return
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)
