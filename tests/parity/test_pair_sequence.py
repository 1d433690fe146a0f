"""One sequence per pair must not change what preference training computes: the answer log-probs, the DPO loss and
its gradients equal those of the chosen and rejected conversations run as separate sequences (the plain 2N batch)
to float tolerance (float32, CPU), also with several pairs packed in one row and with the two-sequence fallback."""

from __future__ import annotations

import numpy as np
import paddle
import pytest

from paddlemix.auto import AutoModelMIX, AutoProcessorMIX
from paddlemix.datasets.collator import Collator, to_tensors
from paddlemix.datasets.conversation import Message
from paddlemix.datasets.pair_packing import PairProcessor, join_pairs
from paddlemix.datasets.pairs import Pair
from paddlemix.models import adapter_for
from paddlemix.processors.chat_template import template_for
from paddlemix.processors.sample_processor import IGNORE_INDEX
from paddlemix.trainer.dpo_loss import PreferenceLoss
from paddlemix.trainer.preference import answer_logps

FAMILIES = {"qwen2_5_vl": "tiny_model_dir", "qwen3_vl": "tiny_qwen3_vl_dir", "qwen2_vl": "tiny_qwen2_vl_dir",
            "llava": "tiny_llava_dir"}  # fmt: skip
GRAD_PARAMS = ("lm_head.weight",)


@pytest.fixture(scope="module", params=list(FAMILIES))
def setup(request, shapes_data: dict):
    model_dir = request.getfixturevalue(FAMILIES[request.param])
    processor = AutoProcessorMIX.from_pretrained(model_dir)
    adapter = adapter_for(model_dir)
    model = AutoModelMIX.from_pretrained(model_dir)
    model.eval()
    encoder = adapter.sample_processor(processor, 1024)
    pairs = PairProcessor(encoder, adapter.position_fn(model.config))
    images = sorted(str(p) for p in (shapes_data["train"].parent / "images").glob("train_*.png"))
    return model, encoder, pairs, template_for(processor), images, processor.tokenizer.pad_token_id


def make_pairs(images: list[str]) -> list[Pair]:
    u = lambda text: Message("user", text)  # noqa: E731
    return [
        Pair((u("<image>What color is the circle?"),), "red", "a green square", (images[0],)),
        Pair((u("What is two plus two?"), Message("assistant", "four", loss=False), u("And three?")), "three", "five"),
        Pair((u("<image><image>Same colour?"),), "no, they differ", "yes", tuple(images[1:3])),
        # ms-swift rejected_images: the rejected side shows another image -> two sequences in one row
        Pair((u("<image>Name the colour."),), "blue", "blue", (images[3],), rejected_images=(images[4],)),
    ]


def oracle_logps(model, encoder, template, pair: Pair) -> list[float]:
    """Summed answer log-probs of each side, its full conversation run alone as the model does for SFT."""
    out = []
    for sample in (pair.chosen_sample(), pair.rejected_sample()):
        enc = encoder(sample, template)
        inputs = {k: paddle.to_tensor(v[None] if k == "input_ids" else v) for k, v in enc.items() if k != "labels"}
        logits = model(**inputs).logits[0].astype("float32")  # [L, vocab]
        logp = paddle.nn.functional.log_softmax(logits, axis=-1).numpy()
        labels = enc["labels"]
        scored = np.flatnonzero(labels != IGNORE_INDEX)
        out.append(float(logp[scored, labels[scored]].sum()))
    return out


@pytest.mark.parametrize("packed", [False, True])
def test_one_sequence_logps_equal_separate_sequences(setup, packed: bool) -> None:
    model, encoder, processor, template, images, pad_id = setup
    pairs = make_pairs(images)
    features = [processor(p, template) for p in pairs]
    assert len(features[0]["input_ids"]) < sum(len(encoder(s, template)["input_ids"])
                                               for s in (pairs[0].chosen_sample(), pairs[0].rejected_sample()))  # fmt: skip
    rows = [join_pairs(features[:2]), join_pairs(features[2:])] if packed else features
    batch = to_tensors(Collator(pad_id)(rows))
    head_rows = []
    hook = model.lm_head.register_forward_pre_hook(lambda layer, args: head_rows.append(args[0].shape[0]))
    with paddle.no_grad():
        logps, counts = answer_logps(model, batch)
    hook.remove()
    assert head_rows == [int(counts.sum())]  # the LM head maps the scored positions only, never [B, L, vocab]
    expected = [v for p in pairs for v in oracle_logps(model, encoder, template, p)]
    np.testing.assert_allclose(logps.numpy(), expected, rtol=1e-5, atol=1e-5)
    assert int(batch["label_tokens"]) == len(pairs)
    assert (counts.numpy() > 0).all()


def test_one_sequence_loss_and_gradients_equal_separate_sequences(setup) -> None:
    model, encoder, processor, template, images, pad_id = setup
    pairs = make_pairs(images)[:3]
    loss_fn = PreferenceLoss("sigmoid", beta=0.1)
    params = dict(model.named_parameters())
    ref = paddle.to_tensor(np.linspace(-30.0, -10.0, 2 * len(pairs)).astype("float32"))  # any fixed reference

    def grads(total: paddle.Tensor) -> tuple[float, np.ndarray]:
        model.clear_gradients()
        total.backward()
        return float(total), params[GRAD_PARAMS[0]].grad.numpy().copy()

    batch = to_tensors(Collator(pad_id)([join_pairs([processor(p, template) for p in pairs])]))
    logps, counts = answer_logps(model, batch)
    loss = loss_fn(logps[0::2], logps[1::2], ref[0::2], ref[1::2], counts[0::2], counts[1::2])[0].sum()
    one_loss, one_grad = grads(loss)
    separate = []
    for pair in pairs:
        for sample in (pair.chosen_sample(), pair.rejected_sample()):
            enc = encoder(sample, template)
            inputs = {k: paddle.to_tensor(v[None] if k == "input_ids" else v) for k, v in enc.items() if k != "labels"}
            logp = paddle.nn.functional.log_softmax(model(**inputs).logits[0].astype("float32"), axis=-1)
            scored = np.flatnonzero(enc["labels"] != IGNORE_INDEX)
            picked = paddle.gather(logp, paddle.to_tensor(scored))
            separate.append(paddle.take_along_axis(picked, paddle.to_tensor(enc["labels"][scored])[:, None], 1).sum())
    two = paddle.stack(separate)
    loss2 = loss_fn(two[0::2], two[1::2], ref[0::2], ref[1::2], counts[0::2], counts[1::2])[0].sum()
    two_loss, two_grad = grads(loss2)
    assert abs(one_loss - two_loss) <= 1e-5
    np.testing.assert_allclose(one_grad, two_grad, rtol=1e-4, atol=1e-6)
    assert np.abs(one_grad).max() > 0
