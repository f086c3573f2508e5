"""`verify_checkpoint`: is a checkpoint folder what it claims to be? (`agentkit verify` runs it.)

Structure, names, shapes and dtypes (`validate_checkpoint`), then the SHA-256 manifest
(`checkpoint_manifest`), then every tensor's values: NaN / Inf in float tensors, NaN encodings in FP8
weights, E8M0 scales that are NaN or outside a range any real weight has, expert ids outside the
model's experts. It reads every byte once and reports; it never raises for what it finds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checkpoint_layout import CheckpointError, tensor_specs
from .checkpoint_manifest import MANIFEST_NAME, model_files, read_manifest, sha256
from .checkpoint_read import validate_checkpoint
from .quant import E8M0_DTYPE, FP8_DTYPE

__all__ = ["VerifyReport", "verify_checkpoint"]

#: E8M0 scales outside 2^-100 .. 2^32 mean weights no trained or random model has (the format's own
#: range is 2^-127 .. 2^127; byte 255 is NaN).
_SCALE_EXP_RANGE = (-100, 32)


@dataclass
class VerifyReport:
    """What `verify_checkpoint` checked (`lines`) and what it found wrong (`problems`)."""

    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_checkpoint(path: str | Path) -> VerifyReport:
    """Every check there is, reading every byte once; never raises for what it finds."""
    root = Path(path)
    report = VerifyReport()
    try:
        config, weight_map = validate_checkpoint(root)
    except CheckpointError as e:
        report.problems.append(f"structure: {e}")
        return report
    specs = tensor_specs(config)
    report.lines.append(
        f"structure: config, index and {len(set(weight_map.values()))} shard(s); "
        f"{len(specs)} tensors with the names, shapes and dtypes of the layout"
    )
    _verify_manifest(root, report)
    _verify_values(root, weight_map, config.n_routed_experts, report)
    return report


def _verify_manifest(root: Path, report: VerifyReport) -> None:
    try:
        manifest = read_manifest(root)
    except CheckpointError as e:
        report.problems.append(f"manifest: {e}")
        return
    if manifest is None:
        report.lines.append(f"manifest: none ({MANIFEST_NAME} absent), so file contents are not checked")
        return
    bad = []
    for name, want in sorted(manifest.items()):
        file = root / name
        if not file.is_file():
            bad.append(f"{name} is listed in {MANIFEST_NAME} but missing")
        elif sha256(file) != want:
            bad.append(
                f"{name}: SHA-256 differs from {MANIFEST_NAME} (the file changed after it was written)"
            )
    unlisted = [n for n in model_files(root) if n not in manifest]
    if unlisted:
        bad.append(f"{MANIFEST_NAME} does not list {', '.join(unlisted)}")
    report.problems += [f"manifest: {b}" for b in bad]
    if not bad:
        report.lines.append(f"manifest: {len(manifest)} file(s) match {MANIFEST_NAME}")


def _verify_values(root: Path, weight_map: dict[str, str], n_experts: int, report: VerifyReport) -> None:
    from safetensors import SafetensorError, safe_open

    by_file: dict[str, list[str]] = {}
    for name, fname in weight_map.items():
        by_file.setdefault(fname, []).append(name)
    counts = {"float": 0, "fp8": 0, "scale": 0, "packed": 0, "int": 0}
    lo, hi = _SCALE_EXP_RANGE
    for fname, names in sorted(by_file.items()):
        try:
            with safe_open(str(root / fname), framework="pt", device="cpu") as f:
                for name in sorted(names):
                    problem = _check_tensor(name, f.get_tensor(name), n_experts, counts)
                    if problem:
                        report.problems.append(f"values: {fname}: {problem}")
        except (SafetensorError, OSError, RuntimeError) as e:
            report.problems.append(f"values: {fname}: cannot read: {e}")
    report.lines.append(
        f"values: {counts['float']} float tensors finite, {counts['fp8']} FP8 weights without NaN codes, "
        f"{counts['scale']} E8M0 scale tensors within 2^{lo}..2^{hi}, {counts['packed']} packed FP4, "
        f"{counts['int']} expert-id tables in range"
    )


def _check_tensor(name: str, t: torch.Tensor, n_experts: int, counts: dict[str, int]) -> str | None:
    """What is wrong with one tensor's values, or None."""
    if t.dtype == E8M0_DTYPE:
        counts["scale"] += 1
        exp = t.view(torch.uint8).to(torch.int32) - 127
        if bool((exp == 128).any()):
            return f"{name}: {int((exp == 128).sum())} NaN scale(s) (E8M0 byte 255)"
        lo, hi = _SCALE_EXP_RANGE
        out = (exp < lo) | (exp > hi)
        if bool(out.any()):
            span = f"min 2^{int(exp.min())}, max 2^{int(exp.max())}"
            return f"{name}: {int(out.sum())} scale(s) outside 2^{lo}..2^{hi} ({span})"
        return None
    if t.dtype == FP8_DTYPE:
        counts["fp8"] += 1
        nan = (t.view(torch.uint8) & 0x7F) == 0x7F  # e4m3fn's only NaN encodings
        return f"{name}: {int(nan.sum())} NaN value(s) in FP8 weights" if bool(nan.any()) else None
    if t.dtype.is_floating_point:
        counts["float"] += 1
        bad = ~torch.isfinite(t.float())
        return f"{name}: {int(bad.sum())} NaN or infinite value(s)" if bool(bad.any()) else None
    if t.dtype == torch.int8:
        counts["packed"] += 1  # packed FP4 e2m1: every byte is two valid values
        return None
    counts["int"] += 1
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= n_experts):
        return f"{name}: expert ids outside 0..{n_experts - 1} (min {int(t.min())}, max {int(t.max())})"
    return None
