"""Which GENIES examples contain special-token strings, per dataset, and what the checked JSON
reader costs.

For every dataset of the data folder (or archive), both splits are read with the workflow's own
reader (`genies.data.raw.RawData.read_json`: UTF-8, no key twice in one object) and every
example's prompt and responses are searched for the special-token strings materialisation warns
about (`genies.data.special_tokens`). Prints one row per dataset that has any, the examples and
the strings, then the totals; docs/fidelity.md ("Special-token strings in the data") holds the
table, and `tests/test_special_tokens.py` (marked published) checks it against this count.

    .venv/bin/python bench/special_tokens_in_data.py [--data-dir ../shared/genies-data]

`--timing` also times reading every file with the checked reader and with a plain
`json.loads` (best of 3 each), the cost of looking for duplicate keys.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

from genies.data.raw import SPLITS, RawData, split_path
from genies.data.special_tokens import special_tokens_in

REPO = Path(__file__).resolve().parent.parent


def count(data_dir) -> dict[str, dict]:
    """Dataset -> {"examples", "with_special", "strings": Counter of examples per string},
    for the datasets with at least one such example, both splits together."""
    raw = RawData(data_dir)
    out = {}
    for dataset in raw.datasets():
        examples, hits, strings = 0, 0, Counter()
        for split in SPLITS:
            for record in raw.read_json(split_path(dataset, split)):
                examples += 1
                found = special_tokens_in([record["prompt"], *record["responses"]])
                hits += bool(found)
                strings.update(found)
        if hits:
            out[dataset] = {"examples": examples, "with_special": hits, "strings": strings}
    return out


def table(counts: dict[str, dict]) -> list[str]:
    """The Markdown rows of docs/fidelity.md's table."""
    rows = [
        "| dataset | examples (train + test) | with a special-token string | strings (examples) |",
        "|---|---|---|---|",
    ]
    for dataset, c in sorted(counts.items()):
        strings = ", ".join(
            f"`{s}` {n}" for s, n in sorted(c["strings"].items(), key=lambda x: (-x[1], x[0]))
        )
        rows.append(f"| {dataset} | {c['examples']} | {c['with_special']} | {strings} |")
    return rows


def timing(data_dir) -> None:
    raw = RawData(data_dir)
    rels = [split_path(d, s) for d in raw.datasets() for s in SPLITS]
    blobs = [raw.read_bytes(rel) for rel in rels]
    size = sum(map(len, blobs)) / 1e6

    def best(read) -> float:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            for rel, blob in zip(rels, blobs, strict=True):
                read(rel, blob)
            times.append(time.perf_counter() - start)
        return min(times)

    from genies.io import parse_json

    checked = best(lambda rel, blob: parse_json(blob, rel))
    plain = best(lambda rel, blob: json.loads(blob))
    print(f"reading {len(rels)} files, {size:.0f} MB: checked {checked:.2f} s, ", end="")
    print(f"json.loads {plain:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "genies-data"))
    parser.add_argument("--timing", action="store_true")
    args = parser.parse_args()
    counts = count(args.data_dir)
    print("\n".join(table(counts)))
    total = sum(c["with_special"] for c in counts.values())
    print(f"\n{total} examples in {len(counts)} datasets contain a special-token string")
    if args.timing:
        timing(args.data_dir)


if __name__ == "__main__":
    main()
