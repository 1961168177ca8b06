"""requirements.lock pins what requirements*.txt ask for: every package they name is in the lock, at the version
they pin when they pin one (a stale lock means `bash scripts/lock.sh` was not run after changing them)."""
from __future__ import annotations

import re

from src.helpers import PROJECT_ROOT

NAME = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*(==\s*([^\s;#]+))?")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements(path) -> dict[str, str | None]:
    """``{name: pinned version or None}`` of a requirements file, following ``-r`` includes."""
    found: dict[str, str | None] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-r"):
            found.update(_requirements(path.parent / line[2:].strip()))
            continue
        match = NAME.match(line)
        assert match, f"{path.name}: cannot read {line!r}"
        found[_normalise(match.group(1))] = match.group(4)
    return found


def _lock() -> dict[str, str]:
    pins = {}
    for line in (PROJECT_ROOT / "requirements.lock").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].split(";", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"requirements.lock: {line!r} is not NAME==VERSION"
            pins[_normalise(name)] = version.strip()
    return pins


def test_the_lock_pins_every_requirement_at_its_pinned_version():
    lock = _lock()
    assert lock.get("torch") == "2.14.1" and lock.get("torchvision") == "0.29.2"
    wanted = _requirements(PROJECT_ROOT / "requirements-dev.txt")
    missing = sorted(name for name in wanted if name not in lock)
    differ = sorted(f"{name}=={pin} (lock: {lock[name]})" for name, pin in wanted.items()
                    if pin and name in lock and lock[name] != pin)
    assert not missing and not differ, (f"requirements.lock is stale (run `bash scripts/lock.sh`): missing "
                                        f"{missing}, other versions {differ}")
