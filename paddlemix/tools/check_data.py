"""Check all training and eval data of an argument file before training: skips and reasons, token lengths after
image expansion, records over max_length and the MIXToken fill. Loads the tokenizer and processor, not the model.

Usage: python paddlemix/tools/check_data.py ARGS.json [--key value ...] [--report FILE]
The JSON report goes to FILE (default: OUTPUT_DIR/data_report.json).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from paddlemix import arguments
from paddlemix.utils.errors import UserError, exit_on_user_error
from paddlemix.utils.logging import quiet_console


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
    quiet_console()
    args = arguments.load(argv[0], argv[1:])
    for note in args.notes:  # PaddleMIX keys ignored or translated, precision on this device
        print(note, file=sys.stderr)

    from tqdm import tqdm

    from paddlemix.datasets.checks import check_split, format_report
    from paddlemix.datasets.encoded import build_encoder
    from paddlemix.datasets.sources import SourceDataset
    from paddlemix.models import adapter_for
    from paddlemix.processors.chat_template import template_for

    start = time.perf_counter()
    adapter = adapter_for(args.model.model_name_or_path)
    processor = adapter.load_processor(args.model.model_name_or_path)
    encoder = build_encoder(adapter, processor, args.data)
    source_type, unit = SourceDataset, "records"
    if args.preference.stage == "dpo":  # preference pairs, measured as the one-sequence rows training builds
        from paddlemix.datasets.pair_packing import PairProcessor
        from paddlemix.datasets.pairs import PairSourceDataset

        encoder, source_type, unit = PairProcessor(encoder, positions=None), PairSourceDataset, "pairs"
    splits = {"train": args.data.train, "eval": args.data.eval}
    total = sum(len(source_type(s)) for sources in splits.values() for s in sources)
    report = {"max_length": args.data.max_length, "unit": unit, "splits": {}}
    with tqdm(total=total, desc="checking records", unit="rec", file=sys.stderr) as progress:
        for split, sources in splits.items():
            if sources:
                templates = [template_for(processor, s.chat_template) for s in sources]
                report["splits"][split] = check_split(sources, encoder, templates, args.data.max_length,
                                                      args.data.pack_window, progress, source_type)  # fmt: skip
    report["seconds"] = round(time.perf_counter() - start, 2)
    report["records"] = total
    out = Path(report_path or Path(args.training.output_dir) / "data_report.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(format_report(report))
    print(f"{total} records checked in {report['seconds']} s; report: {out}")


if __name__ == "__main__":
    main()
