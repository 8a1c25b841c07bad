"""The GENIES table of one model as CSV, Markdown and PNG plots, read from results.duckdb.

Per model, `report_paths(model)` names the outputs (under results/genies_table/):

- `<model>.csv` / `<model>.md`: the `genies_table` view (paper Table 5), one row per
  intervention, each average beside its count of shifts and the size of its set. A mean over
  part of its set is marked: `0.0700 (9/37)` in the Markdown, and the CSV's `partial` column
  names every such column with its coverage. The Markdown file also lists the cells that are
  incomplete and why.
- `<model>.comparisons.md`: the `comparisons` table (paired prompt bootstrap), each pair of
  interventions once, the one with the higher avg DE first.
- `<model>.shift_matrix.csv` / `.md`: the `shift_matrix` view (paper B.6) pivoted wide: one row
  per shift, one DE column per intervention (baseline first, then alphabetical).
- `<model>.de_heatmap.png`: that matrix as a heatmap (shift x intervention, diverging colours
  centred on DE = 0, grey where a cell has no DE).
- `<model>.generalization_vs_zero_shot.png`: paper figure 5, generalisation accuracy against
  the zero-shot accuracy on the target, one point per shift, one marker per intervention, with
  the diagonal (no change over zero-shot).
- `<model>.json`: the run's results file (`genies.results.summary`): the table, the cells,
  the comparisons, the resolved config, the prepared models and the package versions.
- `<model>.de_bars.png`: Table 5 as bars, avg DE per intervention with its 95% paired prompt
  bootstrap interval (`avg_differential_elicitation_low` / `_high`), plus the capable DE as a
  dashed line.

Figures are drawn on `matplotlib.figure.Figure` with the Agg canvas (no pyplot, no display),
and every file is written to a temporary path and renamed into place.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

from genies.io import atomic_path
from genies.pipeline.plan import BASELINE, REPORT_TEMPLATES
from genies.results.database import connect
from genies.results.summary import write_summary

#: Column of the genies_table view -> heading of the Markdown table.
TABLE_HEADINGS = {
    "intervention": "intervention",
    "avg_differential_elicitation": "avg DE",
    "avg_differential_elicitation_interval": "avg DE 95% interval",
    "capable_differential_elicitation": "capable DE",
    "avg_rms_calibration_error": "RMS calib. err. (standard)",
    "avg_rms_calibration_error_genies": "RMS calib. err. (genies)",
    "avg_id_target_accuracy": "avg ID target acc.",
    "extreme_avg_differential_elicitation": "extreme avg DE",
    "probing_avg_differential_elicitation": "probing avg DE",
    "avg_generalization_accuracy": "avg gen. acc.",
    "complete_shifts": "complete shifts",
    "shifts": "shifts",
}
#: Average of the genies_table view -> (its count of shifts, the size of its set).
COVERAGE = {
    "avg_differential_elicitation": ("genies_shifts", "genies_set_size"),
    "capable_differential_elicitation": ("capable_shifts", "genies_set_size"),
    "avg_rms_calibration_error": ("rms_shifts", "genies_set_size"),
    "avg_rms_calibration_error_genies": ("rms_genies_shifts", "genies_set_size"),
    "avg_id_target_accuracy": ("id_target_shifts", "genies_set_size"),
    "avg_generalization_accuracy": ("generalization_shifts", "genies_set_size"),
    "avg_elicitation": ("elicitation_shifts", "genies_set_size"),
    "extreme_avg_differential_elicitation": ("extreme_shifts", "extreme_set_size"),
    "probing_avg_differential_elicitation": ("probing_shifts", "probing_set_size"),
}
COMPARISON_HEADINGS = {
    "intervention": "intervention",
    "other": "other",
    "shifts": "shifts",
    "avg_differential_elicitation": "avg DE",
    "other_avg_differential_elicitation": "other's avg DE",
    "difference": "difference",
    "difference_interval": "95% interval",
    "ahead_share": "ahead in draws",
}
SHIFT_COLUMNS = ["shift_id", "source", "target", "label"]
_MARKERS = "os^Dv<>phX*P"


def report_paths(model: str) -> dict[str, str]:
    return {name: template.format(model=model) for name, template in REPORT_TEMPLATES.items()}


def read_model_frames(database, model: str) -> dict[str, pd.DataFrame]:
    """The `genies_table`, `shift_matrix`, `cells` and `comparisons` rows of one model."""
    con = connect(database)
    try:
        return {
            name: con.execute(f"SELECT * FROM {name} WHERE model = ?", [model]).df()
            # fixed names, not user input
            for name in ("genies_table", "shift_matrix", "cells", "comparisons")
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


def _missing(value) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def format_number(value, digits: int = 4) -> str:
    """A float rounded to `digits`; a missing value as `n/a`."""
    if _missing(value):
        return "n/a"
    if isinstance(value, (float, np.floating)):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(frame: pd.DataFrame, headings: dict | None = None, digits: int = 4) -> str:
    """A GitHub Markdown table; floats rounded to `digits`, missing values as `n/a`."""
    headings = headings or {}

    def cell(value):
        return format_number(value, digits).replace("|", "\\|")

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


def with_coverage(row, column: str, digits: int = 4) -> str:
    """An average as text, followed by `(count/set size)` unless it covers its whole set."""
    count, size = (row[c] for c in COVERAGE[column])
    text = format_number(row[column], digits)
    if _missing(size) or int(size) == 0:
        return f"{text} (no such set)"
    return text if int(count) == int(size) else f"{text} ({int(count)}/{int(size)})"


def interval_text(low, high, digits: int = 4) -> str:
    if _missing(low) or _missing(high):
        return "n/a"
    return f"[{low:.{digits}f}, {high:.{digits}f}]"


def partial_columns(row) -> str:
    """The averages of a genies_table row that cover only part of their set, with coverage."""
    return "; ".join(
        f"{column} ({int(row[count])}/{int(row[size])})"
        for column, (count, size) in COVERAGE.items()
        if column in row and not _missing(row[column]) and int(row[count]) < int(row[size])
    )


def table_csv_frame(table: pd.DataFrame) -> pd.DataFrame:
    """The view's rows, numeric, with a `partial` column naming every partial average."""
    frame = table.copy()
    frame["partial"] = [partial_columns(row) for _, row in table.iterrows()]
    return frame


def table_markdown_frame(table: pd.DataFrame) -> pd.DataFrame:
    """The view's rows as the text of the Markdown table (averages with their coverage)."""
    frame = pd.DataFrame({"intervention": table["intervention"]})
    for column in TABLE_HEADINGS:
        if column in COVERAGE and column in table.columns:
            frame[column] = [with_coverage(row, column) for _, row in table.iterrows()]
        elif column == "avg_differential_elicitation_interval":
            frame[column] = [
                interval_text(low, high)
                for low, high in zip(
                    table["avg_differential_elicitation_low"],
                    table["avg_differential_elicitation_high"],
                    strict=True,
                )
            ]
        elif column in table.columns:
            frame[column] = table[column]
    return frame


def _set_sizes(table: pd.DataFrame) -> str:
    if table.empty:
        return "GENIES, extreme and probing sets"
    row = table.iloc[0]
    sizes = [int(row[f"{name}_set_size"]) for name in ("genies", "extreme", "probing")]
    return "GENIES set ({} shifts), extreme set ({}), probing set ({})".format(*sizes)


def _table_markdown(model: str, table: pd.DataFrame, cells: pd.DataFrame) -> str:
    text = f"# GENIES table: {model}\n\n"
    text += markdown_table(table_markdown_frame(table), TABLE_HEADINGS)
    text += (
        "\nDE = (generalisation accuracy - zero-shot accuracy) / target-tuned capability; "
        "capable DE = mean(1 - zero-shot / capability); ID target accuracy: trained and "
        "evaluated on the target reference. Avg DE, capable DE, calibration, ID target and "
        "generalisation accuracy average over the GENIES shifts, extreme and probing avg DE "
        f"over every extreme / probing shift of all.json: the {_set_sizes(table)}. "
        "A number followed by (k/n) averages only the k shifts of its set of n that this run "
        "covers: a partial mean, not the paper's column. The 95% interval of avg DE is a paired "
        "bootstrap over prompts (zero-shot baseline and capability resampled with it); "
        f"{model}.comparisons.md compares the interventions. RMS calib. err. (genies) is the "
        "published code's variant, the one comparable with the paper's Table 5; (standard) is "
        "the binned calibration error with each pair's outcome, which the paper does not "
        "report (docs/fidelity.md).\n"
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
    """Avg DE per intervention with its 95% paired prompt-bootstrap interval."""
    rows = table.dropna(subset=["avg_differential_elicitation"])
    if rows.empty:
        _empty_figure(path, f"{title}: no differential elicitation yet")
        return
    rows = rows.set_index("intervention").loc[intervention_order(rows["intervention"])]
    mean = rows["avg_differential_elicitation"].to_numpy(dtype=float)
    low = rows["avg_differential_elicitation_low"].to_numpy(dtype=float)
    high = rows["avg_differential_elicitation_high"].to_numpy(dtype=float)
    # No bar where there is no interval; a percentile interval need not contain the mean.
    error = np.nan_to_num(np.clip([mean - low, high - mean], 0.0, None))
    fig = Figure(figsize=(1.5 + 0.7 * len(rows), 4))
    ax = fig.add_subplot()
    x = np.arange(len(rows))
    ax.bar(x, mean, yerr=error, capsize=4)
    capable = rows["capable_differential_elicitation"].dropna()
    if len(capable):
        ax.axhline(capable.mean(), color="0.3", linestyle="--", linewidth=1, label="capable DE")
        ax.legend(fontsize=8)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(x, rows.index, rotation=45, ha="right")
    ax.set_ylabel("avg DE, GENIES shifts (95% prompt-bootstrap interval)")
    ax.set_title(title or "GENIES table")
    _save(fig, path)


def comparisons_markdown(model: str, comparisons: pd.DataFrame) -> str:
    """Each pair once, the one with the higher avg DE first, largest differences first."""
    shown = comparisons[
        (comparisons["difference"] > 0)
        | ((comparisons["difference"] == 0) & (comparisons["intervention"] < comparisons["other"]))
    ].sort_values(["difference", "intervention", "other"], ascending=[False, True, True])
    frame = shown[["intervention", "other", "shifts"]].copy()
    for column in ("avg_differential_elicitation", "other_avg_differential_elicitation"):
        frame[column] = shown[column]
    frame["difference"] = shown["difference"]
    frame["difference_interval"] = [
        interval_text(low, high)
        for low, high in zip(shown["difference_low"], shown["difference_high"], strict=True)
    ]
    frame["ahead_share"] = shown["ahead_share"]
    resamples = int(comparisons["resamples"].iloc[0]) if len(comparisons) else 0
    return (
        f"# Paired comparisons: {model}\n\n"
        + markdown_table(frame, COMPARISON_HEADINGS)
        + "\nAvg DE over the GENIES shifts both interventions have a DE on (`shifts`). "
        f"Paired bootstrap over prompts ({resamples} draws): each draw resamples every "
        "evaluation dataset's prompts, the same draw for every intervention, the zero-shot "
        "baseline and the capability. The interval is the 2.5-97.5 percentile of the drawn "
        "differences; `ahead in draws` is the share of draws in which the first intervention's "
        "avg DE is higher, a tie counting one half.\n"
    )


def write_reports(
    database,
    model: str,
    paths: dict | None = None,
    config: dict | None = None,
    model_dirs: dict | None = None,
) -> dict[str, str]:
    """Write every output of `report_paths(model)` (or the given paths) from results.duckdb;
    the results file records `config` and the prepared `model_dirs` (name -> directory) the
    numbers come from (`genies.results.summary`)."""
    paths = paths or report_paths(model)
    write_summary(database, model, paths["results_json"], config or {}, model_dirs or {})
    frames = read_model_frames(database, model)
    table, cells = frames["genies_table"], frames["cells"]
    wide = shift_matrix_wide(frames["shift_matrix"])
    write_csv(table_csv_frame(table), paths["table_csv"])
    write_text(_table_markdown(model, table, cells), paths["table_md"])
    write_text(comparisons_markdown(model, frames["comparisons"]), paths["comparisons_md"])
    write_csv(wide, paths["shift_matrix_csv"])
    write_text(
        f"# Differential elicitation per shift: {model}\n\n" + markdown_table(wide),
        paths["shift_matrix_md"],
    )
    plot_de_heatmap(wide, paths["de_heatmap"], f"{model}: differential elicitation")
    plot_generalization_vs_zero_shot(cells, paths["generalization_plot"], model)
    plot_de_bars(table, paths["de_bars"], f"{model}: GENIES table")
    return paths
