"""The CPU stand-ins (paddlemix/distributed/cpu_collectives.py): fleet tensor parallel layers, a 2-stage pipeline
and sharding stages 2/3 run in 2 CPU processes and match one process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from paddlemix.distributed import cpu_collectives

TOYS = Path(__file__).with_name("fleet_toys.py")


def result_of(text: str) -> dict:
    lines = [line for line in text.splitlines() if line.startswith("RESULT ")]
    assert lines, text[-3000:]
    return json.loads(lines[-1][len("RESULT ") :])


def run_toy(name: str, tmp_path: Path) -> tuple[dict, list[dict]]:
    single = subprocess.run([sys.executable, str(TOYS), name], capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    logs = tmp_path / name
    proc = subprocess.run([sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir",
                           str(logs), str(TOYS), name], capture_output=True, text=True, timeout=600)  # fmt: skip
    texts = [(logs / f"workerlog.{i}").read_text() for i in range(2)]
    assert proc.returncode == 0, proc.stderr[-2000:] + texts[0][-3000:]
    assert "CPU stand-ins" in texts[0]
    return result_of(single.stdout), [result_of(t) for t in texts]


def test_install_is_off_unless_cpu_and_a_degree_above_one() -> None:
    assert not cpu_collectives.install("gpu", {"tensor": 2})
    assert not cpu_collectives.install("npu", {"sharding": 8})
    assert not cpu_collectives.install("cpu", {"tensor": 1, "pipeline": 1, "sharding": 1, "data": 4})


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize("toy", ["tp", "pp", "sharding", "collectives"])
def test_two_cpu_processes_match_one(toy: str, tmp_path: Path) -> None:
    single, ranks = run_toy(toy, tmp_path)
    for rank in ranks:
        assert rank.keys() == single.keys()
        for key in single:
            if not key.startswith("bytes_"):
                np.testing.assert_allclose(np.array(rank[key]), np.array(single[key]), rtol=1e-5, atol=1e-6,
                                           err_msg=key)  # fmt: skip
    if toy == "sharding":  # [parameter bytes, optimizer bytes] per rank vs one process
        stage2, stage3 = [r["bytes_os_g"] for r in ranks], [r["bytes_p_g_os"] for r in ranks]
        assert sum(b[1] for b in stage2) == single["bytes_os_g"][1] and all(b[0] == single["bytes_os_g"][0]
                                                                             for b in stage2)  # fmt: skip
        for params, state in stage3:  # the 2^20+ weight is split; the small tensors stay whole
            assert params < 0.55 * single["bytes_p_g_os"][0] and state < 0.55 * single["bytes_p_g_os"][1]
