"""Fetching the GENIES archive: local files and an HTTP server on 127.0.0.1, good and bad."""

from __future__ import annotations

import contextlib
import http.server
import io
import json
import logging
import re
import socket
import subprocess
import tarfile
import threading
from pathlib import Path

import pytest

from genies.data.download import (
    DOWNLOAD_COMMAND,
    UPSTREAM_URL,
    DownloadError,
    check_archive,
    download_archive,
    fetch_data,
    missing_data_message,
    required_files,
)
from genies.data.raw import RawData
from genies.errors import ConfigError
from genies.pipeline.plan import Plan

from .fixtures import workflow_config
from .workflow import planned_jobs, snakemake, snakemake_command, write_config

GENIES = ["distribution_shifts/GENIES.json"]


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    """The loopback server is reached directly, whatever proxy the machine is set up with."""
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")


def make_tar(folder, path, arcname="genies-datasets", skip=()):
    """`folder` as a tar archive under a leading folder, as upstream's may be; `skip`: paths
    relative to `folder` left out."""
    with tarfile.open(path, "w") as tar:
        for file in sorted(p for p in folder.rglob("*") if p.is_file()):
            rel = file.relative_to(folder).as_posix()
            if rel not in skip:
                tar.add(file, arcname=f"{arcname}/{rel}")
    return path


@pytest.fixture
def archive(genies_folder, tmp_path):
    (tmp_path / "upstream").mkdir()
    return make_tar(genies_folder, tmp_path / "upstream" / "genies-datasets.tar")


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves `server.files` (path -> bytes); `server.cut` paths stop half way, `server.
    unsized` ones are sent without Content-Length."""

    def do_GET(self):  # noqa: N802 - http.server's name
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404, "Not Found")
            return
        self.send_response(200)
        if self.path not in self.server.unsized:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if self.path in self.server.cut else body)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serve(files, cut=(), unsized=()):
    """An HTTP server on 127.0.0.1 in a thread; yields its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.files, server.cut, server.unsized = files, set(cut), set(unsized)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_nothing_left(dest):
    """No archive and no temporary file next to where it would go."""
    assert not dest.exists()
    assert not list(dest.parent.glob(f".{dest.name}*"))


# ------------------------------------------------------------------------------ good archives


def test_local_path_and_file_url_are_copied_and_checked(archive, tmp_path, caplog):
    for i, url in enumerate([str(archive), archive.as_uri()]):
        dest = tmp_path / f"resources{i}" / "genies-datasets.tar"
        with caplog.at_level(logging.INFO):
            assert download_archive(url, dest, GENIES) == dest
        assert dest.read_bytes() == archive.read_bytes()
        assert RawData(dest).datasets() == ["ref_d", "src_a", "tgt_b", "tgt_c"]
        assert not list(dest.parent.glob(".*"))
    assert "saved " in caplog.text and "4 datasets" in caplog.text


def test_download_over_http_streams_with_progress(archive, tmp_path, caplog):
    body = archive.read_bytes()
    with serve({"/d/genies-datasets.tar": body}) as base:
        dest = tmp_path / "resources" / "genies-datasets.tar"
        with caplog.at_level(logging.INFO):
            fetch_data(tmp_path / "missing", f"{base}/d/genies-datasets.tar", dest, "genies")
    assert dest.read_bytes() == body
    assert f"downloading {base}/d/genies-datasets.tar to {dest}" in caplog.text
    assert "download genies-datasets.tar: 1/1 MiB" in caplog.text  # the last progress line


def test_download_without_content_length(archive, tmp_path, caplog):
    with serve({"/a.tar": archive.read_bytes()}, unsized={"/a.tar"}) as base:
        dest = tmp_path / "resources" / "genies-datasets.tar"
        with caplog.at_level(logging.INFO):
            download_archive(f"{base}/a.tar", dest, GENIES)
    assert dest.read_bytes() == archive.read_bytes()
    assert "size unknown" in caplog.text


def test_archive_without_leading_folder(genies_folder, tmp_path):
    flat = tmp_path / "flat.tar"
    with tarfile.open(flat, "w") as tar:
        for name in ("distributions", "distribution_shifts"):
            tar.add(genies_folder / name, arcname=name)
    assert check_archive(flat, GENIES) == ["ref_d", "src_a", "tgt_b", "tgt_c"]


# ------------------------------------------------------------------------------ bad archives


def test_truncated_download_leaves_nothing(archive, tmp_path):
    with serve({"/genies-datasets.tar": archive.read_bytes()}, cut={"/genies-datasets.tar"}) as b:
        dest = tmp_path / "resources" / "genies-datasets.tar"
        with pytest.raises(DownloadError, match=r"stopped after [\d,]+ of [\d,]+ bytes") as err:
            download_archive(f"{b}/genies-datasets.tar", dest, GENIES)
    assert f"{b}/genies-datasets.tar" in str(err.value) and "set data_dir" in str(err.value)
    assert_nothing_left(dest)


def test_truncated_file_is_rejected(archive, tmp_path):
    body = archive.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(body[: len(body) // 2])
    dest = tmp_path / "resources" / "genies-datasets.tar"
    with pytest.raises(DownloadError, match="damaged or truncated tar archive") as err:
        download_archive(str(cut), dest, GENIES)
    assert str(cut) in str(err.value)
    assert_nothing_left(dest)


def test_not_a_tar_archive_names_url_and_start(tmp_path):
    page = b"<html><body>AccessDenied</body></html>"
    with serve({"/genies-datasets.tar": page}) as base:
        dest = tmp_path / "resources" / "genies-datasets.tar"
        with pytest.raises(DownloadError) as err:
            download_archive(f"{base}/genies-datasets.tar", dest, GENIES)
    text = str(err.value)
    assert f"{base}/genies-datasets.tar is not a tar archive" in text and "AccessDenied" in text
    assert "download the archive by hand" in text
    assert_nothing_left(dest)


def test_wrong_layout_is_rejected(genies_folder, tmp_path):
    other = tmp_path / "other.tar"
    with tarfile.open(other, "w") as tar:
        info = tarfile.TarInfo("data/train.json")
        payload = json.dumps([]).encode()
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    dest = tmp_path / "resources" / "genies-datasets.tar"
    with pytest.raises(DownloadError, match="has no distributions/<dataset>/train.json"):
        download_archive(str(other), dest)
    assert_nothing_left(dest)


def test_missing_shift_file_is_rejected(genies_folder, tmp_path):
    no_shifts = make_tar(
        genies_folder, tmp_path / "no-shifts.tar", skip={"distribution_shifts/GENIES.json"}
    )
    dest = tmp_path / "resources" / "genies-datasets.tar"
    with pytest.raises(DownloadError) as err:
        download_archive(str(no_shifts), dest, required_files("genies"))
    assert "holds 4 datasets but not distribution_shifts/GENIES.json" in str(err.value)
    assert_nothing_left(dest)
    # A config with its own shift file needs none of the archive's.
    assert required_files("my_shifts.json") == []
    download_archive(str(no_shifts), dest, required_files("my_shifts.json"))
    assert dest.is_file()


def test_unreachable_url_says_offline_and_what_to_do(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/genies-datasets.tar"
    dest = tmp_path / "resources" / "genies-datasets.tar"
    with pytest.raises(DownloadError) as err:
        fetch_data(tmp_path / "missing", url, dest, timeout=5)
    text = str(err.value)
    assert f"cannot reach {url}" in text and "offline" in text
    assert "download the archive by hand" in text and "set data_dir" in text
    assert_nothing_left(dest)


def test_http_error_names_status(tmp_path):
    with serve({}) as base:
        with pytest.raises(DownloadError, match="answered HTTP 404"):
            download_archive(f"{base}/moved.tar", tmp_path / "x.tar")


def test_missing_local_file_and_unknown_scheme(tmp_path):
    with pytest.raises(DownloadError, match="cannot read .*nowhere.tar"):
        download_archive(str(tmp_path / "nowhere.tar"), tmp_path / "x.tar")
    with pytest.raises(DownloadError, match="unsupported scheme 'ftp'"):
        download_archive("ftp://example.org/genies-datasets.tar", tmp_path / "x.tar")


# ------------------------------------------------------------------------------ fetch_data


def test_existing_data_dir_or_download_is_left_alone(genies_folder, tmp_path, caplog):
    never = "http://127.0.0.1:9/never-asked.tar"
    with caplog.at_level(logging.INFO):
        assert fetch_data(genies_folder, never, tmp_path / "d.tar") == genies_folder
        assert fetch_data(tmp_path / "missing", never, genies_folder) == genies_folder
    assert "nothing to download" in caplog.text


def test_fetch_needs_a_url(tmp_path):
    with pytest.raises(DownloadError, match="set data_url") as err:
        fetch_data(tmp_path / "genies-data", None, tmp_path / "genies-datasets.tar")
    assert UPSTREAM_URL in str(err.value)


def test_plan_without_data_is_empty_and_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no resources/genies-datasets.tar here
    data_dir = tmp_path / "genies-data"
    plan = Plan(workflow_config(data_dir, data_url=UPSTREAM_URL))
    assert plan.data_missing
    assert plan.available_datasets == [] and plan.shifts == [] and plan.shift_sets == {}
    with pytest.raises(ConfigError) as err:
        plan.require_data()
    assert str(err.value) == missing_data_message(data_dir, UPSTREAM_URL)
    assert f"Run `{DOWNLOAD_COMMAND}`" in str(err.value) and UPSTREAM_URL in str(err.value)


def test_plan_reads_the_downloaded_archive_when_data_dir_is_missing(archive, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "resources").mkdir()
    (tmp_path / "resources/genies-datasets.tar").write_bytes(archive.read_bytes())
    plan = Plan(workflow_config(tmp_path / "genies-data", data_url=UPSTREAM_URL))
    assert plan.data_location == Path("resources/genies-datasets.tar")
    assert plan.available_datasets == ["ref_d", "src_a", "tgt_b", "tgt_c"]


def test_plan_with_data_requires_nothing(genies_folder):
    plan = Plan(workflow_config(genies_folder))
    assert not plan.data_missing and plan.require_data() == []
    assert plan.available_datasets == ["ref_d", "src_a", "tgt_b", "tgt_c"]


# ------------------------------------------------------------------------------ the workflow


@pytest.mark.e2e
def test_workflow_without_data_points_to_download_data(archive, tmp_path):
    """Without data every target stops with the advice; the command it prints, run as printed
    (only pointed at this scratch workflow), fetches the archive over HTTP into resources/,
    after which the workflow plans its jobs."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    body = archive.read_bytes()
    with serve({"/genies-datasets.tar": body}) as base:
        # data_dir as in config.yaml: ../shared/genies-data, which a clone does not have
        config = workflow_config("../shared/genies-data", data_url=f"{base}/genies-datasets.tar")
        write_config(workdir, config)
        proc = snakemake(workdir, "--dry-run", "genies_table", check=False)
        assert proc.returncode != 0
        advice = re.search(r"Run `snakemake ([^`]+)`", proc.stdout + proc.stderr)
        assert advice, proc.stdout + proc.stderr
        proc = subprocess.run(
            snakemake_command(workdir, *advice.group(1).split()),
            capture_output=True,
            text=True,
            timeout=600,
        )
        console = proc.stdout + proc.stderr
        assert proc.returncode == 0, console
    assert (workdir / "resources/genies-datasets.tar").read_bytes() == body
    assert "saved resources/genies-datasets.tar: 4 datasets" in console  # shown, not only logged
    jobs = planned_jobs(workdir)
    assert jobs["materialise"] == 8 and jobs["shift_registry"] == 1
