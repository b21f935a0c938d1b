"""The short markdown summary a person reads first on a flow run: what ran, on which data, the outcome, links."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from scene.evaluation import tables


def _links(links: Mapping[str, str]) -> list[str]:
    """``- name: link`` lines; http(s) links clickable, other URIs as code."""
    out = []
    for name, uri in links.items():
        if not uri:
            continue
        out.append(f"- [{name}]({uri})" if str(uri).startswith(("http://", "https://")) else f"- {name}: `{uri}`")
    return out


def running(title: str, facts: Mapping[str, Any]) -> str:
    """The summary while the run is going: what it does and with which inputs."""
    lines = [f"# {title}", "", "**Status: running** — this summary is replaced with the outcome when the run ends.",
             ""]
    lines += [f"- **{k}**: {v}" for k, v in facts.items() if v not in (None, "")]
    return "\n".join(lines) + "\n"


def failed(title: str, message: str) -> str:
    """The summary of a run that ended Failed/Crashed/Cancelled."""
    return f"# {title}\n\n**Status: ✗ {message}**\n\nSee the run's logs for the traceback.\n"


def _winner(rows: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The ok row with the highest *validation* F1 (the earlier on a tie), as the gate's challenger is chosen; None
    when none has one. Test metrics never choose: the test split is the gate's, used once."""
    ok = [r for r in rows if r.get("status") == "ok" and tables.fmt_metric(r.get("val_f1_weighted"))]
    return max(ok, key=lambda r: float(r["val_f1_weighted"])) if ok else None


def promotion_line(promotion: Mapping[str, Any] | None) -> str:
    """One sentence on the registry decision."""
    if not promotion:
        return "Promotion: not attempted (promote=False)."
    if promotion.get("note"):
        return f"Promotion: {promotion['note']}."
    decision = promotion.get("decision") or {}
    reason = decision.get("reason") or promotion.get("reason") or ""
    who = promotion.get("challenger")
    if not who:
        verdict = "**nothing promoted**, the champion stays"
    else:
        verdict = f"{who} **promoted** to champion" if promotion.get("promoted") else f"{who} **not promoted**"
    return f"Promotion: {verdict}" + (f" — {tables.shorten(reason, 300)}" if reason else "") + "."


def training(title: str, facts: Mapping[str, Any], rows: Sequence[Mapping[str, Any]],
             promotion: Mapping[str, Any] | None, links: Mapping[str, str]) -> str:
    """The outcome of a training run: verdict, the backbone best on validation, promotion decision, table, links."""
    win = _winner(rows)
    failed_n = sum(r.get("status") == "failed" for r in rows)
    state = "✓ completed" if failed_n == 0 else f"completed, {failed_n} of {len(rows)} backbones ✗ failed"
    lines = [f"# {title}", "", f"**Status: {state}**", ""]
    if win is not None:
        lines.append(f"**Best on validation: {win['backbone']}** — validation F1 (weighted) "
                     f"{tables.fmt_metric(win.get('val_f1_weighted'))}; on test F1 (weighted) "
                     f"{tables.fmt_metric(win.get('test_f1_weighted'))}, accuracy "
                     f"{tables.fmt_metric(win.get('test_accuracy'))} ({tables.weights_label(win.get('weights'))} "
                     "weights)")
    else:
        lines.append("**No successful, non-collapsed backbone.**")
    lines += ["", promotion_line(promotion), ""]
    lines += [f"- **{k}**: {v}" for k, v in facts.items() if v not in (None, "")]
    lines += ["", tables.markdown(tables.display_rows(rows)), "## Links", "", *_links(links)]
    return "\n".join(lines) + "\n"


def completed(title: str, facts: Mapping[str, Any]) -> str:
    """The outcome of a run that completed, as its facts (e.g. one feature-extraction chunk)."""
    lines = [f"# {title}", "", "**Status: ✓ completed**", ""]
    lines += [f"- **{k}**: {v}" for k, v in facts.items() if v not in (None, "")]
    return "\n".join(lines) + "\n"


def prediction(title: str, facts: Mapping[str, Any], links: Mapping[str, str]) -> str:
    """The outcome of a prediction run."""
    return completed(title, facts) + "\n".join(["", "## Links", "", *_links(links)]) + "\n"
