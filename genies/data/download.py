"""Fetch the upstream GENIES data archive (`genies-datasets.tar`) into resources/.

The GENIES repository's README links the archive at UPSTREAM_URL (the repository's own
`download_data.py` fetches the same file; this module was written without network access, so
that URL was never fetched from here, only local files and a loopback server).

`snakemake download_data` calls `fetch_data`: when `data_dir` is missing and `data_url` is set,
the archive is streamed to a temporary file in resources/ with progress lines, its size and
layout are checked, and only then is it renamed into place (resources/genies-datasets.tar,
which the workflow reads whenever `data_dir` is missing). The archive is kept as it is,
never unpacked: `genies.data.raw.RawData` reads the members the workflow needs straight from it.
"""

from __future__ import annotations

import http.client
import logging
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from genies.data.raw import RawData
from genies.data.shifts import NAMED_SETS
from genies.errors import GeniesError
from genies.io import atomic_path
from genies.progress import ProgressLog

log = logging.getLogger(__name__)

UPSTREAM_URL = "https://genies-data.s3.us-east-2.amazonaws.com/genies-datasets.tar"
SCHEMES = ("http", "https", "file")
MIB = 1 << 20
CHUNK_BYTES = MIB
# The command a message tells to run (from the repository root, with the workflow's Snakemake;
# README "Getting the data" runs it as `.venv/bin/snakemake --cores 1 download_data`). Snakemake
# needs --cores for a local run, even of a rule that runs no job of its own.
DOWNLOAD_COMMAND = "snakemake --cores 1 download_data"
DO_BY_HAND = (
    "download the archive by hand (a browser or `curl -LO <url>` on any machine) and set "
    "data_dir in config.yaml to its path"
)


class DownloadError(GeniesError):
    """The data archive could not be fetched, or is not the GENIES data."""


def missing_data_message(data_dir, data_url, downloaded="resources/genies-datasets.tar") -> str:
    """What to do when there is no data (the workflow's first error for a newcomer)."""
    if data_url:
        return (
            f"data_dir {str(data_dir)!r} does not exist. Run `{DOWNLOAD_COMMAND}` to fetch "
            f"the GENIES data from {data_url} to {downloaded} (used when data_dir is missing), "
            "or set data_dir in config.yaml to your copy (the folder holding distributions/, "
            "or genies-datasets.tar)."
        )
    return (
        f"data_dir {str(data_dir)!r} does not exist. Set data_dir in config.yaml to your copy of "
        "the GENIES data (the folder holding distributions/, or genies-datasets.tar), or set "
        f"data_url (the upstream archive is {UPSTREAM_URL}) and run `{DOWNLOAD_COMMAND}`."
    )


def required_files(shifts: str) -> list[str]:
    """Archive members a config needs besides the datasets: its named shift set's file."""
    return [f"distribution_shifts/{NAMED_SETS[shifts]}"] if shifts in NAMED_SETS else []


def fetch_data(data_dir, data_url, dest, shifts: str = "genies", timeout: float = 60.0) -> Path:
    """`snakemake download_data`: when `data_dir` is missing, fetch `data_url` to `dest` (the
    archive, kept as it is), unless `dest` is there already."""
    data_dir, dest = Path(data_dir), Path(dest)
    for place in (data_dir, dest):
        if place.exists():
            log.info("the data is at %s; nothing to download (remove it to fetch it again)", place)
            return place
    if not data_url:
        raise DownloadError(missing_data_message(data_dir, None, dest))
    return download_archive(data_url, dest, required_files(shifts), timeout=timeout)


def download_archive(url: str, dest, required=(), timeout: float = 60.0) -> Path:
    """Stream `url` (http, https, file, or a local path) to `dest` atomically.

    The archive must have the expected size (when the server gives one) and the GENIES layout
    (`check_archive`); otherwise nothing is left at `dest`.
    """
    dest = Path(dest)
    source, total = _open(url, timeout)
    size = f"{total / MIB:.1f} MiB" if total else "size unknown"
    log.info("downloading %s to %s (%s)", url, dest, size)
    with source, atomic_path(dest) as tmp:
        done = _copy(source, tmp, url, total)
        if total is not None and done != total:
            raise DownloadError(
                f"the download of {url} stopped after {done:,} of {total:,} bytes (the "
                f"connection dropped?): run `{DOWNLOAD_COMMAND}` again, or " + DO_BY_HAND
            )
        names = check_archive(tmp, required, origin=url)
    log.info("saved %s: %d datasets, %.1f MiB", dest, len(names), done / MIB)
    return dest


def _open(url: str, timeout: float):
    """An open binary stream of `url` and its size in bytes (None when unknown)."""
    parts = urllib.parse.urlsplit(url)
    if len(parts.scheme) <= 1 or parts.scheme == "file":  # a local file (or a Windows drive)
        path = urllib.request.url2pathname(parts.path) if parts.scheme == "file" else url
        try:
            return open(path, "rb"), Path(path).stat().st_size  # noqa: SIM115 - caller closes
        except OSError as exc:
            raise DownloadError(f"cannot read {url}: {exc.strerror}") from None
    if parts.scheme not in SCHEMES:
        raise DownloadError(
            f"data_url {url!r}: unsupported scheme {parts.scheme!r}; use one of {SCHEMES} or a path"
        )
    try:
        response = urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 - scheme checked
    except urllib.error.HTTPError as exc:
        raise DownloadError(
            f"{url} answered HTTP {exc.code} ({exc.reason}): the archive may have moved; check "
            "data_url, or " + DO_BY_HAND
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(
            f"cannot reach {url} ({reason}): this machine may be offline or need a proxy "
            f"(https_proxy). Run `{DOWNLOAD_COMMAND}` where the network is reachable, or "
            + DO_BY_HAND
        ) from None
    length = response.headers.get("Content-Length")
    return response, int(length) if length and length.isdigit() else None


def _copy(source, path: Path, url: str, total: int | None) -> int:
    """Copy `source` to `path` in chunks with progress lines; return the bytes copied."""
    progress = ProgressLog(f"download {Path(urllib.parse.urlsplit(url).path).name}", "MiB")
    started = last = time.time()
    done = 0
    try:
        with open(path, "wb") as out:
            while chunk := source.read(CHUNK_BYTES):
                out.write(chunk)
                done += len(chunk)
                if total:  # whole MiB, so that only the last chunk reports done == total
                    progress(-(-done // MIB) if done == total else done // MIB, -(-total // MIB))
                elif time.time() - last >= progress.every:
                    last = time.time()
                    rate = done / MIB / max(last - started, 1e-9)
                    log.info("%s: %.0f MiB so far, %.1f MiB/s", progress.label, done / MIB, rate)
    except (OSError, http.client.HTTPException) as exc:
        raise DownloadError(
            f"the download of {url} broke off after {done:,} bytes ({exc!r}): run "
            f"`{DOWNLOAD_COMMAND}` again, or " + DO_BY_HAND
        ) from None
    return done


def check_archive(path, required=(), origin: str | None = None) -> list[str]:
    """The dataset names of a GENIES archive; DownloadError when it is not one.

    Checks that the file is a tar archive, that it holds `distributions/<dataset>/train.json`
    and `test.json` for at least one dataset (under a leading folder or not), that every file
    in `required` (e.g. `distribution_shifts/GENIES.json`) is there, and that it can be read
    to its end (a download that stopped inside a member fails here).
    """
    path = Path(path)
    where = origin or str(path)
    fix = "check data_url, or " + DO_BY_HAND
    if not tarfile.is_tarfile(path):
        with open(path, "rb") as f:
            head = f.read(80)
        raise DownloadError(
            f"{where} is not a tar archive (it starts with {head!r}; an error page?): {fix}"
        )
    try:
        raw = RawData(path)
        names = raw.datasets()  # reads every member header; a cut-off member raises ReadError
    except (tarfile.TarError, OSError) as exc:
        raise DownloadError(
            f"{where} is a damaged or truncated tar archive ({exc}): {fix}"
        ) from None
    if not names:
        raise DownloadError(
            f"{where} has no distributions/<dataset>/train.json and test.json: not the GENIES "
            f"data archive; {fix}"
        )
    missing = [rel for rel in required if not raw.exists(rel)]
    if missing:
        raise DownloadError(
            f"{where} holds {len(names)} datasets but not {', '.join(missing)}, which the "
            "configured `shifts` set reads. Set data_dir to a folder holding distributions/ and "
            "distribution_shifts/ (the shift files are in the GENIES repository, "
            "github.com/Joshuaclymer/GENIES), or name your own shift file in `shifts`."
        )
    return names
