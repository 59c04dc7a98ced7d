"""Helpers for the reader-study tests: a tiny study, a server in a thread or a process, PNG chunks, the key read directly."""

from __future__ import annotations

import http.client
import json
import os
import sqlite3
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from helpers import free_port
from raresynth.config import load_config
from raresynth.training import train


def tiny_run(tmp_path: Path, registry, images_per_class: int = 8) -> Path:
    """A toy generator trained briefly on the embedded data, 32 px RGB, two classes; the run directory."""
    config = {
        "run_dir": str(tmp_path / "toy-run"), "seed": 3,
        "data": {"format": "embedded", "resolution": 32, "channels": 3,
                 "format_options": {"train_per_class": 8, "held_out_per_class": images_per_class, "crop_size": 32}},
        "generator": {"name": "toy"}, "budget": {"kimg": 0.064}, "batch_size": 8, "metrics": [],
        "schedule": {"tick_kimg": 0.032, "snapshot_kimg": 0.064, "keep_checkpoints": 1, "grid_size": 4},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    train(load_config(path, registry=registry), registry=registry, progress_bar=False)
    return tmp_path / "toy-run"


def key(study_dir: Path) -> dict[str, dict]:
    """The key straight from the database: image id -> truth, source, class, origin."""
    with sqlite3.connect(study_dir / "study.sqlite") as db:
        return {row[0]: {"truth": row[1], "source": row[2], "class_name": row[3], "origin": row[4]}
                for row in db.execute("SELECT id, truth, source, class_name, origin FROM images")}


def stored_answers(study_dir: Path) -> dict[tuple[str, str], tuple[str, int]]:
    """(reader name, image id) -> (call, confidence), straight from the database."""
    with sqlite3.connect(study_dir / "study.sqlite") as db:
        return {(r[0], r[1]): (r[2], r[3]) for r in db.execute(
            "SELECT r.name, a.image_id, a.call, a.confidence FROM answers a JOIN readers r ON r.id = a.reader_id")}


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """``(type, payload)`` of every chunk in a PNG file (read by hand, not by PIL)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        chunks.append((kind, data[offset + 8 : offset + 8 + length]))
        offset += 12 + length
    return chunks


def request(url: str, data: bytes | None = None, headers: dict | None = None, method: str | None = None):
    """``(status, headers, body)`` of one HTTP request; error statuses are returned, not raised; no redirect followed."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with opener.open(req, timeout=20) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def post_form(url: str, body: str, accept: str = "text/html"):
    return request(url, body.encode(), {"Content-Type": "application/x-www-form-urlencoded", "Accept": accept}, "POST")


def wait_until_up(url: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            request(url)
            return
        except (urllib.error.URLError, ConnectionError, http.client.HTTPException, OSError):
            time.sleep(0.2)
    raise TimeoutError(f"{url}: the server did not come up in {timeout} s")


class ThreadServer:
    """The study's app on uvicorn in a thread of this process, on a free port of 127.0.0.1."""

    def __init__(self, study_dir: Path) -> None:
        import uvicorn

        from raresynth.review import build_app

        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(build_app(study_dir), host="127.0.0.1", port=self.port, log_level="warning",
                                server_header=False, access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        wait_until_up(self.base + "/static/review.css", timeout=30)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


class ProcessServer:
    """``raresynth review serve`` in a subprocess, which :meth:`kill` ends as a crash would (SIGKILL)."""

    def __init__(self, study_dir: Path, port: int | None = None) -> None:
        self.study_dir, self.port = study_dir, port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> ProcessServer:
        self.process = subprocess.Popen([sys.executable, "-m", "raresynth", "review", "serve", str(self.study_dir), "--port", str(self.port)],
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            wait_until_up(self.base + "/static/review.css")
        except TimeoutError:
            self.kill()
            raise
        return self

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)

    def __enter__(self) -> ProcessServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.kill()


def json_body(body: bytes) -> dict:
    return json.loads(body.decode())
