"""Prediction files checked against their evaluation splits before any number is counted.

A prediction file is made for one or more (model, intervention, train, eval) groups (a trained
reward model's job writes every eval dataset it predicts into one file), and each group must
hold exactly the evaluation pairs of its eval dataset's test split: the pairs
`genies.data.predictions.expand_pairs` makes of `results/data/<eval>/test.parquet`, its first
`caps.test_examples` examples. So none missing, none twice, none the split does not have, each
with the split's response indices, and a probability in [0, 1] for every pair the context
policy did not skip (a skipped pair has none and is never correct: it is counted, not scored).

The aggregation and the single-cell target read their prediction files through `read_checked`
only: a file that breaks any of this stops them, naming the file, what is wrong (counts and a
few of the pairs), the rule that made it and how to rebuild it. Without the check, a file
holding half its pairs changes DE, and duplicated pairs count twice.

The published runs (`genies.results.published`) cover their own pair sets; they are checked
against what the import recorded of each run (`genies.results.published.check_imported`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

import duckdb
import numpy as np
import pyarrow as pa

from genies.data.materialise import read_examples, split_of
from genies.data.predictions import expand_pairs, read_prediction_files
from genies.errors import GeniesError

#: Pairs named per problem; the count says how many there are.
SHOWN = 3
#: Files listed in one error; the count says how many there are.
SHOWN_FILES = 20


@dataclasses.dataclass(frozen=True)
class PredictionFile:
    """A prediction file, the rule that writes it and the groups it must hold."""

    path: str
    rule: str
    groups: tuple[tuple[str, str, str, str], ...]

    @classmethod
    def of(cls, entry: Mapping) -> PredictionFile:
        """From an entry of `genies.pipeline.plan.Plan.expectations`."""
        return cls(str(entry["path"]), entry["rule"], tuple(tuple(g) for g in entry["groups"]))


class PredictionFileError(GeniesError):
    """Prediction files that do not hold exactly their splits' pairs: path -> (rule, problems)."""

    def __init__(self, problems: Mapping[str, tuple[str, list[str]]], what: str):
        self.problems = dict(problems)
        lines = [f"{len(problems)} prediction file(s) {what}; no number is computed from them:"]
        for path, (rule, found) in list(problems.items())[:SHOWN_FILES]:
            lines.append(f"  {path} (made by rule {rule}):")
            lines += [f"    {problem}" for problem in found]
        if len(problems) > SHOWN_FILES:
            lines.append(f"  ... and {len(problems) - SHOWN_FILES} more files")
        paths = " ".join(f"'{p}'" for p in problems)
        rules = " ".join(sorted({rule for rule, _ in problems.values()}))
        lines.append(
            f"Rebuild them: delete them (rm {paths}) and run the same snakemake command again, "
            f"which remakes them with their rules; or rerun every job of their rules with "
            f"--forcerun {rules}."
        )
        super().__init__("\n".join(lines))


def split_pairs(data_files, limit: int | None) -> pa.Table:
    """The evaluation pairs of every test split among `data_files`, its first `limit` examples."""
    tables = []
    for path in data_files:
        dataset, split = split_of(path)
        if split != "test":
            continue
        pairs = expand_pairs(read_examples(path, limit))
        n = len(pairs["example_id"])
        tables.append(
            pa.table(
                {
                    "eval": pa.array([dataset] * n, pa.string()),
                    "example_id": pa.array(pairs["example_id"], pa.string()),
                    "pair_index": pairs["pair_index"],
                    "preferred_response": pairs["preferred_response"],
                    "dispreferred_response": pairs["dispreferred_response"],
                }
            )
        )
    if not tables:
        empty = {"eval": pa.string(), "example_id": pa.string(), "pair_index": pa.int16()}
        empty |= {"preferred_response": pa.int8(), "dispreferred_response": pa.int8()}
        return pa.schema(empty).empty_table()
    return pa.concat_tables(tables)


def read_checked(files: Iterable[PredictionFile], data_files, limit: int | None) -> pa.Table:
    """The rows of every prediction file (`genies.data.predictions.read_prediction_files`),
    once each file is known to hold exactly its groups' pairs of the test splits among
    `data_files` (first `limit` examples); else PredictionFileError."""
    files = list(files)
    table, counts = read_prediction_files([f.path for f in files])
    pairs = split_pairs(data_files, limit)
    have = set(pairs.column("eval").to_pylist())
    unknown = sorted({g[3] for f in files for g in f.groups} - have)
    if unknown:
        raise GeniesError(
            f"no test split for {', '.join(unknown)} among the data files "
            f"({', '.join(map(str, data_files))}): the prediction files evaluated on them "
            "cannot be checked"
        )
    problems = check_pairs(table, counts, files, pairs)
    if problems:
        examples = "every example" if limit is None else f"the first {limit} examples"
        raise PredictionFileError(
            problems, f"do not hold exactly the pairs of their test splits ({examples} of each)"
        )
    return table


def check_pairs(
    table: pa.Table, counts: np.ndarray, files: list[PredictionFile], pairs: pa.Table
) -> dict[str, tuple[str, list[str]]]:
    """path -> (rule, problems) of every file whose rows (`counts[i]` rows of file i, in
    order) are not exactly its groups' pairs of `pairs`, or whose probabilities are wrong."""
    rows = table.select(
        [
            "model",
            "intervention",
            "train",
            "eval",
            "example_id",
            "pair_index",
            "preferred_response",
            "dispreferred_response",
            "prob_preferred",
            "correct",
            "skipped",
        ]
    )
    rows = rows.append_column(
        "file", pa.array(np.repeat(np.arange(len(files)), counts), pa.int32())
    )
    rows = rows.append_column("row", pa.array(np.arange(rows.num_rows), pa.int64()))
    keys = [(i, *g) for i, f in enumerate(files) for g in f.groups]
    groups = pa.table(
        {
            name: pa.array([k[j] for k in keys], pa.int32() if j == 0 else pa.string())
            for j, name in enumerate(("file", "model", "intervention", "train", "eval"))
        }
    ).append_column("gid", pa.array(np.arange(len(keys)), pa.int32()))
    pairs = pairs.append_column("pid", pa.array(np.arange(pairs.num_rows), pa.int64()))
    found: dict[int, list[str]] = {}
    con = duckdb.connect()
    try:
        con.register("rows_", rows)
        con.register("groups_", groups)
        con.register("pairs_", pairs)
        con.execute(_SETUP)
        for sql, describe in _CHECKS:
            for file, n, total, shown in con.execute(sql).fetchall():
                found.setdefault(file, []).append(describe(n, total, _listing(shown, n)))
    finally:
        con.close()
    return {files[i].path: (files[i].rule, found[i]) for i in sorted(found)}


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _listing(shown: list[str], n: int) -> str:
    return "(" + ", ".join(shown) + (", ..." if n > len(shown) else "") + ")"


_PAIR = "example_id || ' pair ' || pair_index"
# Every row gets the number of the group it belongs to (gid) and of the split's pair it is
# (pid), NULL where there is none; the checks then compare numbers, not strings.
_SETUP = """
    CREATE TEMP TABLE r AS
        SELECT r.row, r.file, g.gid, p.pid, r.example_id, r.pair_index,
               r.preferred_response IS DISTINCT FROM p.preferred_response
                   OR r.dispreferred_response IS DISTINCT FROM p.dispreferred_response
                   AS other_responses
        FROM rows_ r
        LEFT JOIN groups_ g USING (file, model, intervention, train, eval)
        LEFT JOIN pairs_ p
            ON p.eval = r.eval AND p.example_id = r.example_id AND p.pair_index = r.pair_index;
    CREATE TEMP TABLE seen AS
        SELECT gid, pid, count(*) AS n FROM r WHERE gid IS NOT NULL AND pid IS NOT NULL
        GROUP BY ALL;
    CREATE TEMP TABLE wanted AS
        SELECT g.file, g.gid, g.eval, p.pairs
        FROM groups_ g JOIN (SELECT eval, count(*) AS pairs FROM pairs_ GROUP BY eval) p
        USING (eval);
    CREATE TEMP TABLE totals AS SELECT file, sum(pairs) AS total FROM wanted GROUP BY file;
"""
# Each check: (file, count, expected pairs of the file, a few examples).
_CHECKS = (
    (
        # Every (gid, pid) of `seen` is a pair of its group's split: a group with fewer misses
        # pairs, and only those groups are searched for them.
        f"""WITH short AS (
                SELECT file, gid, eval FROM wanted
                WHERE pairs > (SELECT count(*) FROM seen s WHERE s.gid = wanted.gid)
            ), missing AS (
                SELECT file, gid, pid FROM short JOIN pairs_ USING (eval)
                ANTI JOIN seen USING (gid, pid)
            )
            SELECT file, count(*), any_value(total), list({_PAIR} ORDER BY gid, pid)[1:{SHOWN}]
            FROM missing JOIN pairs_ USING (pid) JOIN totals USING (file)
            GROUP BY file""",
        lambda n, total, shown: f"{n} of {total} pairs missing {shown}",
    ),
    (
        f"""SELECT file, count(*), sum(n) - count(*), list({_PAIR} ORDER BY gid, pid)[1:{SHOWN}]
            FROM seen JOIN groups_ USING (gid) JOIN pairs_ USING (pid)
            WHERE n > 1 GROUP BY file""",
        lambda n, extra, shown: (
            f"{_count(n, 'pair')} more than once ({_count(extra, 'extra row')}) {shown}"
        ),
    ),
    (
        f"""SELECT file, count(*), NULL,
                   list(DISTINCT format('({{}}, {{}}, {{}}, {{}})', model, intervention, train,
                                        eval))[1:{SHOWN}]
            FROM rows_ SEMI JOIN (SELECT row FROM r WHERE gid IS NULL) USING (row)
            GROUP BY file""",
        lambda n, _, shown: (
            f"{_count(n, 'row')} of (model, intervention, train, eval) groups it is not for {shown}"
        ),
    ),
    (
        f"""SELECT file, count(*), NULL,
                   list(coalesce(example_id, 'NULL') || ' pair ' || coalesce(pair_index::VARCHAR,
                        'NULL') ORDER BY row)[1:{SHOWN}]
            FROM r WHERE gid IS NOT NULL AND pid IS NULL
            GROUP BY file""",
        lambda n, _, shown: (
            f"{_count(n, 'row')} of pairs that its test split does not have {shown}"
        ),
    ),
    (
        f"""SELECT file, count(*), NULL, list({_PAIR} ORDER BY row)[1:{SHOWN}]
            FROM r WHERE gid IS NOT NULL AND pid IS NOT NULL AND other_responses
            GROUP BY file""",
        lambda n, _, shown: (
            f"{_count(n, 'pair')} whose response indices differ from the split's "
            f"(predicted from other data?) {shown}"
        ),
    ),
    (
        f"""SELECT file, count(*), NULL,
                   list({_PAIR} || ': ' || coalesce(prob_preferred::VARCHAR, 'NULL')
                        ORDER BY row)[1:{SHOWN}]
            FROM rows_
            WHERE NOT coalesce(skipped, false) AND (
                prob_preferred IS NULL OR isnan(prob_preferred) OR isinf(prob_preferred)
                OR prob_preferred < 0 OR prob_preferred > 1 OR correct IS NULL)
            GROUP BY file""",
        lambda n, _, shown: (
            f"{_count(n, 'pair')} whose probability is not in [0, 1], or without `correct` {shown}"
        ),
    ),
    (
        f"""SELECT file, count(*), NULL, list({_PAIR} ORDER BY row)[1:{SHOWN}]
            FROM rows_
            WHERE coalesce(skipped, false)
              AND (coalesce(correct, true) OR NOT coalesce(isnan(prob_preferred), true))
            GROUP BY file""",
        lambda n, _, shown: (
            f"{_count(n, 'skipped pair')} with a probability or marked correct {shown}"
        ),
    ),
)
