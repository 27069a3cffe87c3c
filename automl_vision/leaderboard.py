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
            for attr in ("reason", "slowdown"):  # set as the trial runs: a live dashboard shows them
                if t.user_attrs.get(attr) and not row.get(attr):
                    row[attr] = t.user_attrs[attr]
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
    n_val = validation_size(run_dir)
    if n_val:  # how much a validation accuracy can tell: its 95% Wilson interval
        from automl_vision.evaluation import wilson_interval

        for row in rows.values():
            acc = row.get("val_accuracy")
            if isinstance(acc, (int, float)) and not pd.isna(acc):
                row["val_accuracy_low95"], row["val_accuracy_high95"] = wilson_interval(float(acc), n_val)
    df = pd.DataFrame(sorted(rows.values(), key=lambda r: r["number"]))
    first = [c for c in FIRST_COLUMNS if c in df.columns]
    metrics = sorted(c for c in df.columns if c.startswith("val_"))
    params = sorted(c for c in df.columns if c.startswith("param_"))
    rest = [c for c in df.columns if c not in first and c not in metrics and c not in params]
    return df[first + metrics + rest + params]


def validation_size(run_dir: RunDir) -> int:
    """Images in the run's validation split (0 when not known yet)."""
    counts = ((run_dir.read_data_report() or {}).get("counts") or {}).get("val") or {}
    try:
        return int(sum(counts.values())) if isinstance(counts, dict) else int(counts)
    except (TypeError, ValueError):
        return 0


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
    from rich.markup import escape
    from rich.table import Table

    console = console or make_console()
    table = Table(title=f"Leaderboard (validation {metric}, {'higher' if direction == 'maximize' else 'lower'} is better)")
    with_ci = metric == "accuracy" and "val_accuracy_low95" in df
    header = f"{metric} (95% CI)" if with_ci else metric
    for col in ("#", "state", "model", header, "epochs", "time", "params", "note"):
        table.add_column(col, justify="right" if col in ("#", header, "epochs", "time", "params") else "left",
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
            _value_cell(r, value, with_ci),
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
    for line in slowdowns(df):
        console.print(f"[yellow]Slowdown:[/] {escape(line)}")


def slowdowns(df: pd.DataFrame) -> list[str]:
    """One line per trial whose training ran far below its own speed (search/watchdog.py)."""
    if "slowdown" not in df:
        return []
    slow = df[df["slowdown"].notna() & (df["slowdown"].astype(str) != "")]
    return [f"trial #{int(r['number'])}: {r['slowdown']}" for _, r in slow.sort_values("number").iterrows()]


def _value_cell(r, value, with_ci: bool) -> str:
    if not pd.notna(value):
        return "-"
    low, high = r.get("val_accuracy_low95"), r.get("val_accuracy_high95")
    if with_ci and pd.notna(low) and pd.notna(high) and r.get("state") == "COMPLETE":
        return f"{value:.4f} ({low:.2f}-{high:.2f})"
    return f"{value:.4f}"


def _note(r) -> str:
    reason = str(r.get("reason")) if pd.notna(r.get("reason")) else ""
    if r.get("state") == "PRUNED" and reason.startswith("pruned after epoch"):
        return "early-stopped by the pruner"
    return reason[:80]
