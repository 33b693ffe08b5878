import pytest

from aligner.config import ConfigError, env_names, load_config, masked


def test_precedence_file_env_flags(tmp_path):
    path = tmp_path / "dynalign.toml"
    path.write_text('[adapt]\nsteps = 3\n[meta]\nalgorithm = "reptile"\n[publish]\ntop_k = 5\n')
    cfg = load_config(path, env={"DYNALIGN_ADAPT_STEPS": "4"}, overrides={"publish.top_k": 7, "meta.inner_steps": None})
    assert cfg.adapt.steps == 4  # env beats file
    assert cfg.meta.algorithm == "reptile"  # file beats default
    assert cfg.publish.top_k == 7  # flag beats file
    assert cfg.meta.inner_steps == 3  # an unset flag changes nothing


def test_optional_values_and_types():
    cfg = load_config(env={"DYNALIGN_SNAPSHOTS_EVERY_EVENTS": "500", "DYNALIGN_SNAPSHOTS_WINDOW_SECONDS": "none"})
    assert cfg.snapshots.every_events == 500 and cfg.snapshots.window_seconds is None


@pytest.mark.parametrize("env, message", [
    ({"DYNALIGN_ADAPT_STEPS": "many"}, "expected int"),
    ({"DYNALIGN_META_ALGORITHM": "sgd"}, "meta.algorithm"),
    ({"DYNALIGN_SNAPSHOTS_WINDOW_SECONDS": "none"}, "set window_seconds, every_events or both"),
])
def test_bad_values_name_the_setting(env, message):
    with pytest.raises(ConfigError, match=message):
        load_config(env=env)


def test_unknown_keys_in_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[adapt]\nstepz = 3\n")
    with pytest.raises(ConfigError, match="unknown setting adapt.stepz"):
        load_config(path, env={})
    path.write_text("[nope]\nx = 1\n")
    with pytest.raises(ConfigError, match=r"unknown section \[nope\]"):
        load_config(path, env={})


def test_secrets_are_masked():
    cfg = load_config(env={"DYNALIGN_STREAM_KAFKA_SASL_PASSWORD": "hunter2",
                           "DYNALIGN_PUBLISH_REDIS_URL": "rediss://u:hunter2@host:6380/0"})
    shown = str(masked(cfg))
    assert "hunter2" not in shown and "***" in shown


def test_env_names_cover_every_setting():
    names = env_names()
    assert "DYNALIGN_PUBLISH_REDIS_URL" in names and "DYNALIGN_CONFIG" in names
    assert len(names) == len(set(names))
