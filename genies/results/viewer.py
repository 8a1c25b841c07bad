"""A static per-example viewer of one model's results: results/viewer/<model>/.

`index.html` is the whole page (its CSS and JavaScript inline, from
`genies/results/viewer_assets/`); `data/<NNN>_<shift>.js` holds one shift each, loaded by a script
element when the shift is chosen (browsers block fetch() of local files, so the data are scripts
that set a global). Nothing is read from a server or the network: the folder works opened from disk,
and inside the Snakemake report (`snakemake --report report.zip`).

For each shift of the model's cells, the page lists the *evaluated examples*: the target's test
examples that the model scored in one of the shift's generalisation groups (the predictions with
the cell's `train` and eval = target). Each example shows its prompt and responses (the
preferred one marked), every intervention's probability for each evaluation pair, and whether
the pair changed from the same model's zero-shot prediction: *fixed* (zero-shot wrong, the
intervention right) or *broken* (zero-shot right, the intervention wrong).

Published models (`<model>@published` rows in `predictions`) appear beside the model's own rows,
matched by (example_id, pair_index); their pairs that match no listed example are counted, not
shown. All published models present are in the data; the page shows `<model>@published` when it
exists and otherwise every published model, and a checkbox per model changes that.

Every value from the data reaches the page as JSON inside a script (text is inserted with
`textContent`), so prompts that contain HTML or Markdown are shown as text.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from genies.data.materialise import EXAMPLE_SCHEMA
from genies.data.predictions import expand_pairs
from genies.errors import GeniesError
from genies.io import atomic_dir
from genies.pipeline.interventions import BASELINE
from genies.pipeline.plan import NO_TRAIN
from genies.results.database import connect
from genies.results.report import intervention_order

log = logging.getLogger(__name__)

PUBLISHED_SUFFIX = "@published"
ASSETS = Path(__file__).with_name("viewer_assets")
#: Changes from zero-shot, per pair (None where either prediction is missing).
FIXED, BROKEN, SAME = 1, -1, 0
#: Examples per page of the viewer (its page-size menu offers more).
PAGE_SIZE = 25

SHIFT_FIELDS = ("shift_id", "source", "target", "target_reference", "label")

_SHIFTS_SQL = """
    SELECT shift_index, shift_id, source, target, target_reference, label
    FROM cells WHERE model = ? GROUP BY ALL ORDER BY shift_index
"""
# The generalisation group of each (model, intervention) on a shift: the cell's train dataset
# and eval = target. Without a cell (a model whose cells do not cover this shift), the group an
# untrained or a source-trained intervention would have.
_PREDICTIONS_SQL = """
    SELECT p.model, p.intervention, p.example_id, p.pair_index, p.prob_preferred, p.correct
    FROM predictions AS p
    LEFT JOIN (SELECT model, intervention, train FROM cells WHERE shift_id = $shift) AS c
        ON c.model = p.model AND c.intervention = p.intervention
    WHERE list_contains($models, p.model) AND p.eval = $target
        AND (p.train = c.train OR (c.train IS NULL AND p.train IN ($source, $no_train)))
"""
_CELLS_SQL = """
    SELECT model, intervention, generalization_accuracy, differential_elicitation
    FROM cells WHERE shift_id = ? AND list_contains(?, model)
"""


def published_models(con, model: str) -> tuple[list[str], list[str]]:
    """(every published model in the database, those the page shows by default)."""
    rows = con.execute(
        "SELECT DISTINCT model FROM predictions WHERE ends_with(model, ?) ORDER BY model",
        [PUBLISHED_SUFFIX],
    ).fetchall()
    present = [r[0] for r in rows]
    own = model + PUBLISHED_SUFFIX
    return present, [own] if own in present else present


def pair_changes(baseline_correct, correct) -> list[int | None]:
    """Per pair: FIXED, BROKEN or SAME against the baseline; None where either is missing.

    Both arguments are sequences of True/False/None (None: no prediction for that pair).
    """
    changes = []
    for base, new in zip(baseline_correct, correct, strict=True):
        if base is None or new is None:
            changes.append(None)
        elif new == base:
            changes.append(SAME)
        else:
            changes.append(FIXED if new else BROKEN)
    return changes


class ExampleStore:
    """The materialised test examples, read once per dataset from the data files."""

    def __init__(self, data_files):
        self.paths = {(Path(f).parent.name, Path(f).stem): Path(f) for f in data_files}
        self.tables: dict[tuple[str, str], pa.Table] = {}

    def examples(self, example_ids: set[str]) -> pa.Table:
        """The examples with these ids, in data order (dataset and split from the id)."""
        splits = sorted({tuple(eid.split("/")[:2]) for eid in example_ids})
        tables = [self._table(ds, split) for ds, split in splits]
        table = pa.concat_tables(tables) if tables else _EMPTY
        wanted = pa.array(sorted(example_ids), pa.string())
        table = table.filter(pc.is_in(table.column("example_id"), value_set=wanted))
        if table.num_rows != len(example_ids):
            found = set(table.column("example_id").to_pylist())
            missing = sorted(example_ids - found)
            raise GeniesError(
                f"predictions name {len(missing)} examples that are not in the data files "
                f"(first: {missing[0]}); results.duckdb is older than results/data: rerun "
                "`snakemake genies_table`"
            )
        return table

    def _table(self, dataset: str, split: str) -> pa.Table:
        key = (dataset, split)
        if key not in self.tables:
            if key not in self.paths:
                raise GeniesError(
                    f"no data file for {dataset}/{split} among the viewer's inputs "
                    f"(expected results/data/{dataset}/{split}.parquet)"
                )
            self.tables[key] = pq.read_table(self.paths[key], columns=_EXAMPLE_COLUMNS)
        return self.tables[key]


_EXAMPLE_COLUMNS = ["example_id", "prompt", "responses", "preferred", "dispreferred"]
_EMPTY = EXAMPLE_SCHEMA.empty_table().select(_EXAMPLE_COLUMNS)


def shift_data(con, store: ExampleStore, model: str, published: list[str], shift: dict) -> dict:
    """Everything the page shows for one shift (JSON-serialisable)."""
    models = [model, *published]
    rows = con.execute(
        _PREDICTIONS_SQL,
        {
            "shift": shift["shift_id"],
            "models": models,
            "target": shift["target"],
            "source": shift["source"],
            "no_train": NO_TRAIN,
        },
    ).fetchall()
    own_ids = {row[2] for row in rows if row[0] == model}
    examples = store.examples(own_ids)
    pairs = expand_pairs(examples)
    keys = zip(pairs["example_id"], pairs["pair_index"].tolist(), strict=True)
    position = {key: i for i, key in enumerate(keys)}
    n = len(position)
    groups: dict[tuple[str, str], dict] = {}
    for m, intervention, eid, k, prob, correct in rows:
        group = groups.setdefault(
            (m, intervention), {"prob": [None] * n, "correct": [None] * n, "unmatched": 0}
        )
        i = position.get((eid, k))
        if i is None:
            group["unmatched"] += 1
        else:
            group["prob"][i] = round(float(prob), 6)
            group["correct"][i] = bool(correct)
    cells = {
        (m, i): (acc, de)
        for m, i, acc, de in con.execute(_CELLS_SQL, [shift["shift_id"], models]).fetchall()
    }
    results = []
    for m in models:
        names = intervention_order(i for mm, i in groups if mm == m)
        baseline = groups.get((m, BASELINE))
        for intervention in names:
            group = groups[(m, intervention)]
            changes = (
                pair_changes(baseline["correct"], group["correct"])
                if baseline is not None and intervention != BASELINE
                else [None] * n
            )
            scored = [c for c in group["correct"] if c is not None]
            accuracy, de = cells.get((m, intervention), (None, None))
            results.append(
                {
                    "model": m,
                    "intervention": intervention,
                    "published": m != model,
                    "pairs": len(scored),
                    "accuracy": sum(scored) / len(scored) if scored else None,
                    "cell_accuracy": accuracy,
                    "differential_elicitation": de,
                    "fixed": changes.count(FIXED),
                    "broken": changes.count(BROKEN),
                    "unmatched_pairs": group["unmatched"],
                    "prob": group["prob"],
                    "correct": [None if c is None else int(c) for c in group["correct"]],
                    "change": changes,
                }
            )
    cols = examples.to_pydict()
    return {
        "shift": {k: shift[k] for k in SHIFT_FIELDS},
        "examples": [
            {
                "id": eid,
                "prompt": prompt,
                "responses": responses,
                "preferred": preferred,
                "dispreferred": dispreferred,
            }
            for eid, prompt, responses, preferred, dispreferred in zip(
                cols["example_id"],
                cols["prompt"],
                cols["responses"],
                cols["preferred"],
                cols["dispreferred"],
                strict=True,
            )
        ],
        "results": results,
    }


def shift_file_name(index: int, shift_id: str) -> str:
    return f"data/{index:03d}_{re.sub(r'[^A-Za-z0-9_.-]', '_', shift_id)}.js"


def script_json(value) -> str:
    """JSON that is safe inside a <script> element and a JavaScript file."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    for raw, escaped in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(raw, escaped)
    return text


def data_script(shift_id: str, data: dict) -> str:
    return (
        "window.GENIES_VIEWER_DATA = window.GENIES_VIEWER_DATA || {};\n"
        f"window.GENIES_VIEWER_DATA[{script_json(shift_id)}] = {script_json(data)};\n"
    )


def index_html(manifest: dict) -> str:
    template = (ASSETS / "index.html").read_text(encoding="utf-8")
    parts = {
        "/*GENIES_VIEWER_CSS*/": (ASSETS / "viewer.css").read_text(encoding="utf-8"),
        "/*GENIES_VIEWER_JS*/": (ASSETS / "viewer.js").read_text(encoding="utf-8"),
        "/*GENIES_VIEWER_MANIFEST*/": script_json(manifest),
    }
    for marker, text in parts.items():
        if template.count(marker) != 1:
            raise RuntimeError(f"{ASSETS / 'index.html'} must contain {marker} once")
        template = template.replace(marker, text)
    return template


def write_viewer(database, data_files, model: str, out_dir) -> dict:
    """Write the viewer of `model` into `out_dir` (replaced atomically); return its sizes."""
    store = ExampleStore(data_files)
    con = connect(database)
    try:
        published, shown = published_models(con, model)
        shifts = [
            dict(zip(("shift_index", *SHIFT_FIELDS), row, strict=True))
            for row in con.execute(_SHIFTS_SQL, [model]).fetchall()
        ]
        if not shifts:
            log.warning("model %s has no cells in %s: the viewer lists no shifts", model, database)
        interventions: set[str] = set()
        entries, sizes = [], {}
        with atomic_dir(out_dir) as tmp:
            (tmp / "data").mkdir()
            for done, shift in enumerate(shifts, 1):
                data = shift_data(con, store, model, published, shift)
                name = shift_file_name(shift["shift_index"], shift["shift_id"])
                text = data_script(shift["shift_id"], data)
                (tmp / name).write_text(text, encoding="utf-8")
                sizes[name] = len(text.encode())
                interventions.update(r["intervention"] for r in data["results"])
                entries.append(
                    data["shift"]
                    | {
                        "file": name,
                        "examples": len(data["examples"]),
                        "pairs": sum(len(e["dispreferred"]) for e in data["examples"]),
                    }
                )
                log.info(
                    "viewer %s: shift %d/%d %s, %d examples, %.1f kB",
                    model,
                    done,
                    len(shifts),
                    shift["shift_id"],
                    len(data["examples"]),
                    sizes[name] / 1e3,
                )
            manifest = {
                "model": model,
                "baseline": BASELINE,
                "published": published,
                "published_shown": shown,
                "interventions": intervention_order(interventions),
                "shifts": entries,
                "page_size": PAGE_SIZE,
            }
            html = index_html(manifest)
            (tmp / "index.html").write_text(html, encoding="utf-8")
            sizes["index.html"] = len(html.encode())
    finally:
        con.close()
    stats = {"shifts": len(shifts), "bytes": sum(sizes.values()), "largest": max(sizes.values())}
    log.info("wrote %s: %s", out_dir, stats)
    return stats
