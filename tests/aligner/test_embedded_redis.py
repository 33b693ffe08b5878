import redis

from aligner.embedded_redis import EmbeddedRedis


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
