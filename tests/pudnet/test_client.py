"""The ``pudnet predict`` client against a stub HTTP server on 127.0.0.1: packing, streaming, errors."""
import io
import json
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
import torch
from safetensors.torch import save

from pudnet import client

WEIGHTS = save({"fc.weight": torch.zeros(2, 3)}, {"architecture": "convnet", "class_names": '["a", "b"]',
                                                  "self_check_accuracy": "0.750000"})


class Stub(BaseHTTPRequestHandler):
    """Records each request; answers with ``reply`` (status, content type, body)."""

    requests: list[dict] = []
    reply = (200, "application/octet-stream", WEIGHTS)
    before: list[tuple] = []  # replies (status, content type, body[, cut]) given first, one per request, then ``reply``
    cut: int | None = None    # send only this many body bytes, then close: a stream broken off midway

    def do_POST(self):
        chunked = self.headers.get("Transfer-Encoding") == "chunked"
        body = b"" if chunked else self.rfile.read(int(self.headers["Content-Length"]))
        url = urlsplit(self.path)
        Stub.requests.append({"path": url.path, "query": parse_qs(url.query), "body": body, "chunked": chunked,
                              "content_type": self.headers["Content-Type"]})
        status, kind, payload, cut = (*Stub.before.pop(0), None)[:4] if Stub.before else (*Stub.reply, Stub.cut)
        self.send_response(status)
        if status == 503:
            self.send_header("Retry-After", "0")
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload[:cut])
        self.close_connection = cut is not None

    def log_message(self, *args):
        pass


@pytest.fixture
def stub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Stub.requests, Stub.reply, Stub.before, Stub.cut = [], (200, "application/octet-stream", WEIGHTS), [], None
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "pets"
    for name in ("cat/1.jpg", "cat/sub/2.png", "dog/3.png", "dog/.hidden.png", ".git/x", "README.md", "empty/"):
        path = root / name
        if name.endswith("/"):
            path.mkdir(parents=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(name.encode())
    return root


def test_pack_folder_keeps_class_files_only(folder):
    buffer = io.BytesIO()
    assert client.pack_folder(folder, buffer) == 3
    with zipfile.ZipFile(buffer) as archive:
        assert sorted(archive.namelist()) == ["cat/1.jpg", "cat/sub/2.png", "dog/3.png"]
        assert all(info.compress_type == zipfile.ZIP_STORED for info in archive.infolist())
        assert archive.read("dog/3.png") == b"dog/3.png"


def test_pack_folder_needs_two_classes(tmp_path):
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "1.png").write_bytes(b"x")
    with pytest.raises(client.ClientError, match="1 class folder.*at least 2"):
        client.pack_folder(tmp_path, io.BytesIO())
    with pytest.raises(client.ClientError, match="no such directory"):
        client.pack_folder(tmp_path / "missing", io.BytesIO())


def test_content_types(tmp_path):
    for name, kind in [("d.zip", "application/zip"), ("d.TAR.GZ", "application/gzip"), ("d.tgz", "application/gzip"),
                       ("d.tar", "application/x-tar")]:
        assert client.content_type(tmp_path / name) == kind
    with pytest.raises(client.ClientError, match="expected a directory or one of"):
        client.content_type(tmp_path / "d.csv")
    np.savez(tmp_path / "bad.npz", pixels=np.zeros(3))
    with pytest.raises(client.ClientError, match="expected arrays 'images' and 'labels'"):
        client.content_type(tmp_path / "bad.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(client.ClientError, match="not a readable .npz"):
        client.content_type(tmp_path / "junk.npz")


def test_predict_folder_streams_a_zip(stub, folder, tmp_path, capsys):
    out = tmp_path / "out" / "w.safetensors"
    assert client.main(["predict", "--endpoint", stub + "/", "--data", str(folder), "--arch", "resnet18",
                     "--out", str(out)]) == 0
    (request,) = Stub.requests
    assert request["path"] == "/v1/predict" and not request["chunked"]  # a file body: sized, sent as it is read
    assert request["query"] == {"arch": ["resnet18"], "format": ["safetensors"]}
    assert request["content_type"] == "application/zip"
    assert sorted(zipfile.ZipFile(io.BytesIO(request["body"])).namelist()) == ["cat/1.jpg", "cat/sub/2.png",
                                                                               "dog/3.png"]
    assert out.read_bytes() == WEIGHTS
    assert "['a', 'b'], self-check accuracy 0.750000" in capsys.readouterr().out


def test_predict_npz_as_pt(stub, tmp_path):
    np.savez(tmp_path / "d.npz", images=np.zeros((2, 4, 4), np.uint8), labels=np.array([0, 1]))
    Stub.reply = (200, "application/octet-stream", b"pt bytes")
    assert client.main(["predict", "--endpoint", stub, "--data", str(tmp_path / "d.npz"),
                     "--out", str(tmp_path / "w.pt")]) == 0
    (request,) = Stub.requests
    assert request["query"]["format"] == ["pt"] and request["content_type"] == "application/x-npz"
    assert request["body"] == (tmp_path / "d.npz").read_bytes()
    assert (tmp_path / "w.pt").read_bytes() == b"pt bytes"


def test_dtype_is_sent_and_reported(stub, folder, tmp_path, capsys):
    assert client.main(["predict", "--endpoint", stub, "--data", str(folder), "--out", str(tmp_path / "w.safetensors"),
                     "--dtype", "bfloat16"]) == 0
    assert Stub.requests[0]["query"] == {"arch": ["convnet"], "format": ["safetensors"], "dtype": ["bfloat16"]}


def test_server_path_sends_json(stub, tmp_path):
    assert client.main(["predict", "--endpoint", stub, "--server-path", "/data/pets", "--out",
                     str(tmp_path / "w.safetensors")]) == 0
    (request,) = Stub.requests
    assert request["content_type"] == "application/json" and json.loads(request["body"]) == {"path": "/data/pets"}


def test_server_error_is_shown_and_nothing_written(stub, folder, tmp_path, capsys):
    Stub.reply = (413, "application/json", b'{"error": "upload_too_large", "detail": "limit is 1 MiB"}')
    out = tmp_path / "w.safetensors"
    assert client.main(["predict", "--endpoint", stub, "--data", str(folder), "--out", str(out)]) == 1
    assert "(413): upload_too_large: limit is 1 MiB" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [folder]


def test_download_cut_off_midway_is_an_error_and_nothing_written(stub, folder, tmp_path, capsys):
    """The server streams the file with its Content-Length: a stream that breaks off is caught, not saved."""
    Stub.cut = len(WEIGHTS) // 2
    out = tmp_path / "w.safetensors"
    assert client.main(["predict", "--endpoint", stub, "--data", str(folder), "--out", str(out), "--retries", "0"]) == 1
    assert "broke off" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [folder]


def test_download_cut_off_then_a_good_one_succeeds(stub, folder, tmp_path, capsys, monkeypatch):
    """A replica killed while streaming the file: the retry's whole, intact file is what gets written."""
    slept = []
    monkeypatch.setattr(client.time, "sleep", slept.append)
    Stub.before = [(200, "application/octet-stream", WEIGHTS, len(WEIGHTS) // 2)]
    out = tmp_path / "w.safetensors"
    assert client.main(["predict", "--endpoint", stub, "--data", str(folder), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "broke off" in err and "retry 1/4 in 1 s" in err
    assert len(Stub.requests) == 2 and out.read_bytes() == WEIGHTS and slept == [1]
    assert sorted(tmp_path.iterdir()) == sorted([folder, out])


def test_503_is_retried_and_said(stub, folder, tmp_path, capsys):
    Stub.before = [(503, "application/json", b'{"error": "replica_unavailable", "detail": "lost"}')] * 2
    out = tmp_path / "w.safetensors"
    assert client.main(["predict", "--endpoint", stub, "--data", str(folder), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "server unavailable (503): replica_unavailable: lost; retry 1/4 in 0 s" in err and "retry 2/4" in err
    assert len(Stub.requests) == 3 and out.read_bytes() == WEIGHTS
    assert Stub.requests[2]["body"] == Stub.requests[0]["body"]  # the whole upload sent again


def test_retries_are_bounded(stub, folder, tmp_path, capsys):
    Stub.reply = (503, "application/json", b'{"error": "replica_unavailable", "detail": "lost"}')
    assert client.main(["predict", "--endpoint", stub, "--data", str(folder), "--out", str(tmp_path / "w"),
                     "--retries", "2"]) == 1
    assert "gave up after 3 attempts" in capsys.readouterr().err and len(Stub.requests) == 3


def test_backoff_doubles_up_to_a_cap():
    assert [client.backoff_s(a, None) for a in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert client.backoff_s(0, 5.0) == 5.0 and client.backoff_s(3, 120.0) == 30


def test_unreachable_endpoint_and_missing_data(tmp_path, capsys, monkeypatch):
    slept = []
    monkeypatch.setattr(client.time, "sleep", slept.append)
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    (tmp_path / "d.zip").write_bytes(b"PK")
    assert client.main(["predict", "--endpoint", closed, "--data", str(tmp_path / "d.zip"), "--out",
                     str(tmp_path / "w")]) == 1
    err = capsys.readouterr().err
    assert "cannot reach" in err and "retry 4/4 in 8 s" in err and "gave up after 5 attempts" in err
    assert slept == [1, 2, 4, 8]
    assert client.main(["predict", "--endpoint", closed, "--data", str(tmp_path / "nope"), "--out",
                     str(tmp_path / "w")]) == 1
    assert "no such file or directory" in capsys.readouterr().err
