"""Build a LLaVA model folder from a CLIP vision model and a Qwen2/Llama language model (both local HF folders).

Adds the "<image>" token to the LM's tokenizer, grows its embeddings, aligns the pad token, initialises the MLP
projector and writes model, tokenizer and processor files that transformers' LlavaForConditionalGeneration loads.

Usage: python paddlemix/tools/build_llava.py --vision_model CLIP_DIR --language_model LLM_DIR --output_dir DIR
         [--vision_feature_layer -2] [--vision_feature_select_strategy default] [--chat_template FILE] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys

from paddlemix.utils.errors import exit_on_user_error
from paddlemix.utils.logging import quiet_console


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vision_model", required=True, help="CLIPVisionModel or CLIPModel folder")
    p.add_argument("--language_model", required=True, help="Qwen2ForCausalLM or LlamaForCausalLM folder")
    p.add_argument("--output_dir", required=True, help="new (or empty) folder for the LLaVA model")
    p.add_argument("--vision_feature_layer", type=int, default=-2, help="vision hidden state fed to the projector")
    p.add_argument("--vision_feature_select_strategy", default="default", choices=["default", "full"],
                   help='"default" drops the class token, "full" keeps it')  # fmt: skip
    p.add_argument("--chat_template", help="chat_template.json or Jinja file (default: the LM's own template)")
    p.add_argument("--seed", type=int, default=0, help="seed of the projector's initial weights")
    return p.parse_args(argv)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = parse(sys.argv[1:] if argv is None else argv)
    quiet_console()
    from paddlemix.models.llava.build import build_llava, read_chat_template

    template = read_chat_template(args.chat_template) if args.chat_template else None
    out = build_llava(
        args.vision_model,
        args.language_model,
        args.output_dir,
        vision_feature_layer=args.vision_feature_layer,
        vision_feature_select_strategy=args.vision_feature_select_strategy,
        chat_template=template,
        seed=args.seed,
    )
    print(f"LLaVA model written to {out}")


if __name__ == "__main__":
    main()
