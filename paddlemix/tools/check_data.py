"""Check all training and eval data of an argument file before training: skips and reasons, token lengths after
image and video expansion, records over max_length and (with mixtoken) the MIXToken fill. Loads the tokenizer and
processor, not the model; the checks read image and video headers only (--show and --dump encode their samples).

Usage: python paddlemix/tools/check_data.py ARGS.json [--key value ...] [--report FILE] [--show N] [--dump FILE]
The JSON report goes to FILE (default: OUTPUT_DIR/data_report.json); its "verdict" is "pass", "warn" (records
would be skipped, training goes on) or "fail" (training would stop: no usable training record, skips over
max_skip_ratio, a source whose records all fail, no usable eval record while eval is on), with the reasons.
Exit code: 0 pass or warn, 1 fail, 2 a mistake in the arguments.
--show N prints the first N encoded samples of each source as text: a head line with its images' grids or its
videos (count, sampled frames, video tokens, grids), labelled spans (what the loss trains) between [[ and ]], each
run of image or video tokens as one `<token>xCOUNT`, a special-token string typed as text as \\<token>.
--dump FILE writes those samples (N, default 5) as JSON lines: source, file, index, input_ids, labels (aligned with
input_ids, -100 where untrained), image_grid_thw, with videos video_grid_thw, video_frames and video_tokens (per
video), and position_ids.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from paddlemix import arguments
from paddlemix.utils.errors import UserError, exit_on_user_error
from paddlemix.utils.logging import quiet_console

FIRST_RECORDS = 3  # records of each source whose training and inference encodings are compared


def template_problems(sources: list, encoder: object, templates: list, reader: Any = None) -> dict[str, str | None]:
    """Per source, the paragraph `template_report` gives for its template on a probe conversation and its first
    records (None when training and inference encode alike). `reader` reads a source's conversations (default
    `SourceDataset`; preference pairs: `PairSidesDataset`)."""
    from paddlemix.datasets.encoded import source_names
    from paddlemix.datasets.sources import SourceDataset
    from paddlemix.processors.template_check import template_report

    out = {}
    for name, source, template in zip(source_names(sources), sources, templates):
        data = (reader or SourceDataset)(source)
        samples = []
        for i in range(min(FIRST_RECORDS, len(data))):
            try:
                samples.append(data[i])
            except Exception:  # noqa: BLE001 - unreadable records are counted by the skip checks
                continue
        out[name] = template_report(encoder, template, f'source "{name}"', samples)
    return out


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    report_path = None
    if "--report" in argv:
        k = argv.index("--report")
        if k + 1 >= len(argv):
            raise UserError('command line: "--report" needs a file name.')
        report_path = argv[k + 1]
        del argv[k : k + 2]
    show, dump = preview_options(argv)
    quiet_console()
    args = arguments.load(argv[0], argv[1:])
    for note in args.notes:  # PaddleMIX keys ignored or translated, precision on this device
        print(note, file=sys.stderr)

    from tqdm import tqdm

    from paddlemix.datasets.checks import check_split, format_report, verdict
    from paddlemix.datasets.encoded import build_encoder
    from paddlemix.datasets.sources import SourceDataset
    from paddlemix.models import adapter_for
    from paddlemix.processors.chat_template import template_for

    start = time.perf_counter()
    adapter = adapter_for(args.model.model_name_or_path)
    processor = adapter.load_processor(args.model.model_name_or_path)
    encoder = build_encoder(adapter, processor, args.data)
    measure, source_type, conversations, unit = encoder, SourceDataset, SourceDataset, "records"
    if args.preference.stage == "dpo":  # preference pairs, measured as the one-sequence rows training builds
        from paddlemix.datasets.pair_packing import PairProcessor
        from paddlemix.datasets.pairs import PairSidesDataset, PairSourceDataset

        measure, source_type, unit = PairProcessor(encoder, positions=None), PairSourceDataset, "pairs"
        conversations = PairSidesDataset  # previews and template checks: each side as the conversation it trains
    splits = {"train": args.data.train, "eval": args.data.eval}
    total = sum(len(source_type(s)) for sources in splits.values() for s in sources)
    report = {"max_length": args.data.max_length, "unit": unit, "splits": {}}
    with tqdm(total=total, desc="checking records", unit="rec", file=sys.stderr) as progress:
        for split, sources in splits.items():
            if sources:
                templates = [template_for(processor, s.chat_template, s.keep_empty_think) for s in sources]
                report["splits"][split] = check_split(sources, measure, templates, args.data.max_length,
                                                      args.data.pack_window, progress, args.data.packing,
                                                      source_type)  # fmt: skip
                report["splits"][split]["templates"] = template_problems(sources, encoder, templates, conversations)
    add_special_text_counts(report, splits, encoder, source_type)
    report["seconds"] = round(time.perf_counter() - start, 2)
    report["records"] = total
    report.update(verdict(report, args.data.max_skip_ratio, args.training.do_train, args.training.do_eval))
    out = Path(report_path or Path(args.training.output_dir) / "data_report.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(format_report(report))
    print(format_special_text(report, args.data.split_special_tokens))
    for split in report["splits"].values():
        for problem in split["templates"].values():
            if problem:
                print(f"warning: {problem}")
    print(f"{total} {unit} checked in {report['seconds']} s; report: {out}")
    if show or dump:
        preview(args, adapter, processor, encoder, splits, show, dump, conversations)
    sys.exit(print_verdict(report))


def _take_option(argv: list[str], name: str) -> str | None:
    """Remove `name VALUE` from `argv` and return VALUE (None when absent)."""
    if name not in argv:
        return None
    k = argv.index(name)
    if k + 1 >= len(argv):
        raise UserError(f'command line: "{name}" needs a value.')
    value = argv[k + 1]
    del argv[k : k + 2]
    return value


def preview_options(argv: list[str]) -> tuple[int, str | None]:
    """(--show N, --dump FILE) taken out of `argv`; N must be a non-negative integer."""
    show, dump = _take_option(argv, "--show"), _take_option(argv, "--dump")
    if show is not None and not show.isdigit():
        raise UserError(f'command line: "--show" needs a number of samples, got {show!r}.')
    return int(show or 0), dump


def add_special_text_counts(report: dict, splits: dict, encoder: Any, reader: Any = None) -> None:
    """Per source, the records whose text types special-token strings (`special_token_text` in the report);
    `reader` reads a source's records (default `SourceDataset`)."""
    from paddlemix.datasets.encoded import source_names
    from paddlemix.datasets.preview import special_text_records
    from paddlemix.datasets.sources import SourceDataset

    for split, sources in splits.items():
        for name, source in zip(source_names(sources), sources):
            counts = special_text_records((reader or SourceDataset)(source), encoder.special_tokens)
            report["splits"][split]["sources"][name]["special_token_text"] = counts


def format_special_text(report: dict, split_special_tokens: bool) -> str:
    """One line per source whose records type special-token strings, saying how they are encoded."""
    how = ("encoded as plain text (split_special_tokens: true)" if split_special_tokens
           else "encoded as control tokens (split_special_tokens: false)")  # fmt: skip
    lines = []
    for split, r in report["splits"].items():
        for name, s in r["sources"].items():
            found = s.get("special_token_text") or {}
            if found.get("records"):
                strings = ", ".join(f"{k} x{n}" for k, n in found["strings"].items())
                lines.append(f"{split} {name}: {found['records']} records type special-token text ({strings}), "
                             f"{how}; e.g. {found['examples'][0]}")  # fmt: skip
    return "\n".join(lines) or "no record types special-token text"


def preview(args: Any, adapter: Any, processor: Any, encoder: Any, splits: dict, show: int, dump: str | None,
            reader: Any = None) -> None:  # fmt: skip
    """Print (--show) and/or write (--dump) the first encoded samples of every source (`reader` reads them; a
    preference pair shows as its chosen and its rejected conversation)."""
    from paddlemix.datasets.encoded import source_names
    from paddlemix.datasets.preview import DEFAULT_DUMP_SAMPLES, collapsed_tokens, encoded_preview, format_preview
    from paddlemix.datasets.sources import SourceDataset
    from paddlemix.processors.chat_template import template_for

    positions = adapter.position_fn(adapter.load_config(args.model.model_name_or_path)) if dump else None
    collapse = collapsed_tokens(processor.tokenizer, (encoder.vision.image_token, "<|video_pad|>"))
    entries = []
    for sources in splits.values():
        for name, source in zip(source_names(sources), sources):
            template = template_for(processor, source.chat_template, source.keep_empty_think)
            count = show or DEFAULT_DUMP_SAMPLES
            samples = encoded_preview((reader or SourceDataset)(source), name, encoder, template, count, positions)
            for entry in samples[:show]:
                print(format_preview(entry, processor.tokenizer, collapse, encoder.special_tokens))
            entries += samples
    if dump:
        Path(dump).parent.mkdir(parents=True, exist_ok=True)
        with open(dump, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(entry) + "\n" for entry in entries)
        print(f"{len(entries)} encoded samples written to {dump}")


def print_verdict(report: dict) -> int:
    """The verdict line (and each reason) on the console; the exit code: 1 when training would stop, else 0."""
    if report["verdict"] == "fail":
        reasons = "\n".join(f"  - {p}" for p in report["problems"])
        print(f"\nverdict: fail, training would stop:\n{reasons}", file=sys.stderr)
        return 1
    warnings = "".join(f"\n  - {w}" for w in report["warnings"])
    print(f"verdict: {report['verdict']}" + (f", training goes on:{warnings}" if warnings else ""))
    return 0


if __name__ == "__main__":
    main()
