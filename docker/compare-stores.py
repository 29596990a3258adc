#!/usr/bin/env python3
"""Compare two dr stores byte for byte: every file (chunks, array metadata) must be identical, and
so must the root header, except the fields that say when and how a build ran (created_at,
completed_at, build, and their seal entries).

    compare-stores.py A.zarr B.zarr      # exit 0 if equal, 1 with the differences listed
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

RUN_FIELDS = {"created_at", "completed_at", "build"}


def files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def header(root: Path) -> dict:
    attrs = json.loads((root / "zarr.json").read_text())["attributes"]
    attrs = {k: v for k, v in attrs.items() if k not in RUN_FIELDS}
    seal = attrs.get("seal", {})
    if isinstance(seal.get("fields"), dict):
        seal["fields"] = {k: v for k, v in seal["fields"].items() if k not in RUN_FIELDS}
    return attrs


def main() -> int:
    a, b = Path(sys.argv[1]), Path(sys.argv[2])
    fa, fb = files(a), files(b)
    diffs = [f"only in {a}: {k}" for k in sorted(fa.keys() - fb.keys())]
    diffs += [f"only in {b}: {k}" for k in sorted(fb.keys() - fa.keys())]
    diffs += [f"differs: {k}" for k in sorted(fa.keys() & fb.keys()) if k != "zarr.json" and fa[k] != fb[k]]
    ha, hb = header(a), header(b)
    diffs += [f"header field differs: {k}" for k in sorted(ha.keys() | hb.keys()) if ha.get(k) != hb.get(k)]
    n = len(fa) - 1
    if diffs:
        print(f"stores differ ({len(diffs)}):\n  " + "\n  ".join(diffs[:40]))
        return 1
    digest = hashlib.sha256("".join(f"{k} {v}\n" for k, v in fa.items() if k != "zarr.json").encode()).hexdigest()
    print(f"stores equal: {n} files byte for byte (sha256 of their digests {digest[:16]}), header equal but {sorted(RUN_FIELDS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
