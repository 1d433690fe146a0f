"""How much the server's request batching buys: N different image questions sent one after another, then all at
once by N client threads, to a `paddlemix-serve` child process on a loopback port; prints both wall times, their
ratio and the largest batch the server formed. Answers must be equal both ways (greedy), or it stops.

Without --model_dir it builds the tiny Qwen2.5-VL and the mid-size one of generation_speed.py (about 165M
parameters) under a temporary folder. Usage: python benchmarks/serve_batching.py [--model_dir DIR ...]
[--clients 8] [--new_tokens 16]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from paddlemix.testing.server import health, running_server
from paddlemix.testing.tiny_model import build_tiny_qwen2_5_vl

QUESTIONS = ["What color is the picture?", "Which shape is it?", "Describe the picture.", "Is it round?"]


def image_question(i: int) -> list[dict]:
    """The i-th request's messages: a differently coloured and sized picture and one of QUESTIONS."""
    buffer = io.BytesIO()
    Image.new("RGB", (64 + 16 * (i % 4), 64), ((40 * i) % 256, 200 - 10 * i, 90)).save(buffer, "PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": QUESTIONS[i % len(QUESTIONS)]}]}]  # fmt: skip


def ask(base_url: str, messages: list[dict], new_tokens: int) -> str:
    body = {"messages": messages, "max_tokens": new_tokens, "temperature": 0}
    request = urllib.request.Request(f"{base_url}/v1/chat/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=1800) as response:
        return json.loads(response.read())["choices"][0]["message"]["content"]


def measure(model_dir: Path, clients: int = 8, new_tokens: int = 16) -> dict[str, float]:
    """Seconds for `clients` requests one by one and concurrently, their ratio and the largest batch."""
    requests = [image_question(i) for i in range(clients)]
    with running_server("--model_name_or_path", str(model_dir), "--max_batch_size", str(clients)) as url:
        ask(url, requests[0], 2)  # warm-up: first-call allocations
        start = time.perf_counter()
        alone = [ask(url, r, new_tokens) for r in requests]
        one_by_one = time.perf_counter() - start
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=clients) as pool:
            together = list(pool.map(lambda r: ask(url, r, new_tokens), requests))
        concurrent = time.perf_counter() - start
        largest = health(url)["largest_batch"]
    if together != alone:
        raise SystemExit(f"answers differ between one-by-one and concurrent requests: {alone} vs {together}")
    return {"one_by_one_seconds": one_by_one, "concurrent_seconds": concurrent, "ratio": one_by_one / concurrent,
            "largest_batch": largest}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", nargs="+", help="model folders (default: build a tiny and a mid-size model)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--new_tokens", type=int, default=16)
    args = parser.parse_args()
    if args.model_dir:
        models = {str(p): Path(p) for p in args.model_dir}
    else:
        from generation_speed import MID_SIZE  # the sibling script (this folder is on sys.path when run)

        work = Path(tempfile.mkdtemp(prefix="serve-batching-"))
        models = {"tiny qwen2_5_vl": build_tiny_qwen2_5_vl(work / "tiny"),
                  "mid-size qwen2_5_vl": build_tiny_qwen2_5_vl(work / "mid", **MID_SIZE)}  # fmt: skip
    print(f"{'model':<22} {'clients':>7} {'one by one s':>12} {'concurrent s':>12} {'ratio':>6} {'batch':>5}")
    for name, folder in models.items():
        r = measure(folder, args.clients, args.new_tokens)
        print(f"{name:<22} {args.clients:>7} {r['one_by_one_seconds']:>12.2f} {r['concurrent_seconds']:>12.2f} "
              f"{r['ratio']:>5.2f}x {r['largest_batch']:>5}", flush=True)  # fmt: skip
        print(json.dumps({"model": name, **r}), file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
