"""``pudnet predict``: send a labelled dataset to a PudNet endpoint (``serve_app``) and save the weights it returns.

    pudnet predict --endpoint http://127.0.0.1:8000 --data pets/ --arch resnet18 --out weights.safetensors

A 503 (a replica lost or still starting), a broken connection or a download cut off midway is retried with
exponential backoff, at most ``--retries`` times, each retry said on stderr; every other error is final.

``--data`` is an ImageFolder directory (``<class_name>/<image>``, zipped on the fly), a zip or tar archive of
one, or an ``.npz`` with ``images`` (N, H, W[, C]) uint8 and ``labels`` (N,) ints; ``--server-path`` instead
names a dataset the server reads itself (under its allowed roots). The upload is streamed from disk. This
client needs only ``requests`` and the pudnet package: no Ray.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import BinaryIO

import requests
from safetensors import safe_open

from .data.images import class_of, hidden
from .files import atomic_path
from .model.config import ARCHITECTURES

CONTENT_TYPES = {".zip": "application/zip", ".npz": "application/x-npz", ".tar": "application/x-tar",
                 ".tgz": "application/gzip", ".tar.gz": "application/gzip"}


class ClientError(Exception):
    """A problem the user can fix; ``main`` prints it without a traceback."""


def content_type(path: Path) -> str:
    """The upload's Content-Type from its name; ClientError for anything the server cannot read."""
    suffix = ".tar.gz" if path.name.lower().endswith(".tar.gz") else path.suffix.lower()
    if suffix not in CONTENT_TYPES:
        raise ClientError(f"--data {path}: expected a directory or one of {sorted(CONTENT_TYPES)}")
    if suffix == ".npz":
        try:
            with zipfile.ZipFile(path) as z:
                names = set(z.namelist())
        except zipfile.BadZipFile as e:
            raise ClientError(f"--data {path}: not a readable .npz ({e})") from e
        if not {"images.npy", "labels.npy"} <= names:
            raise ClientError(f"--data {path}: the npz holds {sorted(names)}; expected arrays 'images' and "
                              "'labels' (numpy.savez(path, images=..., labels=...))")
    return CONTENT_TYPES[suffix]


def pack_folder(root: Path, out: BinaryIO) -> int:
    """Zip ``root/<class_name>/**/<file>`` into ``out``, hidden files skipped, and return the file count.

    Stored, not deflated: JPEG/PNG are compressed already. ClientError if fewer than 2 class folders hold files.
    """
    if not root.is_dir():
        raise ClientError(f"--data {root}: no such directory")
    files: dict[str, list[Path]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not hidden((p.name,))):
        inside = [p for p in sorted(folder.rglob("*")) if p.is_file() and class_of(p.relative_to(root).parts)]
        if inside:
            files[folder.name] = inside
    if len(files) < 2:
        raise ClientError(f"--data {root}: {len(files)} class folder(s) with files {sorted(files)}; expected at "
                          f"least 2, laid out as {root}/<class_name>/<image>")
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        for paths in files.values():
            for path in paths:
                archive.write(path, path.relative_to(root).as_posix())
    return sum(len(paths) for paths in files.values())


class Retryable(ClientError):
    """A 503 or a broken connection: worth another try after ``delay_s``."""

    def __init__(self, message: str, delay_s: float | None = None):
        super().__init__(message)
        self.delay_s = delay_s


def backoff_s(attempt: int, retry_after: float | None, base_s: float = 1.0, cap_s: float = 30.0) -> float:
    """Seconds before retry ``attempt`` (0-based): the server's Retry-After if it gave one, else base * 2^attempt,
    never more than ``cap_s``."""
    return min(cap_s, retry_after if retry_after is not None else base_s * 2 ** attempt)


def predict(endpoint: str, out: Path, arch: str, out_format: str, data: Path | None = None,
            server_path: str | None = None, timeout_s: float = 600, retries: int = 4, dtype: str = "float32") -> Path:
    """POST the dataset, write the response to ``out`` atomically; ClientError with the server's message.
    503s, broken connections and downloads cut off midway are retried up to ``retries`` times with exponential
    backoff."""
    for attempt in range(retries + 1):
        try:
            params = {"arch": arch, "format": out_format, **({"dtype": dtype} if dtype != "float32" else {})}
            return _predict_once(endpoint, out, params, data, server_path, timeout_s)
        except Retryable as e:
            if attempt == retries:
                raise ClientError(f"{e} (gave up after {retries + 1} attempts)") from e
            delay = backoff_s(attempt, e.delay_s)
            print(f"pudnet: {e}; retry {attempt + 1}/{retries} in {delay:g} s", file=sys.stderr)
            time.sleep(delay)
    raise AssertionError("unreachable")


def _predict_once(endpoint: str, out: Path, params: dict[str, str], data: Path | None,
                  server_path: str | None, timeout_s: float) -> Path:
    url = endpoint.rstrip("/") + "/v1/predict"
    with contextlib.ExitStack() as stack:
        body, headers = _request_body(data, server_path, stack)
        try:
            response = requests.post(url, params=params, data=body, headers=headers, stream=True,
                                     timeout=(10, timeout_s))
        except requests.ConnectionError as e:  # also an upload the server cut off (too large) before reading it all
            raise Retryable(f"cannot reach {url} or the connection broke: is the server up, the endpoint "
                            f"right and the upload within the server's max_upload_bytes? ({e})") from e
        except requests.Timeout as e:
            raise ClientError(f"{url} did not answer within {timeout_s} s; raise --timeout") from e
    with response:
        if response.status_code == 503:
            retry_after = response.headers.get("Retry-After", "")
            raise Retryable(f"server unavailable (503): {_error_text(response)}",
                            float(retry_after) if retry_after.isdigit() else None)
        if response.status_code != 200:
            raise ClientError(f"server refused the request ({response.status_code}): {_error_text(response)}")
        try:
            with atomic_path(out) as tmp, open(tmp, "wb") as f:
                for chunk in response.iter_content(1 << 20):
                    f.write(chunk)
        except requests.RequestException as e:   # the replica streaming it died: another one can answer
            raise Retryable(f"the download from {url} broke off: {e}") from e
    return out


def _request_body(data: Path | None, server_path: str | None,
                  stack: contextlib.ExitStack) -> tuple[bytes | BinaryIO, dict[str, str]]:
    """The body to stream (an open file, never the whole dataset in memory) and its Content-Type."""
    if server_path is not None:
        return json.dumps({"path": server_path}).encode(), {"Content-Type": "application/json"}
    if data.is_dir():
        packed = stack.enter_context(tempfile.TemporaryFile())
        pack_folder(data, packed)
        packed.seek(0)
        return packed, {"Content-Type": "application/zip"}
    if data.is_file():
        kind = content_type(data)
        return stack.enter_context(open(data, "rb")), {"Content-Type": kind}
    raise ClientError(f"--data {data}: no such file or directory")


def _error_text(response: requests.Response) -> str:
    try:
        body = response.json()
        return f"{body.get('error', 'error')}: {body.get('detail', body)}"
    except ValueError:
        return response.text[:500]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pudnet", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("predict", help="generate target weights for a labelled dataset")
    p.add_argument("--endpoint", required=True, help="server URL, e.g. http://127.0.0.1:8000")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="ImageFolder directory, .zip/.tar/.tar.gz/.tgz archive, or .npz")
    source.add_argument("--server-path", help="a dataset path/URI the server reads (under its allowed roots)")
    p.add_argument("--arch", choices=ARCHITECTURES, default="convnet", help="target architecture")
    p.add_argument("--out", type=Path, required=True, help="where to write the weights")
    p.add_argument("--format", choices=("safetensors", "pt", "pt2"),
                   help="default: from --out's suffix (.pt, .pt2), else safetensors; pt2 loads with torch.export.load")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32",
                   help="safetensors weights in this dtype (BatchNorm statistics stay float32); load_state_dict "
                        "casts them back into a float32 model")
    p.add_argument("--timeout", type=float, default=600, help="seconds to wait for the answer")
    p.add_argument("--retries", type=int, default=4, help="retries of a 503 or broken connection (backoff 1, 2, 4.. s)")
    args = parser.parse_args(argv)
    out_format = args.format or {".pt": "pt", ".pt2": "pt2"}.get(args.out.suffix, "safetensors")
    try:
        out = predict(args.endpoint, args.out, args.arch, out_format, args.data, args.server_path, args.timeout,
                      args.retries, args.dtype)
    except ClientError as e:
        print(f"pudnet: error: {e}", file=sys.stderr)
        return 1
    summary = f"wrote {out} ({out.stat().st_size} bytes)"
    if out_format == "safetensors":
        with safe_open(out, "numpy") as f:   # the header only: no tensor is read
            meta = f.metadata() or {}
        accuracy = meta.get("self_check_accuracy") or "n/a (too few images per class)"
        summary += (f": {meta.get('architecture')} ({meta.get('dtype', 'float32')}) for classes "
                    f"{json.loads(meta.get('class_names', '[]'))}, self-check accuracy {accuracy}")
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
