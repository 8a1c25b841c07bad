"""A loopback stand-in for the Hugging Face Hub, for tests without network (prototype).

Serves just enough of the Hub's HTTP API for `huggingface_hub.snapshot_download`,
`HfApi.model_info/dataset_info/repo_info/list_repo_tree/get_paths_info`, `hf_hub_download`
and `datasets.load_dataset(<hub id>, revision=...)` (through `HfFileSystem`):

    GET  /api/{models|datasets}/{repo}[/revision/{rev}]      repo info: sha, siblings, gated ...
    GET  /api/{models|datasets}/{repo}/tree/{rev}[/{path}]   file listing (recursive=..., one page)
    POST /api/{models|datasets}/{repo}/paths-info/{rev}      info on given paths (form/json "paths")
    GET  /api/{models|datasets}/{repo}/refs                  branches
    HEAD|GET /{repo}/resolve/{rev}/{path}                    a file (model repo)
    HEAD|GET /datasets/{repo}/resolve/{rev}/{path}           a file (dataset repo)

Headers as the Hub sends them: `X-Repo-Commit` (resolved commit), `ETag` (git blob sha1 for a
plain file, sha256 for an LFS file such as *.safetensors, as the real Hub), `X-Linked-Size`,
`Content-Length`, Range requests (206). Errors carry `X-Error-Code` (RepoNotFound, GatedRepo,
RevisionNotFound, EntryNotFound) which huggingface_hub turns into its exception classes.
No Xet headers are sent, so downloads are plain HTTP.

Bounded: binds 127.0.0.1 on a free port, serves in a daemon thread, and shuts itself down after
`lifetime_s` seconds (or on leaving the `with` block, whichever is first). Every request is
logged in `hub.requests` as (method, path, authorization header or None).

    hub = FakeHub(lifetime_s=60)
    commit = hub.add_repo("org/model", {"config.json": b"{}", "model.safetensors": data})
    hub.add_branch("org/model", "main", commit)
    with hub:
        os.environ["HF_ENDPOINT"] = hub.url   # set BEFORE importing huggingface_hub
        ...
"""

from __future__ import annotations

import hashlib
import json
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf", ".parquet", ".arrow", ".h5", ".msgpack")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    repo_id: str
    repo_type: str = "model"  # "model" | "dataset"
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # commit -> path -> bytes
    refs: dict[str, str] = field(default_factory=dict)  # branch/tag -> commit
    gated: bool = False  # True: needs `token` in Authorization, else 401 GatedRepo
    private: bool = False  # True: needs `token`, else 401 RepoNotFound (as the Hub)
    token: str | None = None  # the token that grants access (gated/private)


class FakeHub:
    def __init__(self, lifetime_s: float = 60.0):
        self.lifetime_s = lifetime_s
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[tuple[str, str, str | None]] = []
        self._server: ThreadingHTTPServer | None = None
        self._timer: threading.Timer | None = None

    # ---------------------------------------------------------------- repository content
    def add_repo(self, repo_id, files, repo_type="model", branch="main", **kw) -> str:
        """Add a commit with `files` ({path: bytes} or a folder) on `branch`; return its hash."""
        if isinstance(files, str | Path):
            root = Path(files)
            files = {
                p.relative_to(root).as_posix(): p.read_bytes()
                for p in sorted(root.rglob("*"))
                if p.is_file()
            }
        files = {k: (v.encode() if isinstance(v, str) else v) for k, v in files.items()}
        repo = self.repos.setdefault((repo_type, repo_id), Repo(repo_id, repo_type))
        for key, value in kw.items():
            setattr(repo, key, value)
        digest = hashlib.sha1(repo_id.encode() + str(len(repo.commits)).encode())
        for path in sorted(files):
            digest.update(path.encode() + b"\0" + git_blob_sha1(files[path]).encode())
        commit = digest.hexdigest()
        repo.commits[commit] = dict(files)
        if branch:
            repo.refs[branch] = commit
        return commit

    def add_branch(self, repo_id, name, commit, repo_type="model"):
        self.repos[(repo_type, repo_id)].refs[name] = commit

    # ---------------------------------------------------------------- lifecycle
    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self._timer = threading.Timer(self.lifetime_s, self.stop)
        self._timer.daemon = True
        self._timer.start()
        return self

    def stop(self):
        if self._timer:
            self._timer.cancel()
        if self._server:
            server, self._server = self._server, None
            server.shutdown()
            server.server_close()

    def __enter__(self):
        return self.start() if self._server is None else self

    def __exit__(self, *exc):
        self.stop()

    # ---------------------------------------------------------------- lookups
    def _lookup(self, repo_type, repo_id, rev, auth):
        """Return (repo, commit) or an error tuple (status, error_code, message)."""
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            return None, (401 if not auth else 404, "RepoNotFound", "Repository not found")
        granted = auth == f"Bearer {repo.token}"
        if repo.private and not granted:
            return None, (401 if not auth else 404, "RepoNotFound", "Repository not found")
        if repo.gated and not granted:
            # The Hub: 401 without a token, 403 with a token that has not been granted access.
            return None, (
                401 if not auth else 403,
                "GatedRepo",
                f"Access to model {repo_id} is restricted. You must have access to it "
                "and be authenticated to access it. Please log in.",
            )
        if rev is None:
            rev = "main"
        commit = repo.refs.get(rev, rev if rev in repo.commits else None)
        if commit is None:
            return None, (404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return (repo, commit), None


def _file_entry(path: str, data: bytes) -> dict:
    entry = {"type": "file", "path": path, "size": len(data), "oid": git_blob_sha1(data)}
    if path.endswith(LFS_SUFFIXES):
        entry["lfs"] = {
            "oid": hashlib.sha256(data).hexdigest(),
            "size": len(data),
            "pointerSize": 134,
        }
    return entry


def _dirs_of(files) -> set[str]:
    dirs = set()
    for path in files:
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]))
    return dirs


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    # ------------------------------------------------------------ plumbing
    def _send(self, status, body=b"", headers=None, head=False):
        if isinstance(body, dict | list):
            body = json.dumps(body).encode()
            headers = {"Content-Type": "application/json", **(headers or {})}
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _error(self, status, code, message, head=False, extra=None):
        headers = {"X-Error-Code": code, "X-Error-Message": message, **(extra or {})}
        self._send(status, {"error": message}, headers, head)

    def _route(self, method):
        auth = self.headers.get("Authorization")
        self.hub.requests.append((method, self.path, auth))
        parsed = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(parsed.query)
        parts = [urllib.parse.unquote(p) for p in parsed.path.strip("/").split("/")]
        head = method == "HEAD"
        if parts[:2] == ["api", "agent-harnesses"]:  # huggingface_hub 2.x fetches this once a day
            return self._send(200, {"standardEnvVars": [], "harnesses": {}}, head=head)
        if parts[0] == "api" and len(parts) >= 4 and parts[1] in ("models", "datasets"):
            return self._api(method, parts[1][:-1], parts[2:], query, auth)
        repo_type = "model"
        if parts[0] == "datasets":
            repo_type, parts = "dataset", parts[1:]
        if len(parts) >= 5 and parts[2] == "resolve":
            repo_id, rev, path = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
            return self._resolve(repo_type, repo_id, rev, path, auth, head)
        self._error(404, "NotFound", f"no such endpoint {parsed.path}", head)

    # ------------------------------------------------------------ /api
    def _api(self, method, repo_type, rest, query, auth):
        repo_id = "/".join(rest[:2])
        verb = rest[2] if len(rest) > 2 else None
        rev = rest[3] if len(rest) > 3 else None
        found, err = self.hub._lookup(repo_type, repo_id, rev, auth)
        if verb == "refs":
            found, err = self.hub._lookup(repo_type, repo_id, None, auth)
        if err:
            return self._error(*err)
        repo, commit = found
        files = repo.commits[commit]
        if verb in (None, "revision"):
            info = {
                "_id": commit[:24],
                "id": repo_id,
                "sha": commit,
                "private": repo.private,
                "gated": "auto" if repo.gated else False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "lastModified": "2026-01-01T00:00:00.000Z",
                "createdAt": "2026-01-01T00:00:00.000Z",
                "siblings": [{"rfilename": p} for p in sorted(files)],
            }
            if repo_type == "dataset":
                info["cardData"] = {}
            return self._send(200, info)
        if verb == "tree":
            prefix = "/".join(rest[4:])
            recursive = query.get("recursive", ["false"])[0].lower() == "true"
            entries = []
            for d in sorted(_dirs_of(files)):
                if _child(prefix, d, recursive):
                    entries.append(
                        {
                            "type": "directory",
                            "path": d,
                            "oid": git_blob_sha1(d.encode()),
                            "size": 0,
                        }
                    )
            for p in sorted(files):
                if _child(prefix, p, recursive):
                    entries.append(_file_entry(p, files[p]))
            if prefix and not entries and prefix not in files:
                return self._error(404, "EntryNotFound", f"{prefix} does not exist on {rev}")
            return self._send(200, entries, {"X-Repo-Commit": commit})
        if verb == "paths-info":
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length).decode()
            if "json" in (self.headers.get("Content-Type") or ""):
                paths = json.loads(raw or "{}").get("paths", [])
            else:
                paths = urllib.parse.parse_qs(raw).get("paths", [])
            paths = [paths] if isinstance(paths, str) else paths
            dirs = _dirs_of(files)
            out = []
            for p in paths:
                p = p.strip("/")
                if p in files:
                    out.append(_file_entry(p, files[p]))
                elif p in dirs:
                    out.append(
                        {
                            "type": "directory",
                            "path": p,
                            "oid": git_blob_sha1(p.encode()),
                            "size": 0,
                        }
                    )
            return self._send(200, out, {"X-Repo-Commit": commit})
        if verb == "refs":
            return self._send(
                200,
                {
                    "branches": [
                        {"name": n, "ref": f"refs/heads/{n}", "targetCommit": c}
                        for n, c in sorted(repo.refs.items())
                    ],
                    "converts": [],
                    "tags": [],
                },
            )
        self._error(404, "NotFound", f"unsupported api call {verb}")

    # ------------------------------------------------------------ /resolve
    def _resolve(self, repo_type, repo_id, rev, path, auth, head):
        found, err = self.hub._lookup(repo_type, repo_id, rev, auth)
        if err:
            return self._error(*err, head=head)
        repo, commit = found
        files = repo.commits[commit]
        if path not in files:
            return self._error(
                404,
                "EntryNotFound",
                f"{path} does not exist on {rev}",
                head,
                {"X-Repo-Commit": commit},
            )
        data = files[path]
        entry = _file_entry(path, data)
        etag = entry["lfs"]["oid"] if "lfs" in entry else entry["oid"]
        headers = {
            "X-Repo-Commit": commit,
            "ETag": f'"{etag}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if "lfs" in entry:
            headers["X-Linked-Etag"] = f'"{etag}"'
            headers["X-Linked-Size"] = len(data)
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            start_s, _, end_s = rng[6:].partition("-")
            start = int(start_s) if start_s else max(0, len(data) - int(end_s))
            end = int(end_s) if (end_s and start_s) else len(data) - 1
            end = min(end, len(data) - 1)
            if start >= len(data):
                return self._send(
                    416, b"", {"Content-Range": f"bytes */{len(data)}", **headers}, head
                )
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return self._send(206, data[start : end + 1], headers, head)
        self._send(200, data, headers, head)

    def do_GET(self):
        self._route("GET")

    def do_HEAD(self):
        self._route("HEAD")

    def do_POST(self):
        self._route("POST")


def _child(prefix: str, path: str, recursive: bool) -> bool:
    if prefix:
        if not path.startswith(prefix + "/"):
            return False
        rest = path[len(prefix) + 1 :]
    else:
        rest = path
    return recursive or "/" not in rest


if __name__ == "__main__":  # serve a folder as org/<folder name> for `lifetime` seconds
    import argparse
    import time

    ap = argparse.ArgumentParser()
    ap.add_argument("folder")
    ap.add_argument("--repo-id")
    ap.add_argument("--repo-type", default="model")
    ap.add_argument("--seconds", type=float, default=60)
    args = ap.parse_args()
    hub = FakeHub(lifetime_s=args.seconds)
    repo_id = args.repo_id or f"local/{Path(args.folder).name}"
    commit = hub.add_repo(repo_id, args.folder, repo_type=args.repo_type)
    with hub:
        print(f"HF_ENDPOINT={hub.url} repo={repo_id} main={commit}", flush=True)
        deadline = time.time() + args.seconds
        while hub._server is not None and time.time() < deadline:
            time.sleep(0.2)
