"""The leaderboard: one row a trial, from the study and the trials' status files."""

from __future__ import annotations

import io
from typing import Any

import pandas as pd

from automl_vision.progress import make_console
from automl_vision.rundir import RunDir, atomic_write_text

FIRST_COLUMNS = ["number", "state", "model", "family", "value", "epochs", "seconds", "params_count", "image_size", "aug", "reason", "worker"]


def build(run_dir: RunDir, study=None) -> pd.DataFrame:
    """Rows for every trial; the study is the truth for states, the files add details."""
    rows: dict[int, dict[str, Any]] = {}
    for rec in run_dir.iter_trials():
        row = {k: v for k, v in rec.items() if k not in ("metrics", "values", "traceback", "started", "finished")}
        for name, value in (rec.get("metrics") or {}).items():
            row[f"val_{name}"] = value
        rows[int(rec["number"])] = row
    if study is not None:
        for t in study.get_trials(deepcopy=False):
            row = rows.setdefault(t.number, {"number": t.number})
            row["state"] = t.state.name
            if t.values is not None:
                row["value"] = t.values[0]
                for i, v in enumerate(t.values[1:], start=1):
                    row[f"objective_{i}"] = v
            elif t.state.name == "RUNNING":
                row.pop("value", None)
            if t.user_attrs.get("reason") and not row.get("reason"):
                row["reason"] = t.user_attrs["reason"]
            if t.state.name == "WAITING":  # enqueued (portfolio, re-queued) and not started when the search ended
                row.setdefault("reason", "queued, not started yet: a resumed search runs it first")
                if t.user_attrs.get("portfolio"):
                    row.setdefault("model", f"portfolio: {t.user_attrs['portfolio']}")
            row.setdefault("model", t.user_attrs.get("model", ""))
            if t.datetime_start and t.datetime_complete and "seconds" not in row:
                row["seconds"] = (t.datetime_complete - t.datetime_start).total_seconds()
            for k, v in t.params.items():
                row[f"param_{k}"] = v
    if not rows:
        return pd.DataFrame(columns=FIRST_COLUMNS)
    df = pd.DataFrame(sorted(rows.values(), key=lambda r: r["number"]))
    first = [c for c in FIRST_COLUMNS if c in df.columns]
    metrics = sorted(c for c in df.columns if c.startswith("val_"))
    params = sorted(c for c in df.columns if c.startswith("param_"))
    rest = [c for c in df.columns if c not in first and c not in metrics and c not in params]
    return df[first + metrics + rest + params]


def write(run_dir: RunDir, study=None) -> pd.DataFrame:
    df = build(run_dir, study)
    buf = io.StringIO()
    df.to_csv(buf, index=False)
    atomic_write_text(run_dir.leaderboard, buf.getvalue())
    return df


def ranked(df: pd.DataFrame, direction: str) -> pd.DataFrame:
    """Complete trials first, best first; then pruned; then the rest."""
    if df.empty:
        return df
    order = {"COMPLETE": 0, "PRUNED": 1, "RUNNING": 2, "FAIL": 3}
    df = df.copy()
    df["_s"] = df["state"].map(order).fillna(4)
    value = pd.to_numeric(df.get("value"), errors="coerce")
    df["_v"] = -value if direction == "maximize" else value
    return df.sort_values(["_s", "_v", "number"], na_position="last").drop(columns=["_s", "_v"])


def render(df: pd.DataFrame, metric: str, direction: str, top: int = 15, console=None) -> None:
    from rich.table import Table

    console = console or make_console()
    table = Table(title=f"Leaderboard (validation {metric}, {'higher' if direction == 'maximize' else 'lower'} is better)")
    for col in ("#", "state", "model", metric, "epochs", "time", "params", "note"):
        table.add_column(col, justify="right" if col in ("#", metric, "epochs", "time", "params") else "left",
                         no_wrap=col != "note", overflow="ellipsis", max_width=None if col != "note" else 40)
    rows = ranked(df, direction)
    # configurations sampled after the time left could not train them: one line, not a row each
    reasons = rows["reason"].astype(str) if "reason" in rows else pd.Series("", index=rows.index)
    unstarted = rows[(rows["state"] == "PRUNED") & reasons.str.startswith("not started:")] if len(rows) else rows
    rows = rows.drop(unstarted.index)
    for _, r in rows.head(top).iterrows():
        value = r.get("value")
        pc = r.get("params_count")
        table.add_row(
            str(int(r["number"])),
            str(r.get("state", "")).lower(),
            str(r.get("model", "") if pd.notna(r.get("model")) else ""),
            f"{value:.4f}" if pd.notna(value) else "-",
            str(int(r["epochs"])) if pd.notna(r.get("epochs")) else "-",
            f"{r['seconds']:.0f}s" if pd.notna(r.get("seconds")) else "-",
            f"{pc / 1e6:.2f}M" if pd.notna(pc) else "-",
            _note(r),
        )
    console.print(table)
    if len(rows) > top:
        console.print(f"... and {len(rows) - top} more trials in leaderboard.csv")
    if len(unstarted):
        numbers = ", ".join(f"#{int(n)}" for n in sorted(unstarted["number"]))
        console.print(f"{len(unstarted)} configuration(s) sampled near the end were not started, too little time "
                      f"was left to train them ({numbers}; reasons in leaderboard.csv)")


def _note(r) -> str:
    reason = str(r.get("reason")) if pd.notna(r.get("reason")) else ""
    if r.get("state") == "PRUNED" and reason.startswith("pruned after epoch"):
        return "early-stopped by the pruner"
    return reason[:80]
