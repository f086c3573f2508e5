"""The SHA-256 manifest of a checkpoint folder: `SHA256SUMS`, written by the writers, checked by the loader.

A checkpoint whose data bytes were flipped (a bad download, a disk error, a hand edit) passes every
structural check, loads, and generates garbage. The manifest, in coreutils' format (so
`sha256sum -c SHA256SUMS` checks it too), lists the files that make the model (config, index, shards,
tokenizer); `save_checkpoint`, `save_random_checkpoint` and the tiny model's export write it, and
`load_checkpoint` checks each file against it as it reads it (`check_files`). The thorough pass over
every value is `checkpoint_verify`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from pathlib import Path

from .checkpoint_layout import CONFIG_NAME, INDEX_NAME, CheckpointError

__all__ = [
    "AUTO_VERIFY_BYTES",
    "MANIFEST_NAME",
    "check_files",
    "model_files",
    "read_manifest",
    "sha256",
    "write_manifest",
]

MANIFEST_NAME = "SHA256SUMS"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
#: A checkpoint at most this large is hashed whenever it is loaded; larger ones on request.
AUTO_VERIFY_BYTES = 2 << 30
_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_files(root: Path) -> list[str]:
    """The files that make the model, as present: config, index, every shard it names, tokenizer."""
    import json

    names = [CONFIG_NAME]
    index = root / INDEX_NAME
    if index.is_file():
        names.append(INDEX_NAME)
        names += sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    else:
        names += sorted(p.name for p in root.glob("*.safetensors"))
    names += [n for n in TOKENIZER_FILES if (root / n).is_file()]
    return [n for n in names if (root / n).is_file()]


def write_manifest(path: str | Path, files: Iterable[str] | None = None) -> Path:
    """Write `SHA256SUMS` for `files` (default: `model_files`) in the folder; returns its path."""
    root = Path(path)
    names = sorted(files if files is not None else model_files(root))
    lines = [f"{sha256(root / n)}  {n}\n" for n in names]
    out = root / MANIFEST_NAME
    out.write_text("".join(lines), encoding="utf-8")
    return out


def read_manifest(path: str | Path) -> dict[str, str] | None:
    """file name -> SHA-256 from the folder's manifest; None when it has none."""
    file = Path(path) / MANIFEST_NAME
    if not file.is_file():
        return None
    out: dict[str, str] = {}
    for n, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        m = _LINE.match(line)
        if m is None or "/" in m.group(2) or m.group(2).startswith("."):
            raise CheckpointError(f"{file}:{n}: not a SHA256SUMS line: {line[:80]!r}")
        out[m.group(2)] = m.group(1)
    return out


def check_files(path: str | Path, names: Iterable[str], manifest: dict[str, str] | None = None) -> None:
    """Raise CheckpointError when a listed file's SHA-256 differs from the manifest's (files the
    manifest does not list, or a folder without one, pass: there is nothing to check them against)."""
    root = Path(path)
    manifest = read_manifest(root) if manifest is None else manifest
    if not manifest:
        return
    for name in names:
        want = manifest.get(name)
        if want is not None and sha256(root / name) != want:
            raise CheckpointError(
                f"{root / name}: SHA-256 differs from {MANIFEST_NAME}; the file changed after the checkpoint "
                f"was written (a bad download or disk?). Fetch it again; `agentkit verify {root}` checks all"
            )
