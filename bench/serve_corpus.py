"""Issue 13's corpus table: each bad input of tests/test_serve_bad_input.py sent once over HTTP, with the
status, the message and the time the answer took, plus the CPU-exhaustion upload and a valid request.

    python bench/serve_corpus.py --out bench/results_serve_corpus.md

The app and its limits are those of the test module's fixture (a private loopback cluster, one replica).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import test_serve_bad_input as corpus  # noqa: E402  (the corpus is built in the test module)


def row(server, name: str, body: bytes, content_type: str) -> str:
    start = time.perf_counter()
    response = corpus.post(server, body, content_type)
    seconds = time.perf_counter() - start
    healthy = requests.get(server.url + "/healthz", timeout=10).status_code
    try:
        detail = response.json()
        message = f"{detail['error']}: {detail['detail']}"
    except ValueError:
        message = f"{len(response.content)} bytes of weights" if response.ok else response.text[:200]
    message = message.replace("|", "\\|").replace("\n", " ")
    return f"| {name} | {response.status_code} | {message[:220]} | {seconds * 1000:.0f} | {healthy} |"


def links(server) -> dict[str, tuple[bytes, str]]:
    """JSON {"path"} requests for folders inside the allowed root whose class folder, file or root links out."""
    outside = server.root.parent / "outside"
    (outside / "c").mkdir(parents=True, exist_ok=True)
    (outside / "c" / "1.png").write_bytes(corpus.png())
    for name in ("linked_class", "linked_file"):
        for c in ("a", "b"):
            (server.root / name / c).mkdir(parents=True)
            (server.root / name / c / "1.png").write_bytes(corpus.png())
    os.symlink(outside / "c", server.root / "linked_class" / "c")
    os.symlink("/etc/passwd", server.root / "linked_file" / "a" / "2.png")
    os.symlink(outside, server.root / "linked_root")
    return {f"path: {what}": (json.dumps({"path": str(server.root / name)}).encode(), "application/json")
            for what, name in [("class folder linked outside the root", "linked_class"),
                               ("file linked to /etc/passwd", "linked_file"),
                               ("folder linked outside the root", "linked_root"),
                               ("'..' out of the root", "../..")]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results_serve_corpus.md")
    args = p.parse_args()
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        factory = type("F", (), {"mktemp": lambda self, name: Path(tempfile.mkdtemp(prefix=name, dir=tmp))})()
        fixture = corpus.server.__wrapped__(factory)
        server = next(fixture)
        try:
            cases = {name: case[:2] for name, case in corpus.CASES.items()}
            cases["CPU exhaustion: 50 x 9000x9000 1-bit PNG (0.5 MB zip)"] = (corpus.zip_of(
                {f"c{i % 2}/{i}.png": corpus.one_bit_png(9000) for i in range(50)}), "application/zip")
            cases["valid zip (6 PNGs, 2 classes)"] = (corpus.VALID_ZIP, "application/zip")
            cases.update(links(server))
            rows = [row(server, name, body, kind) for name, (body, kind) in cases.items()]
        finally:
            next(fixture, None)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout
    lines = ["# Serve bad-input corpus (issue 13)", "",
             f"`python bench/serve_corpus.py` at commit {commit.strip()}, {time.strftime('%Y-%m-%d %H:%M')}; "
             f"limits: upload {corpus.MAX_BYTES} B, inflated {corpus.MAX_EXTRACTED} B, {corpus.MAX_IMAGES} images, "
             f"{corpus.MAX_TOTAL_PIXELS} pixels per request, 4096x4096 per image. Time: client-side, one request.", "",
             "| case | status | message | ms | /healthz after |", "|---|---|---|---|---|", *rows, ""]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
