"""The safetensors container, read and written at the byte level.

The writer streams: the header (names, dtypes, shapes, offsets) is known from the checkpoint layout before any
tensor exists, so each tensor is written as soon as it is produced and never held with the rest of its shard.
The header reader checks offsets against the file's real size, so a truncated or corrupt shard is reported
with its file and tensor name before anything is mapped. Tensor data itself is read by the `safetensors`
package (memory-mapped, any device).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .quant import E8M0_DTYPE

__all__ = [
    "SAFETENSORS_DTYPES",
    "HeaderEntry",
    "SafetensorsFormatError",
    "read_header",
    "write_streaming",
]

SAFETENSORS_DTYPES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
}
if torch.uint8 != E8M0_DTYPE:
    SAFETENSORS_DTYPES[E8M0_DTYPE] = "F8_E8M0"
_ST_TO_TORCH = {v: k for k, v in SAFETENSORS_DTYPES.items()}
_MAX_HEADER = 100 << 20


class SafetensorsFormatError(ValueError):
    """A file that is not a complete, well-formed safetensors file."""


@dataclass(frozen=True)
class HeaderEntry:
    dtype: str  # safetensors dtype string, e.g. "F8_E4M3"
    shape: tuple[int, ...]
    begin: int  # byte offsets inside the data section
    end: int


def _nbytes(dtype: torch.dtype, shape: Sequence[int]) -> int:
    return math.prod(shape) * torch.empty((), dtype=dtype).element_size()


def _header(entries: Sequence[tuple[str, torch.dtype, tuple[int, ...]]]) -> bytes:
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dtype, shape in entries:
        n = _nbytes(dtype, shape)
        header[name] = {
            "dtype": SAFETENSORS_DTYPES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + n],
        }
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    return raw + b" " * (-len(raw) % 8)  # keep the data section 8-byte aligned


def write_streaming(
    path: Path,
    entries: Sequence[tuple[str, torch.dtype, tuple[int, ...]]],
    tensors: Iterator[tuple[str, torch.Tensor]] | Iterable[tuple[str, torch.Tensor]],
) -> None:
    """Write `entries` (name, dtype, shape) taking one tensor at a time from `tensors`, in the same order.

    The file appears under its name only when complete (written as `<name>.partial`, then renamed).
    """
    it = iter(tensors)
    header = _header(entries)
    tmp = path.with_name(path.name + ".partial")
    with tmp.open("wb") as f:
        f.write(len(header).to_bytes(8, "little"))
        f.write(header)
        for name, dtype, shape in entries:
            got_name, t = next(it)
            if got_name != name or tuple(t.shape) != tuple(shape) or t.dtype != dtype:
                raise SafetensorsFormatError(
                    f"writing {path.name}: expected {name} {tuple(shape)} {dtype}, "
                    f"got {got_name} {tuple(t.shape)} {t.dtype}"
                )
            data = t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy()
            f.write(data.tobytes() if data.size < (1 << 20) else data.data)
    tmp.replace(path)


def read_header(file: Path) -> dict[str, HeaderEntry]:
    """Parse a safetensors header and check it against the file's real size (truncation shows here)."""
    try:
        size = file.stat().st_size
        with file.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise SafetensorsFormatError(f"{file}: truncated ({size} bytes, no safetensors header)")
            n = int.from_bytes(head, "little")
            if n > _MAX_HEADER or 8 + n > size:
                raise SafetensorsFormatError(
                    f"{file}: truncated or corrupt (header length {n}, file {size} bytes)"
                )
            raw = json.loads(f.read(n))
    except OSError as e:
        raise SafetensorsFormatError(f"{file}: cannot read: {e}") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SafetensorsFormatError(f"{file}: corrupt safetensors header: {e}") from e
    if not isinstance(raw, dict):
        raise SafetensorsFormatError(f"{file}: corrupt safetensors header (not a JSON object)")
    entries: dict[str, HeaderEntry] = {}
    data_size = size - 8 - n
    for name, meta in raw.items():
        if name == "__metadata__":
            continue
        try:
            shape = tuple(int(x) for x in meta["shape"])
            ent = HeaderEntry(str(meta["dtype"]), shape, *map(int, meta["data_offsets"]))
        except (KeyError, TypeError, ValueError) as err:
            raise SafetensorsFormatError(f"{file}: corrupt header entry for {name!r}: {err}") from None
        dt = _ST_TO_TORCH.get(ent.dtype)
        if dt is None:
            raise SafetensorsFormatError(f"{file}: tensor {name!r} has unsupported dtype {ent.dtype}")
        want = _nbytes(dt, ent.shape)
        if ent.end - ent.begin != want or ent.begin < 0:
            raise SafetensorsFormatError(
                f"{file}: tensor {name!r} offsets {ent.begin}..{ent.end} do not hold {want} bytes"
            )
        if ent.end > data_size:
            raise SafetensorsFormatError(
                f"{file}: truncated: tensor {name!r} ends at byte {ent.end} of the data section, "
                f"which has only {data_size} bytes"
            )
        entries[name] = ent
    return entries
