"""Base tensors the model does not hold are carried unchanged into full saves (paddlemix/models/carried.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from paddlemix.models.carried import carried_tensors, save_with_carried
from paddlemix.models.paddleocr_vl import paddle_name
from paddlemix.utils.safetensors_stream import checkpoint_entries, read_tensor, write_file

HEAD = "visual.vision_model.head."


def write_base(folder: Path, tensors: dict[str, np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def test_only_names_the_export_lacks_are_carried(tmp_path: Path) -> None:
    """Either transformers generation's spelling of an exported tensor counts as exported; a tied head is not
    carried (the export leaves it out on purpose)."""
    z = np.zeros(2, dtype=np.float32)
    base = write_base(tmp_path / "base", {HEAD + "probe": z, HEAD + "mlp.fc1.weight": z, "model.projector.linear_1.bias": z,
                                          "model.language_model.norm.weight": z, "lm_head.weight": z})  # fmt: skip
    exported = {"mlp_AR.linear_1.bias", "model.norm.weight"}
    names = [e.name for e in carried_tensors(base, exported, paddle_name, tied_head=True)]
    assert names == [HEAD + "mlp.fc1.weight", HEAD + "probe"]  # file order (sorted by safetensors)
    untied = [e.name for e in carried_tensors(base, exported, paddle_name)]
    assert "lm_head.weight" in untied
    assert carried_tensors(tmp_path / "no_weights", exported, paddle_name) == []


def test_save_with_carried_copies_bytes_unchanged(tmp_path: Path) -> None:
    """A bfloat16 base tensor (written from raw uint16 bits) keeps its dtype code and bytes next to float32 exports."""
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**16, (3, 5), dtype=np.uint16)
    base = tmp_path / "base"
    base.mkdir()
    write_file(
        base / "model.safetensors", [(HEAD + "probe", "BF16", bits.shape)], lambda _, f: f.write(bits.tobytes()), {}
    )
    carried = carried_tensors(base, {"w"}, paddle_name)
    assert [(e.name, e.dtype) for e in carried] == [(HEAD + "probe", "BF16")]
    weights = {"w": rng.normal(size=(4, 2)).astype(np.float32), "n": np.arange(3, dtype=np.int64)}
    save_with_carried(weights, carried, tmp_path / "out.safetensors")
    entries = {e.name: e for e in checkpoint_entries(tmp_path, skip=())}
    assert entries[HEAD + "probe"].dtype == "BF16"
    probe = entries[HEAD + "probe"]
    assert (tmp_path / "out.safetensors").read_bytes()[probe.start : probe.end] == bits.tobytes()
    np.testing.assert_array_equal(read_tensor(entries["w"]), weights["w"])
    np.testing.assert_array_equal(read_tensor(entries["n"]), weights["n"])
