"""A small Hugging Face Hub-compatible HTTP server for tests, on 127.0.0.1 only.

It implements the endpoints `huggingface_hub`'s real client uses to create a model repo, upload files as regular
(base64, in-commit) uploads, open pull requests and branches, and download again: whoami, repos/create,
validate-yaml, preupload, commit, branch, model info, tree and resolve. It stores what it is sent and serves it
back, and it answers like the Hub does when something is wrong: 401 for a missing or unknown token, 403 for a
namespace the token's user may not write to, 404 with ``X-Error-Code: RepoNotFound`` / ``RevisionNotFound`` /
``EntryNotFound``, so the client raises its usual typed errors.

    with HubServer(tokens={"hf_good": "alice"}) as hub:
        os.environ["HF_ENDPOINT"] = hub.url
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

import yaml


def git_blob_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Repo:
    def __init__(self, repo_id: str, owner: str, private: bool):
        self.repo_id, self.owner, self.private = repo_id, owner, private
        root = hashlib.sha1(f"init {repo_id} {time.time()}".encode()).hexdigest()
        self.commits: dict[str, dict[str, bytes]] = {root: {}}
        self.refs: dict[str, str] = {"main": root}
        self.prs = 0

    def resolve(self, revision: str):
        revision = unquote(revision)
        if revision in self.refs:
            return self.refs[revision]
        if revision in self.commits:
            return revision
        return None


class HubServer:
    def __init__(self, tokens: dict[str, str], orgs: dict[str, list[str]] | None = None):
        self.tokens, self.orgs = tokens, orgs or {}
        self.repos: dict[str, Repo] = {}
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str]] = []
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        self._httpd.shutdown()
        self._httpd.server_close()

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            # ------------------------------------------------------------------ helpers
            def _send(self, status, body=b"", headers=None, content_type="application/json"):
                if not isinstance(body, bytes):
                    body = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _error(self, status, message, code=None):
                headers = {"X-Error-Message": message}
                if code:
                    headers["X-Error-Code"] = code
                self._send(status, {"error": message}, headers)

            def _user(self):
                auth = self.headers.get("Authorization", "")
                token = auth[7:] if auth.startswith("Bearer ") else None
                return server.tokens.get(token) if token else None, token

            def _body(self):
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _repo(self, repo_id, user, write=False):
                repo = server.repos.get(repo_id)
                if repo is None or (repo.private and user != repo.owner and repo.owner not in server.orgs.get(user, [])):
                    self._error(404, f"Repository Not Found for url: {self.path}.", "RepoNotFound")
                    return None
                if write and not self._may_write(user, repo.owner):
                    self._error(403, f"You don't have the rights to write to {repo_id}.")
                    return None
                return repo

            def _may_write(self, user, namespace):
                return user is not None and (namespace == user or namespace in server.orgs.get(user, []))

            # ------------------------------------------------------------------ routing
            def do_GET(self):
                self._route("GET")

            def do_HEAD(self):
                self._route("HEAD")

            def do_POST(self):
                self._route("POST")

            def _route(self, method):
                url = urlparse(self.path)
                path, query = url.path, parse_qs(url.query)
                server.requests.append((method, path))
                user, token = self._user()
                if token and user is None:
                    return self._error(401, "Invalid credentials in Authorization header")
                parts = [p for p in path.split("/") if p]
                with server.lock:
                    if path == "/api/whoami-v2" and method == "GET":
                        if user is None:
                            return self._error(401, "Invalid credentials in Authorization header")
                        orgs = [{"name": o, "type": "org"} for o in server.orgs.get(user, [])]
                        return self._send(200, {"type": "user", "name": user, "fullname": user, "orgs": orgs,
                                                "auth": {"type": "access_token",
                                                         "accessToken": {"displayName": "test", "role": "write"}}})
                    if path == "/api/repos/create" and method == "POST":
                        return self._create(user)
                    if path == "/api/validate-yaml" and method == "POST":
                        return self._validate_yaml()
                    if parts[:2] == ["api", "models"] and len(parts) >= 4:
                        repo_id = "/".join(parts[2:4])
                        rest = parts[4:]
                        if not rest and method == "GET":
                            return self._info(repo_id, user, "main")
                        if rest[:1] == ["revision"] and method == "GET":
                            return self._info(repo_id, user, "/".join(rest[1:]))
                        if rest[:1] == ["preupload"] and method == "POST":
                            return self._preupload(repo_id, user, "/".join(rest[1:]))
                        if rest[:1] == ["commit"] and method == "POST":
                            return self._commit(repo_id, user, "/".join(rest[1:]), "create_pr" in query)
                        if rest[:1] == ["branch"] and method == "POST":
                            return self._branch(repo_id, user, "/".join(rest[1:]))
                        if rest[:1] == ["tree"] and method == "GET":
                            return self._tree(repo_id, user, rest[1] if len(rest) > 1 else "main", "/".join(rest[2:]))
                    if len(parts) >= 5 and parts[2] == "resolve" and method in ("GET", "HEAD"):
                        return self._resolve("/".join(parts[:2]), user, parts[3], "/".join(parts[4:]))
                self._error(404, f"Not Found: {method} {path}")

            # ------------------------------------------------------------------ endpoints
            def _create(self, user):
                if user is None:
                    return self._error(401, "You must be authenticated to create a repository")
                data = json.loads(self._body() or b"{}")
                namespace = data.get("organization") or user
                if not self._may_write(user, namespace):
                    return self._error(403, f"You don't have the rights to create a model under the namespace "
                                            f"\"{namespace}\"")
                repo_id = f"{namespace}/{data['name']}"
                if repo_id in server.repos:
                    return self._send(409, {"error": "You already created this model repo",
                                             "url": f"{server.url}/{repo_id}"})
                server.repos[repo_id] = Repo(repo_id, namespace, data.get("visibility") == "private"
                                             or bool(data.get("private")))
                return self._send(200, {"url": f"{server.url}/{repo_id}", "name": repo_id, "id": repo_id})

            def _validate_yaml(self):
                content = json.loads(self._body() or b"{}").get("content", "")
                if content.startswith("---"):
                    try:
                        meta = yaml.safe_load(content.split("---")[1])
                    except yaml.YAMLError as err:
                        return self._send(400, {"errors": [{"message": f"Invalid YAML: {err}"}]})
                    if not isinstance(meta, dict):
                        return self._send(400, {"errors": [{"message": "metadata must be a mapping"}]})
                return self._send(200, {"errors": [], "warnings": []})

            def _info(self, repo_id, user, revision):
                snapshot = self._snapshot(repo_id, user, revision)
                if snapshot is not None:
                    repo = server.repos[repo_id]
                    self._send(200, {"id": repo_id, "modelId": repo_id, "sha": snapshot[0], "private": repo.private,
                                     "author": repo.owner, "tags": [], "downloads": 0, "likes": 0,
                                     "siblings": [{"rfilename": p} for p in sorted(snapshot[1])]})

            def _preupload(self, repo_id, user, revision):
                repo = self._repo(repo_id, user, write=True)
                if repo is None:
                    return
                data = json.loads(self._body() or b"{}")
                current = repo.commits.get(repo.resolve(revision) or repo.refs["main"], {})
                out = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                        "oid": git_blob_sha(current[f["path"]]) if f["path"] in current else None}
                       for f in data.get("files", [])]
                return self._send(200, {"files": out, "commitOid": repo.resolve(revision)})

            def _commit(self, repo_id, user, revision, create_pr):
                repo = self._repo(repo_id, user, write=True)
                if repo is None:
                    return
                revision = unquote(revision)
                parent = repo.resolve(revision)
                if parent is None:
                    return self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
                files = dict(repo.commits[parent])
                summary = ""
                for line in self._body().splitlines():
                    if not line.strip():
                        continue
                    item = json.loads(line)
                    key, value = item["key"], item["value"]
                    if key == "header":
                        summary = value.get("summary", "")
                    elif key == "file":
                        files[value["path"]] = base64.b64decode(value["content"])
                    elif key == "deletedFile":
                        files.pop(value["path"], None)
                    elif key == "deletedFolder":
                        for p in [p for p in files if p.startswith(value["path"].rstrip("/") + "/")]:
                            files.pop(p)
                    else:  # lfsFile / copy: never offered by this server's preupload
                        return self._error(400, f"unsupported commit operation {key}")
                sha = hashlib.sha1(f"{parent}{summary}{sorted(files)}{time.time()}".encode()).hexdigest()
                repo.commits[sha] = files
                pr_url = None
                if create_pr:
                    repo.prs += 1
                    repo.refs[f"refs/pr/{repo.prs}"] = sha
                    pr_url = f"{server.url}/{repo_id}/discussions/{repo.prs}"
                else:
                    repo.refs[revision] = sha
                return self._send(200, {"commitUrl": f"{server.url}/{repo_id}/commit/{sha}", "commitOid": sha,
                                        "pullRequestUrl": pr_url, "success": True})

            def _branch(self, repo_id, user, branch):
                repo = self._repo(repo_id, user, write=True)
                if repo is None:
                    return
                branch = unquote(branch)
                data = json.loads(self._body() or b"{}")
                if branch in repo.refs:
                    return self._send(409, {"error": f"Branch {branch} already exists"})
                start = repo.resolve(data.get("startingPoint") or "main")
                repo.refs[branch] = start
                return self._send(200, {})

            def _snapshot(self, repo_id, user, revision):
                """(sha, files) of a readable revision, or None after answering the error."""
                repo = self._repo(repo_id, user)
                if repo is None:
                    return None
                sha = repo.resolve(revision)
                if sha is None:
                    self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
                    return None
                return sha, repo.commits[sha]

            def _tree(self, repo_id, user, revision, prefix):
                snapshot = self._snapshot(repo_id, user, revision)
                if snapshot is not None:
                    self._send(200, [{"type": "file", "path": p, "size": len(b), "oid": git_blob_sha(b)}
                                     for p, b in sorted(snapshot[1].items()) if p.startswith(prefix)])

            def _resolve(self, repo_id, user, revision, filename):
                snapshot = self._snapshot(repo_id, user, revision)
                if snapshot is None:
                    return
                sha, files = snapshot
                data = files.get(unquote(filename))
                if data is None:
                    return self._error(404, f"Entry not found: {filename}", "EntryNotFound")
                self._send(200, data, {"X-Repo-Commit": sha, "ETag": f'"{git_blob_sha(data)}"'},
                           content_type="application/octet-stream")

        return Handler
