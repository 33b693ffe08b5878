"""The settings a state dir was started with (``STATE/run.json``): a restart needs none of the first run's flags.

Recorded: the snapshot policy and the network pairs, which give the state dir's snapshots and history their
meaning (a restart with another window would cut the rest of the stream differently from the part already
stored, and nothing would say so), the Redis URL and namespace it publishes to (so ``dynalign query --state``
finds them), and a fingerprint of the event source. A resume takes every recorded value that no flag,
environment variable or file sets. One that is set to something else is refused for the policy and the pairs,
with the command that starts afresh; for Redis the new one is followed, with a warning (the first version a
restarted worker publishes lists every node, so a new Redis misses nothing). A file source whose first bytes
differ from the recorded one's is another file: it is read from its first line, not from the old one's offset.
Savepoints carry the same record (:mod:`aligner.service.savepoint`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Collection

from aligner.config import ENV_PREFIX, Config, mask_url, parse_pairs, validate
from snapshots.files import write_durably

log = logging.getLogger("dynalign.service")

RUN_FILE = "run.json"
FORMAT = "dynalign-run/1"
# Settings a resume must keep: they decide how the stream is cut into snapshots and what is aligned.
FIXED = ("snapshots.window_seconds", "snapshots.every_events", "snapshots.lateness_seconds",
         "snapshots.edge_ttl_seconds", "snapshots.dedup_capacity", "service.pairs")
# Settings a resume follows when they are given anew: where alignments go.
FOLLOWED = ("publish.redis_url", "publish.namespace")
FLAGS = {"snapshots.window_seconds": "--window", "snapshots.every_events": "--every",
         "snapshots.lateness_seconds": "--lateness", "service.pairs": "--pairs", "publish.redis_url": "--redis"}
HEAD_BYTES = 4096  # a file source is recognised by the sha256 of this many of its first bytes


class SettingsChanged(ValueError):
    """A resume asked for a snapshot policy or pairs other than the state dir's; the message says how to go on."""


def started(state_dir: Path) -> bool:
    """Whether a run of ``state_dir`` got as far as a checkpoint (only then do its settings bind a resume).

    The names are :class:`snapshots.store.SnapshotStore`'s; the store itself is not opened, since opening it
    creates the directory, and a refused resume or a savepoint that fails validation must leave nothing behind.
    """
    return (state_dir / "checkpoint").exists() or (state_dir / "checkpoint.prev").exists()


def read_run_settings(state_dir: Path) -> dict[str, Any] | None:
    """The state dir's record, or ``None`` when it has none (a new dir, or one from before records existed)."""
    path = state_dir / RUN_FILE
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        record = None
    if not isinstance(record, dict) or record.get("format") != FORMAT or not isinstance(record.get("settings"), dict):
        raise ValueError(f"{path} is not a dynalign run record; delete it to resume with this command's settings")
    return record


def recorded_redis_url(state_dir: Path) -> str | None:
    """The external Redis a state dir's runs publish to (``None``: its embedded server, or no record)."""
    recorded = read_run_settings(state_dir)
    return (recorded["settings"].get("publish.redis_url") or None) if recorded else None


def write_run_settings(state_dir: Path, record: dict[str, Any]) -> None:
    """Atomically; the file is private to its owner (mkstemp's mode): the Redis URL may hold a password."""
    write_durably(state_dir / RUN_FILE, (json.dumps(record, indent=1) + "\n").encode())


def run_record(cfg: Config, source_url: str) -> dict[str, Any]:
    return {"format": FORMAT, "settings": {key: _get(cfg, key) for key in FIXED + FOLLOWED},
            "source": source_identity(source_url)}


def source_identity(source_url: str) -> dict[str, Any]:
    """The source URL, and for a file its absolute path and the sha256 of its first bytes."""
    out: dict[str, Any] = {"url": source_url}
    path = _file_of(source_url)
    if path is not None and path.is_file():
        with path.open("rb") as f:
            head = f.read(HEAD_BYTES)
        out.update(path=str(path.resolve()), head_bytes=len(head), head_sha256=hashlib.sha256(head).hexdigest())
    return out


def is_other_file(recorded: dict[str, Any] | None, source_url: str) -> bool:
    """Whether ``source_url`` is a file other than the recorded source file (whose offset would be meaningless)."""
    path = _file_of(source_url)
    if not recorded or "head_sha256" not in recorded or path is None or not path.is_file():
        return False
    with path.open("rb") as f:
        head = f.read(int(recorded["head_bytes"]))
    return len(head) < int(recorded["head_bytes"]) or hashlib.sha256(head).hexdigest() != recorded["head_sha256"]


def resume_config(cfg: Config, recorded: dict[str, Any], explicit: Collection[str] | None, state_dir: Path,
                  source_url: str) -> Config:
    """``cfg`` with the recorded settings in place of those nobody set. ``explicit``: the ``"section.key"``
    settings the command line, environment or file set (``None``: all of them count as set)."""
    out = copy.deepcopy(cfg)
    changed, taken = [], []
    for key in FIXED + FOLLOWED:
        if key not in recorded["settings"]:
            continue
        was, now = recorded["settings"][key], _get(cfg, key)
        if _same(key, was, now):
            continue
        if explicit is not None and key not in explicit:
            _put(out, key, was)
            taken.append(_setting(key, was))
        elif key in FIXED:
            changed.append((key, was, now))
        else:
            log.warning(f"state dir {state_dir} was started with {_setting(key, was)}; now publishing with "
                        f"{_setting(key, now)}")
    if changed:
        envs = [_env(k, now) for k, _, now in changed if k not in FLAGS or now is None]
        flags = [f"{FLAGS[k]} {_shown(k, now)}" for k, _, now in changed if k in FLAGS and now is not None]
        afresh = " ".join([*envs, "dynalign run --state NEW_DIR --source", source_url, *flags])
        raise SettingsChanged(
            f"state dir {state_dir} was started with {', '.join(_setting(k, was) for k, was, _ in changed)}; "
            f"leave {' and '.join(_name(k) for k, _, _ in changed)} out to resume with that, or start afresh: "
            f"{afresh}")
    if taken:
        log.info(f"resuming with the settings state dir {state_dir} was started with: {', '.join(taken)}")
    validate(out)
    return out


def _file_of(source_url: str) -> Path | None:
    if source_url == "-" or source_url.startswith("kafka://"):
        return None
    return Path(source_url.removeprefix("file://"))


def _get(cfg: Config, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def _put(cfg: Config, key: str, value: Any) -> None:
    section, name = key.split(".")
    setattr(getattr(cfg, section), name, value)


def _same(key: str, a: Any, b: Any) -> bool:
    if key == "service.pairs":
        try:
            return _pair_set(a) == _pair_set(b)
        except ValueError:
            return False
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


def _pair_set(spec: str) -> frozenset | None:
    pairs = parse_pairs(spec)
    return None if pairs is None else frozenset(pairs)


def _shown(key: str, value: Any) -> str:
    if value is None:
        return "none"
    if key == "publish.redis_url":
        return mask_url(value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _name(key: str) -> str:
    return FLAGS.get(key, f"{ENV_PREFIX}{key.replace('.', '_').upper()}")


def _setting(key: str, value: Any) -> str:
    if key == "publish.redis_url" and value is None:
        return "its embedded Redis"
    return f"{_name(key)} {_shown(key, value)}" if key in FLAGS else f"{_name(key)}={_shown(key, value)}"


def _env(key: str, value: Any) -> str:
    return f"{_name(key)}={_shown(key, value)}"
