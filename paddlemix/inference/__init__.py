"""Serving and scoring what was trained: the OpenAI-compatible server (server.py, with its request batcher in
batching.py and image-source rules in media.py), evaluation by generation (evaluate.py) and its metrics
(metrics.py); KV-cache decoding (decoding.py) and generation (generation.py: `Generator`, the code path of
tools/infer.py)."""
