"""Checks run inside the image by docker/test-image.sh (as the image's user, with this folder mounted).

    python image-check.py CONSTRAINTS TORCH_PINS [HOST_CA_DIR]

Prints one line per check and exits 1 if any fails: the user is not root; dr, ray, zarr (and torch)
import; every pin of CONSTRAINTS (docker/constraints.txt) and TORCH_PINS is the installed version;
no pip configuration is left in the image; none of the build host's extra CA certificates (the PEM
files in HOST_CA_DIR) is in any certificate file of the image.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import os
import subprocess
import sys
from pathlib import Path

failures: list[str] = []


def check(ok: bool, what: str) -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {what}", flush=True)
    if not ok:
        failures.append(what)


def pins(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            out[name.strip()] = version.strip()
    return out


def pem_bodies(path: Path) -> list[str]:
    """The base64 body of each certificate in a PEM file, on one line."""
    bodies, cur = [], None
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("-----BEGIN CERTIFICATE"):
            cur = []
        elif line.startswith("-----END CERTIFICATE") and cur is not None:
            bodies.append("".join(cur))
            cur = None
        elif cur is not None:
            cur.append(line.strip())
    return bodies


def cert_files() -> list[Path]:
    roots = ["/etc", "/usr/local/share", "/usr/share/ca-certificates", "/usr/lib/ssl", sys.prefix]
    found = []
    for root in roots:
        for dirpath, _, names in os.walk(root):
            for name in names:
                if name.endswith((".pem", ".crt", ".cer")) or name in ("ca-bundle", "cert.pem"):
                    p = Path(dirpath, name)
                    if p.is_file():
                        found.append(p)
    return found


def main() -> int:
    constraints, torch_pins = Path(sys.argv[1]), sys.argv[2]
    host_ca = Path(sys.argv[3]) if len(sys.argv) > 3 else None

    check(os.getuid() != 0, f"runs as uid {os.getuid()} ({os.environ.get('USER') or Path.home().name}), not root")
    print(f"     python {sys.version.split()[0]} at {sys.executable}")
    for mod in ("dr", "ray", "zarr", "torch", "torchvision"):
        try:
            m = importlib.import_module(mod)
            check(True, f"import {mod} {getattr(m, '__version__', '')}")
        except Exception as e:  # noqa: BLE001 - the check reports any import failure
            check(False, f"import {mod}: {e!r}")

    want = pins(constraints.read_text()) | pins(torch_pins.replace(" ", "\n"))
    wrong = []
    for name, version in sorted(want.items(), key=lambda kv: kv[0].lower()):
        try:
            have = md.version(name)
        except md.PackageNotFoundError:
            have = "missing"
        if have.split("+")[0] != version:
            wrong.append(f"{name}=={version} (image: {have})")
    check(
        not wrong,
        f"{len(want)} pinned versions (constraints.txt + {torch_pins}) equal the image's" + (": " + "; ".join(wrong) if wrong else ""),
    )
    torch_v = md.version("torch")
    print(f"     torch {torch_v}, dr-reinforce {md.version('dr-reinforce')}, ray {md.version('ray')}")

    # pip's settings from files (the image's own ENV, such as PIP_NO_CACHE_DIR, are :env: lines)
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    conf = "; ".join(line for line in listed.splitlines() if line.strip() and not line.startswith(":env:"))
    leftovers = [p for p in ("/etc/pip.conf", "/etc/xdg/pip/pip.conf", "/etc/pip-build-ca.crt", "/root/.config/pip") if os.path.lexists(p)]
    check(not conf and not leftovers, "no pip configuration file in the image" + (f": {conf!r} {leftovers}" if conf or leftovers else ""))

    if host_ca is not None:
        extra = [b for f in sorted(host_ca.glob("*")) if f.is_file() for b in pem_bodies(f)]
        files = cert_files()
        hits = [str(f) for f in files if any(b[64:192] in f.read_text(errors="replace").replace("\n", "") for b in extra)]
        check(
            bool(extra) and not hits,
            f"none of the build host's {len(extra)} extra CA certificates in the image's {len(files)} certificate files"
            + (f": {hits}" if hits else ""),
        )
    print("image-check:", "FAILED " + "; ".join(failures) if failures else "all passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
