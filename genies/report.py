"""The GENIES table of one model as CSV, Markdown and PNG plots, read from results.duckdb.

Per model, `report_paths(model)` names the outputs (under results/genies_table/):

- `<model>.csv` / `<model>.md`: the `genies_table` view (paper Table 5), one row per
  intervention; the Markdown file also lists the cells that are incomplete and why.
- `<model>.shift_matrix.csv` / `.md`: the `shift_matrix` view (paper B.6) pivoted wide: one row
  per shift, one DE column per intervention (baseline first, then alphabetical).
- `<model>.de_heatmap.png`: that matrix as a heatmap (shift x intervention, diverging colours
  centred on DE = 0, grey where a cell has no DE).
- `<model>.generalization_vs_zero_shot.png`: paper figure 5, generalisation accuracy against
  the zero-shot accuracy on the target, one point per shift, one marker per intervention, with
  the diagonal (no change over zero-shot).
- `<model>.de_bars.png`: Table 5 as bars, avg DE per intervention with a 95% interval over
  shifts (mean +- 1.96 x standard error, `avg_differential_elicitation_se` of the view; normal
  approximation, no bar when fewer than two shifts), plus the capable DE as a dashed line.

Figures are drawn on `matplotlib.figure.Figure` with the Agg canvas (no pyplot, no display),
and every file is written to a temporary path and renamed into place.
"""

from __future__ import annotations

import math
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

from .io import atomic_path
from .plan import BASELINE, REPORT_TEMPLATES

#: Column of the genies_table view -> heading of the Markdown table.
TABLE_HEADINGS = {
    "intervention": "intervention",
    "avg_differential_elicitation": "avg DE",
    "avg_differential_elicitation_se": "DE s.e.",
    "capable_differential_elicitation": "capable DE",
    "avg_rms_calibration_error": "RMS calib. err.",
    "avg_rms_calibration_error_genies": "RMS calib. err. (genies)",
    "avg_id_target_accuracy": "avg ID target acc.",
    "extreme_avg_differential_elicitation": "extreme avg DE",
    "probing_avg_differential_elicitation": "probing avg DE",
    "avg_generalization_accuracy": "avg gen. acc.",
    "complete_shifts": "complete shifts",
    "shifts": "shifts",
}
SHIFT_COLUMNS = ["shift_id", "source", "target", "label"]
_MARKERS = "os^Dv<>phX*P"


def report_paths(model: str) -> dict[str, str]:
    return {name: template.format(model=model) for name, template in REPORT_TEMPLATES.items()}


def read_model_frames(database, model: str) -> dict[str, pd.DataFrame]:
    """The `genies_table`, `shift_matrix` and `cells` rows of one model (read-only)."""
    con = duckdb.connect(str(database), read_only=True)
    try:
        return {
            name: con.execute(f"SELECT * FROM {name} WHERE model = ?", [model]).df()
            for name in ("genies_table", "shift_matrix", "cells")  # fixed names, not user input
        }
    finally:
        con.close()


def intervention_order(names, baseline: str = BASELINE) -> list[str]:
    names = sorted(set(names))
    return [baseline] * (baseline in names) + [n for n in names if n != baseline]


def shift_matrix_wide(matrix: pd.DataFrame, value: str = "differential_elicitation"):
    """Long shift_matrix rows -> one row per shift (registry order), one column per intervention."""
    if matrix.empty:
        return pd.DataFrame(columns=SHIFT_COLUMNS)
    wide = matrix.pivot(index=["shift_index", *SHIFT_COLUMNS], columns="intervention", values=value)
    wide = wide.reset_index().sort_values("shift_index").drop(columns="shift_index")
    wide.columns.name = None
    return wide[SHIFT_COLUMNS + intervention_order(matrix["intervention"])]


def markdown_table(frame: pd.DataFrame, headings: dict | None = None, digits: int = 4) -> str:
    """A GitHub Markdown table; floats rounded to `digits`, missing values as `n/a`."""
    headings = headings or {}

    def cell(value):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "n/a"
        if isinstance(value, (float, np.floating)):
            return f"{value:.{digits}f}"
        return str(value).replace("|", "\\|")

    header = [headings.get(c, c) for c in frame.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def write_text(text: str, path) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def write_csv(frame: pd.DataFrame, path) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def _table_markdown(model: str, table: pd.DataFrame, cells: pd.DataFrame) -> str:
    columns = [c for c in TABLE_HEADINGS if c in table.columns]
    text = f"# GENIES table: {model}\n\n" + markdown_table(table[columns], TABLE_HEADINGS)
    text += (
        "\nDE = (generalisation accuracy - zero-shot accuracy) / target-tuned capability; "
        "capable DE = mean(1 - zero-shot / capability); averages over the shifts where the "
        "number exists; DE s.e. = standard error of avg DE over shifts.\n"
    )
    incomplete = cells[~cells["complete"].astype(bool)] if len(cells) else cells
    if len(incomplete):
        text += "\n## Incomplete cells\n\n" + markdown_table(
            incomplete[["intervention", "shift_id", "missing"]]
        )
    return text


def _save(fig: Figure, path) -> None:
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")


def _empty_figure(path, message: str) -> None:
    fig = Figure(figsize=(5, 2))
    fig.text(0.5, 0.5, message, ha="center", va="center")
    _save(fig, path)


def plot_de_heatmap(wide: pd.DataFrame, path, title: str = "") -> None:
    """Heatmap of a `shift_matrix_wide` frame: shifts as rows, interventions as columns."""
    interventions = [c for c in wide.columns if c not in SHIFT_COLUMNS]
    if wide.empty or not interventions:
        _empty_figure(path, f"{title}: no cells")
        return
    values = wide[interventions].to_numpy(dtype=float)
    limit = max(float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 0.0, 1e-6)
    fig = Figure(figsize=(1.2 + 0.9 * len(interventions), 1.2 + 0.4 * len(wide)))
    ax = fig.add_subplot()
    ax.set_facecolor("0.85")  # NaN cells show the background
    image = ax.imshow(
        np.ma.masked_invalid(values),
        cmap="RdBu",
        norm=TwoSlopeNorm(vcenter=0.0, vmin=-limit, vmax=limit),
        aspect="auto",
    )
    for (i, j), value in np.ndenumerate(values):
        text, colour = ("n/a", "0.4") if np.isnan(value) else (f"{value:.2f}", "black")
        if abs(value) > 0.6 * limit:
            colour = "white"  # legible on the saturated ends of the colour map
        ax.text(j, i, text, ha="center", va="center", fontsize=7, color=colour)
    labels = [
        f"{s} -> {t}" + (f" ({lab})" if isinstance(lab, str) else "")
        for s, t, lab in zip(wide["source"], wide["target"], wide["label"], strict=True)
    ]
    ax.set_yticks(range(len(wide)), labels, fontsize=7)
    ax.set_xticks(range(len(interventions)), interventions, rotation=45, ha="right")
    ax.set_title(title or "differential elicitation")
    fig.colorbar(image, ax=ax, label="differential elicitation")
    _save(fig, path)


def plot_generalization_vs_zero_shot(cells: pd.DataFrame, path, title: str = "") -> None:
    """Paper figure 5: per shift, generalisation accuracy against the zero-shot baseline."""
    points = cells.dropna(subset=["generalization_accuracy", "baseline_accuracy"])
    if points.empty:
        _empty_figure(path, f"{title}: no cells with both accuracies")
        return
    fig = Figure(figsize=(5.5, 5))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.5", linestyle="--", linewidth=1, label="no change")
    for k, intervention in enumerate(intervention_order(points["intervention"])):
        rows = points[points["intervention"] == intervention]
        ax.scatter(
            rows["baseline_accuracy"],
            rows["generalization_accuracy"],
            marker=_MARKERS[k % len(_MARKERS)],
            label=intervention,
            alpha=0.8,
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("zero-shot accuracy on the target")
    ax.set_ylabel("generalisation accuracy (source -> target)")
    ax.set_title(title or "generalisation vs zero-shot")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    _save(fig, path)


def plot_de_bars(table: pd.DataFrame, path, title: str = "") -> None:
    """Avg DE per intervention with a 95% interval over shifts (+-1.96 standard errors)."""
    rows = table.dropna(subset=["avg_differential_elicitation"])
    if rows.empty:
        _empty_figure(path, f"{title}: no differential elicitation yet")
        return
    rows = rows.set_index("intervention").loc[intervention_order(rows["intervention"])]
    error = 1.96 * rows["avg_differential_elicitation_se"].to_numpy(dtype=float)
    fig = Figure(figsize=(1.5 + 0.7 * len(rows), 4))
    ax = fig.add_subplot()
    x = np.arange(len(rows))
    ax.bar(x, rows["avg_differential_elicitation"], yerr=np.nan_to_num(error), capsize=4)
    capable = rows["capable_differential_elicitation"].dropna()
    if len(capable):
        ax.axhline(capable.mean(), color="0.3", linestyle="--", linewidth=1, label="capable DE")
        ax.legend(fontsize=8)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(x, rows.index, rotation=45, ha="right")
    ax.set_ylabel("avg differential elicitation (95% interval over shifts)")
    ax.set_title(title or "GENIES table")
    _save(fig, path)


def write_reports(database, model: str, paths: dict | None = None) -> dict[str, str]:
    """Write every output of `report_paths(model)` (or the given paths) from results.duckdb."""
    paths = paths or report_paths(model)
    frames = read_model_frames(database, model)
    table, cells = frames["genies_table"], frames["cells"]
    wide = shift_matrix_wide(frames["shift_matrix"])
    write_csv(table, paths["table_csv"])
    write_text(_table_markdown(model, table, cells), paths["table_md"])
    write_csv(wide, paths["shift_matrix_csv"])
    write_text(
        f"# Differential elicitation per shift: {model}\n\n" + markdown_table(wide),
        paths["shift_matrix_md"],
    )
    plot_de_heatmap(wide, paths["de_heatmap"], f"{model}: differential elicitation")
    plot_generalization_vs_zero_shot(cells, paths["generalization_plot"], model)
    plot_de_bars(table, paths["de_bars"], f"{model}: GENIES table")
    return paths
