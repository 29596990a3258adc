#!/usr/bin/env python3
"""Hand this machine's pip configuration to an image build, without leaving it in the image.

Reads the host's pip settings (``pip config list``: index-url, extra-index-url, find-links,
trusted-host, which may name local folders such as ``file:///opt/pypi/simple``), serves those
local folders read-only over HTTP on 127.0.0.1 (a build with chroot isolation shares the host's
network), and writes a ``pip.conf`` that names them by their HTTP address and trusts the CA bundle
at ``--cert-in-build``. The build mounts that file and the host's CA bundle as build secrets
(``RUN --mount=type=secret``): they exist during one RUN step and are not written into any layer.

    pip-serve.py --out DIR [--pip PIP] [--cert-in-build /etc/pip-build-ca.crt]

writes DIR/pip.conf, DIR/port and DIR/host-cert (the CA bundle the host's pip trusts: its ``cert``
setting, else the system bundle), then serves until killed. Only the local folders the pip
configuration names are served (for an index ``.../simple``, its parent folder, which holds the
files its pages link to as ``../../files/...``).
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import shlex
import subprocess
import sys
import urllib.parse
from pathlib import Path

KEYS = ("index-url", "extra-index-url", "find-links", "trusted-host", "cert")
SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def host_pip_config(pip: list[str]) -> dict[str, str]:
    """The effective value of each of KEYS: an environment variable beats a config file."""
    out = subprocess.run([*pip, "config", "list"], check=True, capture_output=True, text=True).stdout
    found: dict[str, dict[str, str]] = {}
    for line in out.splitlines():
        name, sep, value = line.partition("=")
        if not sep or "." not in name:
            continue
        where, _, key = name.rpartition(".")
        if key in KEYS and where in (":env:", "global", "install"):
            found.setdefault(key, {})[where] = shlex.split(value)[0] if value.strip() else ""
    return {k: v.get(":env:", v.get("install", v.get("global", ""))) for k, v in found.items()}


def local_path(item: str) -> Path | None:
    """The folder a pip location names on this machine, or None for a remote one."""
    if item.startswith("file://"):
        return Path(urllib.parse.unquote(urllib.parse.urlparse(item).path))
    if "://" not in item and item.startswith("/"):
        return Path(item)
    return None


def build_conf(config: dict[str, str], base: str, cert: str | None) -> tuple[str, list[Path]]:
    """pip.conf text with local folders rewritten to ``base`` + path, and the folders to serve."""
    roots: list[Path] = []
    lines = ["[global]"]
    for key in KEYS[:-1]:
        items = config.get(key, "").split()
        moved = []
        for item in items:
            path = local_path(item)
            if path is None:
                moved.append(item)
                continue
            if not path.exists():
                continue
            roots.append(path.parent if key.endswith("index-url") else path)
            moved.append(base + urllib.parse.quote(str(path)) + ("/" if key == "find-links" else ""))
        if moved:
            lines.append(f"{key} = {' '.join(moved)}")
    if cert:
        lines.append(f"cert = {cert}")
    lines.append("disable-pip-version-check = true")
    lines.append("timeout = 180")
    return "\n".join(lines) + "\n", roots


class Handler(http.server.SimpleHTTPRequestHandler):
    roots: tuple[Path, ...] = ()

    def translate_path(self, path: str) -> str:
        real = Path(super().translate_path(path)).resolve()
        if any(real == r or r in real.parents for r in self.roots):
            return str(real)
        return "/nonexistent-" + os.urandom(4).hex()  # outside the served folders: 404

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--pip", default=f"{sys.executable} -m pip", help="the pip whose configuration to use")
    ap.add_argument("--cert-in-build", default="/etc/pip-build-ca.crt", help="where the build sees the CA bundle ('' for none)")
    args = ap.parse_args()

    config = host_pip_config(shlex.split(args.pip))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory="/"))
    port = server.server_address[1]
    host_cert = config.get("cert") or os.environ.get("SSL_CERT_FILE") or SYSTEM_BUNDLE
    if not Path(host_cert).is_file():
        host_cert = ""
    text, roots = build_conf(config, f"http://127.0.0.1:{port}", (host_cert and args.cert_in_build) or None)
    Handler.roots = tuple(r.resolve() for r in roots)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pip.conf").write_text(text)
    (args.out / "port").write_text(f"{port}\n")
    (args.out / "host-cert").write_text(f"{host_cert}\n" if host_cert else "")
    print(f"pip-serve: 127.0.0.1:{port} serves {', '.join(map(str, roots)) or 'nothing'}", file=sys.stderr, flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
