"""``fetch`` against a local HTTP server (127.0.0.1, a thread): resume, checks, errors. No internet."""

import hashlib
import io
import json
import socket
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator, List, Optional

import pytest
from pytest import MonkeyPatch

from tests.data.sequences.rawseq import random_log, write_ratings_dat
from torchrec_me.data.prepare.common import PrepareError, PrepareOptions
from torchrec_me.data.sequences import commands
from torchrec_me.data.sequences.fetch import FETCH_REGISTRY, FetchError, RemoteFile, fetch_dataset, partial_path
from torchrec_me.data.sequences.prepare import prepare_sequences


class Server(ThreadingHTTPServer):
    """Serves ``payload`` at every path; honours Range unless told not to; can cut a response short."""

    payload: bytes = b""
    honour_range: bool = True
    cut_after: Optional[int] = None  # send only this many bytes of the next response, then close
    ranges: List[Optional[str]]


class Handler(BaseHTTPRequestHandler):
    server: Server

    def do_GET(self) -> None:
        s, requested = self.server, self.headers.get("Range")
        s.ranges.append(requested)
        start = int(requested.split("=")[1].split("-")[0]) if requested and s.honour_range else 0
        body = s.payload[start:]
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(s.payload) - 1}/{len(s.payload)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if s.cut_after is not None:
            body, s.cut_after = body[: s.cut_after], None
            self.close_connection = True
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server(("127.0.0.1", 0), Handler)
    srv.ranges = []
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def small_zip(tmp_path: Path) -> bytes:
    """An ml-1m-like archive: ``ml-1m/ratings.dat`` and ``ml-1m/README``."""
    ratings = write_ratings_dat(tmp_path / "src" / "ratings.dat", random_log(n_users=20, seed=1))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("ml-1m/README", "tiny test archive\n")
        z.write(ratings, "ml-1m/ratings.dat")
    return buf.getvalue()


def register(
    monkeypatch: pytest.MonkeyPatch, server: Server, payload: bytes, known: bool = True, unpack: bool = True
) -> str:
    """Serve ``payload`` and register it as ``movielens-1m`` (size and sha256 known or not); its URL."""
    server.payload = payload
    url = f"http://127.0.0.1:{server.server_address[1]}/ml-1m.zip"
    size, digest = (len(payload), hashlib.sha256(payload).hexdigest()) if known else (None, None)
    remote = RemoteFile(url, "ml-1m.zip", size, digest, unpack, "movielens", "ml-1m")
    monkeypatch.setitem(FETCH_REGISTRY, "movielens-1m", remote)
    return url


def test_fetch_unpacks_checks_and_records(tmp_path: Path, server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    payload = small_zip(tmp_path)
    register(monkeypatch, server, payload)
    path = fetch_dataset("movielens-1m", str(tmp_path / "ml-1m"))
    assert sorted(p.name for p in path.iterdir()) == ["README", "fetch.json", "ratings.dat"]
    record = json.loads((path / "fetch.json").read_text())
    assert record["sha256"] == hashlib.sha256(payload).hexdigest() and record["verified"] is True
    assert not list(tmp_path.glob(".*"))  # no partial file, no temporary directory
    meta = prepare_sequences(str(path), str(tmp_path / "seq"), PrepareOptions(summary=False), fmt="movielens")
    assert meta["input_variant"] == "ratings.dat" and meta["num_users"] == 20


def test_interrupted_download_resumes_with_range(tmp_path: Path, server: Server, monkeypatch: MonkeyPatch) -> None:
    payload = small_zip(tmp_path)
    register(monkeypatch, server, payload)
    server.cut_after = 300
    with pytest.raises(FetchError, match="300 bytes kept .* resume") as e:
        fetch_dataset("movielens-1m", str(tmp_path / "ml-1m"))
    assert "\n" not in str(e.value) and not (tmp_path / "ml-1m").exists()
    part = partial_path((tmp_path / "ml-1m").absolute(), FETCH_REGISTRY["movielens-1m"])
    assert part.read_bytes() == payload[:300]
    path = fetch_dataset("movielens-1m", str(tmp_path / "ml-1m"))
    assert server.ranges == [None, "bytes=300-"]
    assert json.loads((path / "fetch.json").read_text())["sha256"] == hashlib.sha256(payload).hexdigest()
    assert not part.exists()


def test_server_ignoring_range_restarts_the_file(tmp_path: Path, server: Server, monkeypatch: MonkeyPatch) -> None:
    payload = b"user,item,rating,timestamp\n" * 50
    register(monkeypatch, server, payload, known=False, unpack=False)
    server.honour_range = False
    part = partial_path((tmp_path / "out").absolute(), FETCH_REGISTRY["movielens-1m"])
    part.write_bytes(b"garbage from an older attempt")
    path = fetch_dataset("movielens-1m", str(tmp_path / "out"))
    assert (path / "ml-1m.zip").read_bytes() == payload
    record = json.loads((path / "fetch.json").read_text())
    assert record["verified"] is False and record["sha256"] == hashlib.sha256(payload).hexdigest()


def test_checksum_mismatch_removes_the_file(tmp_path: Path, server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    register(monkeypatch, server, small_zip(tmp_path))
    server.payload = server.payload[:-1] + b"!"  # same size, other bytes
    with pytest.raises(FetchError, match="sha256 .* expected"):
        fetch_dataset("movielens-1m", str(tmp_path / "ml-1m"))
    assert not list(tmp_path.glob(".*")) and not (tmp_path / "ml-1m").exists()


def test_unreachable_host_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once we leave: nothing listens there
    with pytest.raises(FetchError, match="cannot download .*Connection refused .*network reachable") as e:
        fetch_dataset("movielens-1m", str(tmp_path / "x"), url=f"http://127.0.0.1:{port}/ml-1m.zip", timeout=5)
    assert "\n" not in str(e.value)


def test_existing_output_is_refused_before_download(tmp_path: Path, server: Server, monkeypatch: MonkeyPatch) -> None:
    register(monkeypatch, server, b"x")
    (tmp_path / "ml-1m").mkdir()
    with pytest.raises(PrepareError, match="already exists"):
        fetch_dataset("movielens-1m", str(tmp_path / "ml-1m"))
    assert server.ranges == []
    with pytest.raises(FetchError, match="unknown dataset"):
        fetch_dataset("imagenet", str(tmp_path / "x"))


def test_cli_fetch(tmp_path: Path, server: Server, monkeypatch: MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    url = register(monkeypatch, server, small_zip(tmp_path))
    assert commands.main(["fetch", "movielens-1m", "--output", str(tmp_path / "a"), "--url", url]) == 0
    assert "prepare sequences --format movielens" in capsys.readouterr().out
    server.payload = b"not the archive"
    assert commands.main(["fetch", "movielens-1m", "--output", str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("torchrec-me: error:") and "expected" in err[-1]


def test_overwrite_replaces_only_a_fetched_directory(tmp_path: Path, server: Server, monkeypatch: MonkeyPatch) -> None:
    register(monkeypatch, server, small_zip(tmp_path))
    first = fetch_dataset("movielens-1m", str(tmp_path / "ml-1m"))
    again = fetch_dataset("movielens-1m", str(tmp_path / "ml-1m"), overwrite=True)
    assert first == again and (again / "ratings.dat").is_file()
    (again / "notes.txt").write_text("mine")
    with pytest.raises(PrepareError, match="notes.txt"):
        fetch_dataset("movielens-1m", str(tmp_path / "ml-1m"), overwrite=True)
    assert (again / "notes.txt").read_text() == "mine"
