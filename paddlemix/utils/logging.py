"""A console of a few dozen lines per run: what Paddle, paddleformers and transformers print that tells a user nothing
is filtered here, and only here. Every setting and every step stays on disk (run_args.json, train_log.jsonl).

`quiet_console()` runs first in every entry point, before paddle or paddleformers are imported, so the filters are in
place when their import-time messages are logged. It sets no environment variables and changes no library setting
other than log levels and filters; `PADDLEMIX_VERBOSE=1` turns all of it off.
"""

from __future__ import annotations

import logging
import os
import re
import warnings

FORMAT = "[%(asctime)s] %(levelname)s %(name)s: %(message)s"

# paddleformers logs through one logger, "PaddleFormers" (its own handler, level DEBUG, no propagation).
# Each pattern below is a message that repeats or describes nothing the user chose; why it goes, per line:
PADDLEFORMERS_NOISE = (
    # every processor/tokenizer load says where it *would* download from; this toolkit never downloads
    r"Using download source",
    r"[Ll]oading (configuration|weights) file",
    # import-time notes about PyTorch interop and flash-attention flags, which do not apply to a Paddle run
    r"Due to potential compatibility issues between PaddlePaddle and PyTorch",
    r"Flag FLAGS_flash_attn_version cannot set",
    r"fa_version = ",
    r"Auto set hybrid_parallel_expert_grad_scale",
    r"loss_subbatch_sequence_length",
    # a notice about a future paddleformers default; this toolkit passes report_to explicitly where it matters
    r"The default value for the training argument `--report_to` will change",
    # one line per optimizer step; every step is in output_dir/train_log.jsonl and the progress bar shows the rate
    r"^loss: ",
    r"^\[DataLoad global_step",
    r"^\[timelog\]",
    r"^global_save_step",
    # fleet's DistributedStrategy table (about 70 lines), logged once by TrainingArguments under TP, PP or sharding;
    # the degrees in use are in the run's own start-up lines
    r"DistributedStrategy Overview",
    r"^Saving (model checkpoint|optimizer files)",
    # the evaluation header repeats at every evaluation; its result line stays
    r"^\*\*\*\*\* Running Evaluation",
    r"^  (Num examples|Total prediction steps|Pre device batch size|Total Batch size) = ",
    r"The global seed is set to",
    r"max_steps is given, it will override",
    # sys.maxsize for a pack stream, which has no length; the MIXToken line before it gives the planned epochs
    r"^  Num Epochs = 9223372036854775807",
)
# Messages shown once, however often they are logged (generation logs this for every generated batch).
PADDLEFORMERS_ONCE = (r"Setting `pad_token_id` to `eos_token_id`",)
# transformers is imported by paddleformers for its tokenizers only; it announces that PyTorch is missing, which is
# expected in the Paddle environment.
TRANSFORMERS_NOISE = (r"PyTorch was not found",)
# Python warnings from Paddle's build helpers, setuptools and its single-process distributed setup.
WARNING_NOISE = (
    r"No ccache found",
    r"Setuptools is replacing distutils",
    r"Currently not a parallel execution environment",
    r"Current global rank \d+ is not in group",
    r"The input state dict is empty",
)
# Lines in the log of a launched process that the single-process tool never prints, dropped from the console that
# train.sh shows (the process's log file keeps them): the FLAGS banner and the parallel-environment notices of
# Paddle's distributed start, and the compiler-cache notice of Paddle's import. Bytes, as the logs are read.
LAUNCH_NOISE = (
    rb"^=+ Modified FLAGS detected =+$",
    rb"^FLAGS\(name=",
    rb"^=+$",
    rb"fleet\.py:\d+ - The dygraph (hybrid )?parallel environment has been initialized",
    rb"No ccache found",
    rb"^  warnings\.warn\(warning_message\)$",
)
# Paddle's C++ (glog) lines: gloo/NCCL set-up, the data-parallel reducer's advice. They start anywhere, even right
# behind a progress bar that is being redrawn ("I1207 06:12:20.984134 13861 tcp_store.cc:336] ...").
GLOG_LINE = rb"[IWE]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ [\w.]+:\d+\] "
# Paddle's fleet logger: topology, checkpoint metadata and resharding details at INFO on every save and load (a
# filter, not a level: Paddle sets the level itself when it creates the logger).
FLEET_LOGGER = "paddle.distributed.fleet.utils.log_util"


class MessageFilter(logging.Filter):
    """Drop records whose message matches `drop`, and all but the first of those matching `once`; with
    `min_level`, also drop records below it (paddleformers' settings dump is logged at DEBUG)."""

    def __init__(self, drop: tuple[str, ...] = (), once: tuple[str, ...] = (), min_level: int = logging.NOTSET):
        super().__init__()
        self.drop = re.compile("|".join(drop)) if drop else None
        self.once = [re.compile(p) for p in once]
        self.seen: set[int] = set()
        self.min_level = min_level

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < self.min_level:
            return False
        message = record.getMessage()
        if self.drop is not None and self.drop.search(message):
            return False
        for i, pattern in enumerate(self.once):
            if pattern.search(message):
                if i in self.seen:
                    return False
                self.seen.add(i)
        return True


def quiet_console() -> None:
    """Install the filters above and our own log format; safe to call more than once."""
    logging.basicConfig(level=logging.INFO, format=FORMAT)
    if os.environ.get("PADDLEMIX_VERBOSE") == "1":
        return
    for pattern in WARNING_NOISE:
        warnings.filterwarnings("ignore", message=f".*{pattern}")
    _filter_logger("PaddleFormers", MessageFilter(PADDLEFORMERS_NOISE, PADDLEFORMERS_ONCE, logging.INFO))
    _filter_logger("transformers", MessageFilter(TRANSFORMERS_NOISE))
    _filter_logger(FLEET_LOGGER, MessageFilter(min_level=logging.WARNING))
    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # its font cache is built once, at the first plot


def _filter_logger(name: str, new: MessageFilter) -> None:
    """Logger-level filters see every record logged on that logger, even before the library adds its handler."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, MessageFilter) for f in logger.filters):
        logger.addFilter(new)
