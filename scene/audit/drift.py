"""Drift: do new images look like the champion's training data?

Two tests against a :class:`Reference` made from the champion's training images:

- **features**: the pooled backbone features of both sets are projected on the reference's top principal
  components; a two-sample Kolmogorov–Smirnov test per component, Bonferroni-combined (``feature_p``), with the
  largest KS statistic as the effect size;
- **class mix**: the champion's predicted classes on the new images vs on its training images (chi-square).

Drift is reported when a test is significant (p < ``alpha``) *and* its effect is large enough (KS ≥
``min_ks`` or total-variation distance of the class mix ≥ ``min_tv``), so huge batches do not flag trivia.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats

ALPHA = 0.01
MIN_KS = 0.15
MIN_TV = 0.10


@dataclass(frozen=True)
class Reference:
    """What drift is measured against: a projection of the reference features and its predicted class mix."""

    mean: np.ndarray = field(repr=False)  # (d,)
    components: np.ndarray = field(repr=False)  # (k, d), unit rows
    projected: np.ndarray = field(repr=False)  # (n, k) the reference images on the components
    class_mix: np.ndarray = field(repr=False)  # (c,) share of each predicted class
    class_names: tuple[str, ...]

    def project(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, np.float64) - self.mean) @ self.components.T

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, mean=self.mean, components=self.components, projected=self.projected,
                 class_mix=self.class_mix, class_names=np.asarray(self.class_names))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Reference:
        with np.load(io.BytesIO(data)) as z:
            return cls(z["mean"], z["components"], z["projected"], z["class_mix"],
                       tuple(str(c) for c in z["class_names"]))


def fit_reference(x: np.ndarray, predicted: np.ndarray, class_names: tuple[str, ...] | list[str],
                  components: int = 8) -> Reference:
    """A reference from features ``x`` and predicted class indices ``predicted`` of the same images."""
    x = np.asarray(x, np.float64)
    if len(x) < 2 * components:
        raise ValueError(f"{len(x)} reference images are too few for {components} components; "
                         f"pass at least {2 * components}")
    mean = x.mean(0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    comp = vt[:components]
    mix = np.bincount(np.asarray(predicted, int), minlength=len(class_names)) / len(predicted)
    return Reference(mean, comp, (x - mean) @ comp.T, mix, tuple(class_names))


@dataclass(frozen=True)
class DriftResult:
    """The two tests and the verdict."""

    images: int
    reference_images: int
    feature_p: float  # Bonferroni-combined KS p-value over the components
    max_ks: float  # the largest KS statistic (0..1)
    class_mix_p: float
    class_mix_tv: float  # total-variation distance between the predicted class mixes (0..1)
    drifted: bool
    reasons: list[str]
    class_mix: dict[str, dict[str, float]]  # class → {"reference": share, "new": share}
    alpha: float = ALPHA

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def markdown(self) -> str:
        import pandas as pd

        from scene.evaluation.report import markdown_table

        verdict = "**DRIFT**: " + "; ".join(self.reasons) if self.drifted else "no drift"
        mix = pd.DataFrame([{"class": c, **v} for c, v in self.class_mix.items()]).round(3)
        return "\n".join([
            f"{verdict} — {self.images} new images vs {self.reference_images} of the champion's training images.", "",
            f"- features: KS on the top principal components, p = {self.feature_p:.2g}, largest KS = {self.max_ks:.3f}"
            f" (drift when p < {self.alpha:g} and KS ≥ {MIN_KS})",
            f"- predicted class mix: chi-square p = {self.class_mix_p:.2g}, total variation = {self.class_mix_tv:.3f}"
            f" (drift when p < {self.alpha:g} and TV ≥ {MIN_TV})", "", markdown_table(mix)])


def compare(ref: Reference, x: np.ndarray, predicted: np.ndarray, *, alpha: float = ALPHA, min_ks: float = MIN_KS,
            min_tv: float = MIN_TV) -> DriftResult:
    """Test new images (features ``x``, predicted class indices ``predicted``) against ``ref``."""
    if len(x) < 2:
        raise ValueError(f"{len(x)} new images: drift needs at least 2")
    proj = ref.project(x)
    ks = [stats.ks_2samp(ref.projected[:, k], proj[:, k]) for k in range(proj.shape[1])]
    feature_p = min(1.0, len(ks) * min(float(r.pvalue) for r in ks))
    max_ks = max(float(r.statistic) for r in ks)
    new_mix = np.bincount(np.asarray(predicted, int), minlength=len(ref.class_names)) / len(predicted)
    expected = (ref.class_mix + 1e-3) / (ref.class_mix + 1e-3).sum()  # no zero cells
    observed = new_mix * len(predicted)
    mix_p = float(stats.chisquare(observed, expected * len(predicted)).pvalue)
    tv = float(0.5 * np.abs(new_mix - ref.class_mix).sum())
    reasons = []
    if feature_p < alpha and max_ks >= min_ks:
        reasons.append(f"feature distribution shifted (KS {max_ks:.2f}, p = {feature_p:.2g})")
    if mix_p < alpha and tv >= min_tv:
        reasons.append(f"predicted class mix changed (total variation {tv:.2f}, p = {mix_p:.2g})")
    mix = {c: {"reference": float(ref.class_mix[i]), "new": float(new_mix[i])} for i, c in enumerate(ref.class_names)}
    return DriftResult(len(x), len(ref.projected), feature_p, max_ks, mix_p, tv, bool(reasons), reasons, mix, alpha)
