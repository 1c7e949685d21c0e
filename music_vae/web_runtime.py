"""onnxruntime-web, with which an exported run's page decodes songs in the browser: the three
files of its npm package that the page loads, fetched once at a pinned version, checked
against the hash the npm registry publishes for it, and kept in ``vendor/`` (not in git).

``export`` fetches them where they are missing; ``python -m music_vae.web_runtime`` fetches
them ahead of time (before going offline, say).
"""

import base64
import hashlib
import http.client
import io
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from music_vae.files import UMASK, UsageError

VERSION = "1.31.1"
TARBALL = f"https://registry.npmjs.org/onnxruntime-web/-/onnxruntime-web-{VERSION}.tgz"
INTEGRITY = "sha512-5GeH+bWQ+HxM10z7erGlsWqryrwMbSvm/1tkIsKTT48g0fI19VXVVC435t4t7VsPdSQeS7NmuZPXrQ73k82URw=="
# The WebAssembly build without WebGPU or WebGL: the page decodes on the
# CPU, where a 16-measure song takes about 30 ms (bench/export_speed.py). ort.wasm.min.js is a
# classic script, ort-wasm-simd-threaded.mjs the module it imports, the .wasm the runtime.
FILES = ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
LICENCE = "package.json"  # the package's version and licence (MIT); it ships no licence file
FOLDER = Path(__file__).resolve().parent.parent / "vendor" / f"onnxruntime-web-{VERSION}"
INSTALL_COMMAND = "python -m music_vae.web_runtime"


def runtime_files(folder=FOLDER, fetch=True):
    """The paths of FILES and LICENCE in ``folder``, fetched first where one is missing and ``fetch``.

    Raises
    ------
    UsageError
        A file is missing and cannot be fetched (offline, say), or ``fetch`` is False.
    """
    paths = [Path(folder) / name for name in (*FILES, LICENCE)]
    if not all(path.is_file() for path in paths):
        if not fetch:
            raise UsageError(f"onnxruntime-web {VERSION} is not in {folder}: fetch it with {INSTALL_COMMAND}")
        install(folder)
    return paths


def install(folder=FOLDER):
    """Fetch onnxruntime-web VERSION from the npm registry, check its hash and put FILES and
    LICENCE into ``folder``, in place of what is there; what an earlier stop left is removed."""
    print(f"Fetching onnxruntime-web {VERSION} from the npm registry (35 MB, once) into {folder}", flush=True)
    try:
        with urllib.request.urlopen(TARBALL, timeout=60) as answer:
            tarball = answer.read()
    except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
        reason = getattr(error, "reason", None) or error
        raise UsageError(
            f"cannot fetch onnxruntime-web {VERSION} ({reason}); on a machine that is online run "
            f"{INSTALL_COMMAND}, or put {', '.join(FILES)} from {TARBALL} (its dist/) into {folder}"
        ) from None
    algorithm, expected = INTEGRITY.split("-", 1)
    if base64.b64encode(hashlib.new(algorithm, tarball).digest()).decode() != expected:
        raise UsageError(f"{TARBALL} does not match its published hash; not installed")
    folder = Path(folder)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        for stale in folder.parent.glob(f".{folder.name}.part-*"):
            shutil.rmtree(stale, ignore_errors=True)
        part = Path(tempfile.mkdtemp(prefix=f".{folder.name}.part-", dir=folder.parent))
    except OSError as error:
        raise UsageError(f"cannot write onnxruntime-web into {folder.parent}: {error.strerror or error}") from None
    part.chmod(0o777 & ~UMASK)  # mkdtemp's folder is private; a web server may run as another user
    try:
        with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
            for name in FILES:
                (part / name).write_bytes(archive.extractfile(f"package/dist/{name}").read())
            (part / LICENCE).write_bytes(archive.extractfile(f"package/{LICENCE}").read())
        if folder.exists():
            shutil.rmtree(folder)
        part.rename(folder)
    finally:
        shutil.rmtree(part, ignore_errors=True)
    return folder


if __name__ == "__main__":
    try:
        print(f"onnxruntime-web {VERSION} is in {install()}")
    except UsageError as error:
        sys.exit(f"music_vae.web_runtime: error: {error}")
