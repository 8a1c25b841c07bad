"""Benchmark the per-example viewer at the paper preset's size.

Materialises the real test splits of every target of the `all` shift set (56 shifts) capped at
--examples (250), and writes synthetic predictions: for the model and --published published models,
--interventions interventions per shift (zero_shot and random untrained, the others trained on the
source) with random probabilities. The `cells` table holds only what the viewer reads (the cells'
train datasets, accuracies and DE are not computed). Then times `genies.results.viewer.write_viewer`
and prints the files' sizes; with --browser it also opens the page in headless Chromium (Debian's
chromium + chromium-driver, selenium) and times drawing the largest shift at 25 examples per page
and with all examples on one page.

    .venv/bin/python bench/bench_viewer.py [--data ../shared/genies-data] [--examples 250]
        [--interventions 10] [--published 4] [--browser]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from genies.data.materialise import load_split
from genies.data.predictions import expand_pairs, predictions_table
from genies.data.raw import RawData
from genies.data.shifts import load_shifts
from genies.io import write_parquet
from genies.results.viewer import shift_file_name, write_viewer

MODEL = "bench-7b"
UNTRAINED = ("zero_shot", "random")
TRAINED = ("few_shot", "mms", "lat1", "lat2", "cra", "ccs", "lora", "prompt_tuning")


def write_data(raw: RawData, datasets, limit: int, root: Path) -> tuple[list[Path], dict]:
    files, pairs = [], {}
    for dataset in sorted(datasets):
        table = load_split(raw, dataset, "test").slice(0, limit)
        path = root / f"results/data/{dataset}/test.parquet"
        write_parquet(table, path, {"dataset": dataset, "split": "test"})
        files.append(path)
        pairs[dataset] = expand_pairs(table)
    return files, pairs


def synthetic_tables(shifts, pairs, models, interventions, rng) -> tuple[pa.Table, pa.Table]:
    predictions, cells, done = [], [], set()
    for index, shift in enumerate(shifts):
        for model in models:
            for intervention in interventions:
                train = "none" if intervention in UNTRAINED else shift.source
                cells.append(
                    {
                        "model": model,
                        "intervention": intervention,
                        "shift_index": index,
                        "shift_id": shift.shift_id,
                        "source": shift.source,
                        "target": shift.target,
                        "target_reference": shift.target_reference,
                        "label": shift.label,
                        "train": train,
                        "generalization_accuracy": float(rng.random()),
                        "differential_elicitation": float(rng.normal(0, 0.1)),
                    }
                )
                key = (model, intervention, train, shift.target)
                if key in done:
                    continue
                done.add(key)
                group = pairs[shift.target]
                prob = rng.random(len(group["example_id"]))
                predictions.append(
                    predictions_table(*key, group, prob, prob > 0.5 + rng.normal(0, 0.1))
                )
    return pa.concat_tables(predictions), pa.Table.from_pylist(cells)


def browser_seconds(index_html: Path, shift_id: str) -> dict:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    seconds = {}
    try:
        for size in (25, 0):
            driver.get("about:blank")
            start = time.perf_counter()
            driver.get(f"{index_html.as_uri()}#shift={shift_id}&size={size}")
            WebDriverWait(driver, 120).until(
                lambda d: (
                    d.find_element("tag name", "body").get_attribute("data-rendered") or ""
                ).startswith(f"shift={shift_id}")
            )
            shown = len(driver.find_elements("css selector", "article.example"))
            seconds[f"{shown} examples"] = round(time.perf_counter() - start, 2)
    finally:
        driver.quit()
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/genies-data")
    parser.add_argument("--examples", type=int, default=250)
    parser.add_argument("--interventions", type=int, default=10)
    parser.add_argument("--published", type=int, default=4)
    parser.add_argument("--browser", action="store_true")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    raw = RawData(args.data)
    shifts = load_shifts("all", args.data)
    interventions = [*UNTRAINED, *TRAINED][: args.interventions]
    models = [MODEL] + [f"published-{i}@published" for i in range(args.published)]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        data_files, pairs = write_data(raw, {s.target for s in shifts}, args.examples, root)
        predictions, cells = synthetic_tables(shifts, pairs, models, interventions, rng)
        database = root / "results.duckdb"
        con = duckdb.connect(str(database))
        for name, table in (("predictions", predictions), ("cells", cells)):
            con.register("incoming", table)
            con.execute(f"CREATE TABLE {name} AS SELECT * FROM incoming")  # fixed names
            con.unregister("incoming")
        con.close()
        print(
            f"setup: {len(shifts)} shifts, {len(models)} models x {len(interventions)} "
            f"interventions, {predictions.num_rows} prediction rows "
            f"({time.perf_counter() - start:.1f} s)"
        )
        out = root / "viewer" / MODEL
        start = time.perf_counter()
        stats = write_viewer(database, data_files, MODEL, out)
        seconds = time.perf_counter() - start
        sizes = sorted((p.stat().st_size, p.name) for p in out.rglob("*") if p.is_file())
        print(
            f"write_viewer: {seconds:.1f} s; {len(sizes)} files, {stats['bytes'] / 1e6:.1f} MB in "
            f"all, largest {sizes[-1][1]} {sizes[-1][0] / 1e6:.2f} MB, "
            f"index.html {(out / 'index.html').stat().st_size / 1e3:.0f} kB"
        )
        if args.browser:
            largest = max(
                enumerate(shifts),
                key=lambda e: (out / shift_file_name(e[0], e[1].shift_id)).stat().st_size,
            )[1]
            print(
                f"chromium, largest shift {largest.shift_id}:",
                browser_seconds(out / "index.html", largest.shift_id),
            )


if __name__ == "__main__":
    main()
