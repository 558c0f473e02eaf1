"""Installing a runtime from npm: shared by the runtimes/ modules."""
import os
import pathlib
import shutil
import subprocess


def npm_install(name, prefix, spec, rel_binary):
    """`npm install --prefix PREFIX SPEC`, skipped when PREFIX/REL_BINARY is
    already an executable; returns that binary's path."""
    prefix = pathlib.Path(prefix)
    binary = prefix / rel_binary
    if binary.is_file() and os.access(binary, os.X_OK):
        return binary
    npm = shutil.which("npm")
    if not npm:
        raise RuntimeError(f"{name}: npm not found (apt-get install npm, or node 20+); "
                           f"cannot install {spec}")
    prefix.mkdir(parents=True, exist_ok=True)
    p = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--prefix", str(prefix), spec],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        raise RuntimeError(f"{name}: `npm install --prefix {prefix} {spec}` did not produce "
                           f"{binary} (rc={p.returncode}):\n{p.stdout[-2000:]}")
    return binary
