"""What data validation found: the thresholds, one `CheckResult` per check, the `ValidationReport` (JSON, markdown).

The checks themselves run in :mod:`scene.data.validation`; this module only holds and formats their outcome, so it
imports neither pandas nor great_expectations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

MAX_LISTED = 20  # offending items listed per check; the rest are counted


@dataclass(frozen=True)
class ValidationThresholds:
    """Limits the data must meet before anything is trained on it."""

    min_per_class: int = 2  # images per class overall; each class also needs ≥ 1 in train and ≥ 1 in val
    max_class_ratio: float = 10.0  # largest / smallest class image count
    min_side: int = 32  # smallest accepted width and height, pixels
    max_side: int = 10000  # largest accepted width and height, pixels
    # PIL modes the loader can convert to RGB
    allowed_modes: tuple[str, ...] = ("RGB", "L", "P", "CMYK", "RGBA", "LA", "I;16", "I;16B", "I;16L", "I",
                                      "PA", "RGBX", "YCbCr", "1")
    max_rejected_fraction: float = 0.2  # rejected files / all files found
    # same content under two labels: listed always, blocking above this share of images (the real Intel
    # training set has 5 such pairs in 8,741 photos: label noise to report, not a reason to stop)
    max_label_conflict_fraction: float = 0.01

    def __post_init__(self) -> None:
        if self.min_per_class < 2:
            raise ValueError(f"min_per_class={self.min_per_class!r}: pass at least 2 (a train, a val image)")
        if not self.max_class_ratio >= 1:
            raise ValueError(f"max_class_ratio={self.max_class_ratio!r}: pass a ratio ≥ 1.0")
        if not 1 <= self.min_side <= self.max_side:
            raise ValueError(f"min_side={self.min_side!r}, max_side={self.max_side!r}: "
                             "pass 1 ≤ min_side ≤ max_side")
        if not 0 <= self.max_rejected_fraction <= 1:
            raise ValueError(f"max_rejected_fraction={self.max_rejected_fraction!r}: pass a value in [0, 1]")


@dataclass(frozen=True)
class CheckResult:
    """One check's outcome: `observed` is one readable line, `details` lists offenders (≤ 20 + a count)."""

    name: str
    success: bool
    observed: str
    details: tuple[str, ...] = ()
    blocking: bool = True  # False: a warning, shown in the report but not failing validation


@dataclass(frozen=True)
class ValidationReport:
    """Everything validation found; `success` is False when any blocking check failed."""

    success: bool
    checks: tuple[CheckResult, ...]
    counts: dict[str, dict[str, int]]  # split → class → images (unknown splits/labels included)
    rejected: tuple[tuple[str, str], ...]  # (key, problem) of every rejected file
    converted: int  # images with a non-empty note (e.g. "converted from CMYK")
    notes: tuple[tuple[str, str], ...]  # (key, note) of those images
    total_images: int  # usable images in the manifest
    thresholds: ValidationThresholds
    cross_split: tuple[str, ...] = ()  # every "image content in two splits: …" line
    new_images: int | None = None  # images whose content is not in the previous manifest (None: no previous)
    removed_images: int | None = None  # previous keys no longer in the manifest (None: no previous)
    new_duplicates: tuple[str, ...] = ()  # new keys whose content the previous manifest already had
    moved: tuple[str, ...] = ()  # every "image moved split: …" line
    data_docs: str | None = None  # this validation's Data Docs page, relative to the docs folder (None: not built)

    def check(self, name: str) -> CheckResult:
        """The check called `name`."""
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(f"no check named {name!r}; checks are {[c.name for c in self.checks]}")

    def failures(self) -> list[str]:
        """One readable line per failing blocking check."""
        return [f"{c.name}: {c.observed}" for c in self.checks if c.blocking and not c.success]

    def warnings(self) -> list[str]:
        """One readable line per failing non-blocking check."""
        return [f"{c.name}: {c.observed}" for c in self.checks if not c.blocking and not c.success]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the whole report."""
        d = asdict(self)
        d["checks"] = [{**asdict(c), "details": list(c.details)} for c in self.checks]
        d["rejected"] = [{"key": k, "problem": p} for k, p in self.rejected]
        d["notes"] = [{"key": k, "note": n} for k, n in self.notes]
        d["thresholds"] = {**asdict(self.thresholds), "allowed_modes": list(self.thresholds.allowed_modes)}
        for name in ("cross_split", "new_duplicates", "moved"):
            d[name] = list(d[name])
        d["failures"] = self.failures()
        d["warnings"] = self.warnings()
        return d

    def summary_markdown(self) -> str:
        """A readable markdown report: checks, counts per class and split, rejected files, notes."""
        verdict = "✅ passed" if self.success else "❌ failed"
        lines = [f"# Data validation {verdict}", "",
                 f"{plural(self.total_images, 'usable image')}, "
                 f"{plural(len(self.rejected), 'rejected file')}, "
                 f"{plural(self.converted, 'image')} converted on load."]
        if self.new_images is not None:
            lines[-1] += (f" Since the previous manifest: {plural(self.new_images, 'new image')}, "
                          f"{self.removed_images} removed.")
        lines += ["", "## Checks", "", "| check | result | observed |", "| --- | --- | --- |"]
        for c in self.checks:
            result = "pass" if c.success else ("❌ FAIL" if c.blocking else "⚠️ warning")
            lines.append(f"| {c.name} | {result} | {_cell(c.observed)} |")
        for c in self.checks:
            if c.details and not c.success:
                lines += ["", f"**{c.name}**", ""] + [f"- {_cell(d)}" for d in c.details]
        splits = list(self.counts)
        classes = list(dict.fromkeys(c for s in splits for c in self.counts[s]))
        lines += ["", "## Images per class and split", "",
                  "| class | " + " | ".join(splits) + " | total |", "| --- |" + " ---: |" * (len(splits) + 1)]
        for c in classes:
            row = [self.counts[s].get(c, 0) for s in splits]
            lines.append(f"| {_cell(c)} | " + " | ".join(map(str, row)) + f" | {sum(row)} |")
        totals = [sum(self.counts[s].values()) for s in splits]
        lines.append("| **total** | " + " | ".join(map(str, totals)) + f" | {sum(totals)} |")
        lines += ["", f"## Rejected files ({len(self.rejected)})", ""]
        if self.rejected:
            lines += ["| key | problem |", "| --- | --- |"]
            lines += [f"| {_cell(k)} | {_cell(p)} |" for k, p in self.rejected]
        else:
            lines.append("None.")
        lines += ["", f"## Notes ({len(self.notes)})", ""]
        lines += [f"- {_cell(k)}: {_cell(n)}" for k, n in self.notes] or ["None."]
        return "\n".join(lines) + "\n"


def listing(name: str, items: list[str], ok: str, blocking: bool = True) -> CheckResult:
    """A check that passes with ``ok`` when ``items`` is empty, else fails quoting the first item."""
    if not items:
        return CheckResult(name, True, ok, blocking=blocking)
    more = f" (and {len(items) - 1} more)" if len(items) > 1 else ""
    return CheckResult(name, False, items[0] + more, limit(items), blocking)


def limit(items: Sequence[str], most: int = MAX_LISTED) -> tuple[str, ...]:
    """The first ``most`` items, then one "… and N more" line."""
    items = list(items)
    return tuple(items[:most]) + ((f"… and {len(items) - most} more",) if len(items) > most else ())


def plural(n: int, noun: str) -> str:
    """``3 images``, ``1 image``."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")
