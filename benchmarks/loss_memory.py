"""Peak memory and time of the language-model loss step (head + cross-entropy, forward and backward) with the full
[tokens, vocab] logits versus the chunked loss, each in its own process on CPU, float32.

Usage: python benchmarks/loss_memory.py [--tokens 4096] [--vocab 151936] [--hidden 896] [--chunk 256]
Memory is the growth of the process's peak RSS over the RSS after inputs and weights exist.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def child(mode: str, tokens: int, vocab: int, hidden: int, chunk: int) -> dict[str, float]:
    import numpy as np
    import paddle
    import paddle.nn.functional as F

    from paddlemix.trainer.chunked_loss import chunked_lm_loss

    paddle.set_device("cpu")
    rng = np.random.default_rng(0)
    head = paddle.nn.Linear(hidden, vocab, bias_attr=False)
    h = paddle.to_tensor(rng.normal(size=(tokens, hidden)).astype("float32"))
    h.stop_gradient = False
    labels = paddle.to_tensor(rng.integers(0, vocab, tokens))
    base = rss_mb()
    start = time.perf_counter()
    if mode == "full":
        loss = F.cross_entropy(head(h), labels, reduction="mean")
    else:
        loss = chunked_lm_loss(head, h, labels, chunk)
    loss.backward()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"loss": float(loss), "seconds": seconds, "peak_mb": peak - base}


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        mode, *sizes = sys.argv[2:]
        print(json.dumps(child(mode, *map(int, sizes))))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--hidden", type=int, default=896)
    parser.add_argument("--chunk", type=int, default=256)
    args = parser.parse_args()
    sizes = [str(args.tokens), str(args.vocab), str(args.hidden), str(args.chunk)]
    results = {}
    for mode in ("full", "chunked"):
        out = subprocess.run([sys.executable, __file__, "--child", mode, *sizes], capture_output=True, text=True,
                             check=True)  # fmt: skip
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    full, chunked = results["full"], results["chunked"]
    print(f"{args.tokens} tokens x {args.vocab} vocab, hidden {args.hidden}, chunk {args.chunk}")
    for name, r in results.items():
        print(f"{name:>8}: loss {r['loss']:.6f}  peak +{r['peak_mb']:,.0f} MB  {r['seconds']:.2f} s")
    print(f"peak memory ratio full/chunked: {full['peak_mb'] / max(chunked['peak_mb'], 1e-9):.1f}x, "
          f"time ratio chunked/full: {chunked['seconds'] / full['seconds']:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
