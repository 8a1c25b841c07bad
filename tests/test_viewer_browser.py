"""The per-example viewer in a real headless Chromium (opt-in: GENIES_BROWSER_TEST=1).

The page is opened from disk (file://), a filter is applied with the page's own controls, and
what it shows is checked against DuckDB queries on the same database. With the variable set, a
browser that cannot start FAILS the test (it never skips), with a message that says what to
install and no traceback: .ci/run installs Debian's `chromium` and `chromium-driver` and sets
the variable. A screenshot is saved in the test's tmp folder and
its path printed (`pytest -s` shows it).
"""

from __future__ import annotations

import os
import shutil
from urllib.parse import parse_qs

import pytest

from genies.results.viewer import write_viewer

from .test_viewer import HOSTILE_PROMPT, HOSTILE_RESPONSE, MODEL, build_fixture, query

pytestmark = pytest.mark.browser
ENABLED = os.environ.get("GENIES_BROWSER_TEST") == "1"
TGT_B, TGT_C = "src_a__tgt_b", "src_a__tgt_c"


def fail(reason: str):
    """Fail with what to do, without a traceback (the cause is the machine, not the code)."""
    pytest.fail(f"GENIES_BROWSER_TEST=1, but {reason}; or unset GENIES_BROWSER_TEST", pytrace=False)


def start_chromium():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as err:
        fail(f"selenium is missing ({err}): run `bash setup.sh` (the `browser` extra)")
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not binary or not driver:
        missing = [
            name for name, path in (("chromium", binary), ("chromedriver", driver)) if not path
        ]
        fail(
            f"{' and '.join(missing)} not found on PATH: install Chromium and its driver, on "
            "Debian or Ubuntu as root `apt-get install chromium chromium-driver`"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        "--window-size=1400,1800",
        # Nothing may come from the network: every host name fails to resolve.
        "--host-resolver-rules=MAP * ~NOTFOUND",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        return webdriver.Chrome(options=options, service=Service(driver))
    except Exception as err:  # selenium raises several types; any of them is a failure here
        fail(f"Chromium did not start: {err}")


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    if not ENABLED:
        pytest.skip("set GENIES_BROWSER_TEST=1 to test the viewer in headless Chromium")
    root = tmp_path_factory.mktemp("viewer-browser")
    database, data_files = build_fixture(root)
    out = root / "results/viewer" / MODEL
    write_viewer(database, data_files, MODEL, out)
    driver = start_chromium()
    try:
        yield driver, (out / "index.html").as_uri(), database, root
    finally:
        driver.quit()


def open_page(driver, url: str):
    """Load the page afresh (a URL that differs only in its fragment would not reload it)."""
    driver.get("about:blank")
    driver.get(url)


def wait_rendered(driver, **expected):
    """Wait until the page has drawn the state whose URL-fragment values include `expected`."""
    from selenium.webdriver.support.ui import WebDriverWait

    def drawn(d):
        rendered = d.find_element("tag name", "body").get_attribute("data-rendered")
        if rendered is None or rendered != d.execute_script("return location.hash.slice(1)"):
            return False
        values = {k: v[0] for k, v in parse_qs(rendered, keep_blank_values=True).items()}
        return all(values.get(k) == v for k, v in expected.items())

    WebDriverWait(driver, 20).until(drawn)


def shown_ids(driver) -> list[str]:
    articles = driver.find_elements("css selector", "article.example")
    return [a.get_attribute("data-example-id") for a in articles]


def choose(driver, select_id: str, value: str):
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element("id", select_id)).select_by_value(value)


def severe_console_entries(driver) -> list:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_filter_intervention_and_incorrect_matches_duckdb(page):
    driver, url, database, root = page
    open_page(driver, url)
    wait_rendered(driver, shift=TGT_B)
    assert driver.find_element("id", "model-name").text == MODEL
    assert len(shown_ids(driver)) == 5
    assert driver.find_element("id", "status").text == ""

    choose(driver, "intervention", "mms")
    choose(driver, "outcome", "incorrect")
    wait_rendered(driver, shift=TGT_B, intervention="mms", outcome="incorrect", judge=MODEL)

    # The examples with at least one mms pair wrong, mms trained on the source (the shift's
    # generalisation group), in data order.
    expected = [
        eid
        for (eid,) in query(
            database,
            "select example_id from predictions where model = ? and intervention = 'mms'"
            " and train = 'src_a' and eval = 'tgt_b' group by example_id"
            " having bool_or(not correct) order by example_id",
            [MODEL],
        )
    ]
    assert 0 < len(expected) < 5  # the filter removes some examples and keeps some
    assert shown_ids(driver) == expected
    count = driver.find_element("id", "match-count")
    assert count.get_attribute("data-count") == str(len(expected))
    assert f"of {len(expected)} (of 5 evaluated)" in count.text

    # Every probability shown in the mms rows and the zero-shot reference rows, with its
    # correct / incorrect colour and its fixed / broken mark.
    truth = {
        (model, intervention, eid, k): (p, c)
        for model, intervention, eid, k, p, c in query(
            database,
            "select model, intervention, example_id, pair_index, prob_preferred, correct"
            " from predictions where eval = 'tgt_b' and model in (?, ?)"
            " and ((intervention = 'mms' and train = 'src_a')"
            " or (intervention = 'zero_shot' and train = 'none'))",
            [MODEL, f"{MODEL}@published"],
        )
    }
    checked = 0
    for article in driver.find_elements("css selector", "article.example"):
        eid = article.get_attribute("data-example-id")
        rows = article.find_elements("css selector", "table.probs tbody tr")
        shown_rows = [
            (r.get_attribute("data-model"), r.get_attribute("data-intervention")) for r in rows
        ]
        assert shown_rows == [
            (MODEL, "zero_shot"),
            (MODEL, "mms"),
            (f"{MODEL}@published", "zero_shot"),
            (f"{MODEL}@published", "mms"),
        ]
        for row, (model, intervention) in zip(rows, shown_rows, strict=True):
            for cell in row.find_elements("css selector", "td.prob"):
                k = int(cell.get_attribute("data-pair"))
                p, c = truth[(model, intervention, eid, k)]
                classes = cell.get_attribute("class").split()
                assert cell.text.startswith(f"{p:.3f}")
                assert float(cell.get_attribute("data-prob")) == pytest.approx(p, abs=1e-6)
                assert ("correct" if c else "incorrect") in classes
                base = truth[(model, "zero_shot", eid, k)][1]
                mark = (
                    "" if intervention == "zero_shot" or base == c else ("fixed" if c else "broken")
                )
                assert ("fixed" in cell.text, "broken" in cell.text) == (
                    mark == "fixed",
                    mark == "broken",
                )
                checked += 1
    assert checked >= 4 * len(expected)

    shot = root / "viewer-mms-incorrect.png"
    driver.save_screenshot(str(shot))
    print(f"screenshot: {shot}")
    assert shot.stat().st_size > 10_000
    assert severe_console_entries(driver) == []


def test_markup_in_prompts_is_shown_as_text(page):
    driver, url, _, root = page
    open_page(driver, url + f"#shift={TGT_B}")
    wait_rendered(driver, shift=TGT_B, outcome="all")
    article = driver.find_element("css selector", 'article[data-example-id="tgt_b/test/00000"]')
    prompt = article.find_element("css selector", "pre.prompt")
    assert prompt.get_property("textContent") == HOSTILE_PROMPT
    response = article.find_elements("css selector", "pre.response")[1]
    assert response.get_property("textContent") == HOSTILE_RESPONSE
    # The markup stayed text: no element was made from it and its script did not run.
    assert article.find_elements("css selector", "pre b, pre img, pre script") == []
    assert driver.title == f"GENIES examples: {MODEL}"
    # Nothing but the page's own files was loaded.
    urls = driver.execute_script(
        "return Array.from(document.querySelectorAll('[src], [href]'), e => e.src || e.href)"
    )
    assert urls and all(u.startswith("file://") for u in urls), urls
    driver.save_screenshot(str(root / "viewer-all.png"))


def test_shift_change_pages_and_published_choice(page):
    driver, url, database, _ = page
    open_page(driver, url + f"#shift={TGT_B}&size=2")
    wait_rendered(driver, shift=TGT_B, size="2")
    ids = query(
        database,
        "select distinct example_id from predictions where model = ? and eval = 'tgt_b'"
        " order by example_id",
        [MODEL],
    )
    ids = [i for (i,) in ids]
    assert shown_ids(driver) == ids[:2]
    driver.find_element("id", "next").click()
    wait_rendered(driver, page="1")
    assert shown_ids(driver) == ids[2:4]

    # Another shift: loaded from its own data file; lora scored only 3 of its 4 examples.
    choose(driver, "page-size", "25")
    choose(driver, "shift", TGT_C)
    wait_rendered(driver, shift=TGT_C, page="0")
    assert len(shown_ids(driver)) == 4
    scripts = driver.execute_script(
        "return Array.from(document.scripts).map(s => s.getAttribute('src')).filter(s => s)"
    )
    assert scripts == ["data/000_src_a__tgt_b.js", "data/001_src_a__tgt_c.js"]
    missing = driver.find_elements("css selector", 'tr[data-intervention="lora"] td.prob.missing')
    assert len(missing) == 1

    # Published models: the model's own is shown by default, the other one on request.
    choose(driver, "shift", TGT_B)
    wait_rendered(driver, shift=TGT_B)
    models = {
        r.get_attribute("data-model")
        for r in driver.find_elements("css selector", "table.probs tbody tr")
    }
    assert models == {MODEL, f"{MODEL}@published"}
    driver.find_element("css selector", '#published input[value="other@published"]').click()
    wait_rendered(driver, published=f"{MODEL}@published,other@published")
    models = {
        r.get_attribute("data-model")
        for r in driver.find_elements("css selector", "table.probs tbody tr")
    }
    assert models == {MODEL, f"{MODEL}@published", "other@published"}
    assert severe_console_entries(driver) == []
