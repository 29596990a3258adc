#!/usr/bin/env python3
"""Pin docker/constraints.txt to the versions installed in this environment (the project's venv,
where the test suite runs): every distribution the image's ``pip install`` line pulls in (dr and
``ray[default]``, ``fsspec``, ``s3fs``, and all they require), except torch and torchvision, which
the base image brings.

    .venv/bin/python docker/pin-constraints.py           # rewrite docker/constraints.txt
    .venv/bin/python docker/pin-constraints.py --check   # exit 1 if it differs from this venv
"""

from __future__ import annotations

import argparse
import configparser
import importlib.metadata as md
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
IMAGE_EXTRAS = ["ray[default]", "fsspec", "s3fs"]  # the Dockerfile's pip line besides the wheel
FROM_BASE = {"torch", "torchvision"}
OUT = REPO / "docker" / "constraints.txt"
HEADER = """\
# Every dependency of the image's `pip install` (Dockerfile) at the version the test suite ran with,
# torch and torchvision excepted (the base image's). Written by docker/pin-constraints.py from the
# project's venv; `make image-test` checks the image installs exactly these.
"""


def roots() -> list[tuple[str, set[str]]]:
    """What the image's pip line asks for: setup.cfg's install_requires (read from the source, not from
    installed metadata, which may predate an edit) and IMAGE_EXTRAS."""
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    lines = [x.strip() for x in cfg["options"]["install_requires"].splitlines() if x.strip()]
    out = []
    for line in lines + IMAGE_EXTRAS:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate():
            out.append((req.name, set(req.extras)))
    return out


def closure() -> dict[str, str]:
    """Distribution name -> installed version, over the requirements of roots() (markers and extras applied)."""
    extras_seen: dict[str, set[str]] = {}
    stack = roots()
    while stack:
        name, extras = stack.pop()
        key = canonicalize_name(name)
        if key in FROM_BASE:
            continue
        if key in extras_seen and extras <= extras_seen[key]:
            continue
        extras_seen[key] = extras_seen.get(key, set()) | extras
        for line in md.distribution(name).requires or []:
            req = Requirement(line)
            envs = [{"extra": e} for e in sorted(extras)] or [{"extra": ""}]
            if req.marker is None or any(req.marker.evaluate(env) for env in envs):
                stack.append((req.name, set(req.extras)))
    pins = {}
    for key in extras_seen:
        dist = md.distribution(key)
        pins[dist.metadata["Name"]] = dist.version
    return pins


def render(pins: dict[str, str]) -> str:
    return HEADER + "".join(f"{name}=={version}\n" for name, version in sorted(pins.items(), key=lambda kv: canonicalize_name(kv[0])))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="compare, don't write")
    args = ap.parse_args()
    text = render(closure())
    if args.check:
        if OUT.read_text() != text:
            print(f"{OUT} differs from this environment's versions: run {Path(__file__).name}", file=sys.stderr)
            return 1
        print(f"{OUT.name}: equal to this environment ({text.count('==')} pins)")
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT} ({text.count('==')} pins)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
