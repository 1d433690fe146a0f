"""Check every record of the training and eval data before any model loads: what would be skipped and why, token
lengths after image expansion, and the fill MIXToken would reach. Reads image headers only, never pixels."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from paddlemix.arguments import DatasetSource
from paddlemix.datasets.conversation import SampleError, TooLongError, as_skip
from paddlemix.datasets.encoded import MIN_SEEN_FOR_BUDGET, MISFORMAT_PROBE, source_names
from paddlemix.datasets.packing import BestFitPacker, fill_ratio
from paddlemix.datasets.sources import SourceDataset
from paddlemix.processors.chat_template import ChatTemplate
from paddlemix.processors.sample_processor import SampleProcessor

TOO_LONG = "longer than max_length"


def length_stats(lengths: Sequence[int]) -> dict[str, float]:
    if not lengths:
        return {}
    a = np.asarray(lengths)
    return {"min": int(a.min()), "mean": float(a.mean()), "p50": float(np.percentile(a, 50)),
            "p95": float(np.percentile(a, 95)), "max": int(a.max())}  # fmt: skip


def reason_kind(err: SampleError) -> str:
    """Group reasons that differ only in paths and numbers (`image not found: a.png` -> `image not found`)."""
    if isinstance(err, TooLongError):
        return TOO_LONG
    return str(err).split(":")[0].split(" (")[0]


def check_source(
    source: DatasetSource, encoder: SampleProcessor, template: ChatTemplate, progress: Any = None,
    source_type: type[SourceDataset] = SourceDataset,
) -> tuple[dict[str, Any], list[int]]:  # fmt: skip
    """Per-source report and the lengths of its usable records (`source_type` / `encoder` for pairs: the pair
    reader and `PairProcessor`, lengths of one-sequence pairs)."""
    data = source_type(source)
    lengths, reasons, examples, skipped = [], Counter(), {}, []
    too_long, videos = [], []
    for i in range(len(data)):
        try:
            sample = data[i]
            lengths.append(encoder.length(sample, template))
            if getattr(sample, "videos", ()):
                file, index = data.locate(i)
                frames, tokens = encoder.video_summary(sample)
                videos.append({"file": str(file.path), "index": index, "videos": len(sample.videos),
                               "frames": frames, "video_tokens": tokens})  # fmt: skip
        except Exception as exc:  # the same verdict as training, which skips on any exception (EncodedDataset)
            err = as_skip(exc)
            kind = reason_kind(err)
            reasons[kind] += 1
            file, index = data.locate(i)
            examples.setdefault(kind, f"{file.path} #{index}: {err}")
            skipped.append({"file": str(file.path), "index": index, "reason": str(err)})
            if isinstance(err, TooLongError):
                too_long.append(err.length)
        if progress is not None:
            progress.update(1)
    report = {
        "records": len(data),
        "usable": len(lengths),
        "skipped": sum(reasons.values()),
        "skip_reasons": dict(reasons.most_common()),
        "examples": examples,
        "longer_than_max_length": len(too_long),
        "tokens": length_stats(lengths + too_long),
        "skipped_records": skipped,
    }
    if videos:  # per record with videos: sampled frames and video tokens (after sampling, from headers)
        report["video_records"] = videos
        report["video_frames"] = length_stats([v["frames"] for v in videos])
        report["video_tokens"] = length_stats([v["video_tokens"] for v in videos])
    return report, lengths


def check_split(
    sources: Sequence[DatasetSource], encoder: SampleProcessor, templates: Sequence[ChatTemplate],
    max_length: int, window: int, progress: Any = None, packing: bool = True,
    source_type: type[SourceDataset] = SourceDataset,
) -> dict[str, Any]:  # fmt: skip
    """Reports for every source of one split, plus (with `packing`) the MIXToken fill of all usable records."""
    reports, all_lengths = {}, []
    for name, source, template in zip(source_names(sources), sources, templates):
        reports[name], lengths = check_source(source, encoder, template, progress, source_type)
        all_lengths += lengths
    report = {
        "sources": reports,
        "records": sum(r["records"] for r in reports.values()),
        "usable": len(all_lengths),
        "skipped": sum(r["skipped"] for r in reports.values()),
        "tokens": length_stats(all_lengths),
    }
    if packing:
        packs = list(BestFitPacker(max_length, window).pack(enumerate(all_lengths)))
        report["mixtoken_fill"] = fill_ratio(packs, all_lengths, max_length) if packs else 0.0
        report["mixtoken_rows"] = len(packs)
    return report


def verdict(report: dict[str, Any], max_skip_ratio: float, do_train: bool, do_eval: bool) -> dict[str, Any]:
    """Whether training would stop on this data, by the rules the run applies (see `encoded.SkipLog` and
    `sft.preflight`): "fail" with the reasons when it would, "warn" when records would be skipped but training
    goes on, else "pass"."""
    problems, warnings = [], []
    splits = report["splits"]
    train = splits.get("train")
    if do_train and train is not None:
        if train["usable"] == 0:
            problems.append(f"no usable training record: all {train['records']} would be skipped")
        elif train["records"] and train["skipped"] / train["records"] > max_skip_ratio:
            share = f"{train['skipped']} of {train['records']} training records would be skipped"
            if train["records"] >= MIN_SEEN_FOR_BUDGET:
                problems.append(f"{share}, more than max_skip_ratio {max_skip_ratio:g}")
            else:
                warnings.append(f"{share}, more than max_skip_ratio {max_skip_ratio:g} (a run checks the share "
                                f"once {MIN_SEEN_FOR_BUDGET} samples were read, more than this data holds)")  # fmt: skip
    eval_split = splits.get("eval")
    if do_eval and eval_split is not None and eval_split["usable"] == 0:
        problems.append(f"no usable eval record (all {eval_split['records']} would be skipped) while eval is on")
    for split, r in splits.items():
        for name, s in r["sources"].items():
            if s["usable"] == 0 and s["skipped"] >= MISFORMAT_PROBE:
                problems.append(
                    f'{split} source "{name}": all its records fail, e.g. {next(iter(s["examples"].values()))}'
                )
            elif s["skipped"]:
                warnings.append(f'{split} source "{name}": {s["skipped"]} of {s["records"]} records would be skipped')
    return {"verdict": "fail" if problems else "warn" if warnings else "pass", "problems": problems,
            "warnings": warnings}  # fmt: skip


def format_report(report: dict[str, Any]) -> str:
    """A readable summary of `check_split` reports keyed by split."""
    lines, unit = [], report.get("unit", "records")
    for split, r in report["splits"].items():
        fill = ""
        if "mixtoken_fill" in r:  # only when packing is on
            fill = f"; MIXToken fill {r['mixtoken_fill']:.3f} in {r['mixtoken_rows']} rows of {report['max_length']}"
        lines.append(f"{split}: {r['usable']} usable, {r['skipped']} skipped{fill}")
        for name, s in r["sources"].items():
            t = s["tokens"]
            tokens = (
                f"tokens min {t['min']} mean {t['mean']:.0f} p95 {t['p95']:.0f} max {t['max']}" if t else "no tokens"
            )
            lines.append(f"  {name}: {s['records']} {unit}, {s['skipped']} skipped, "
                         f"{s['longer_than_max_length']} longer than max_length; {tokens}")  # fmt: skip
            if s.get("video_records"):
                f, v = s["video_frames"], s["video_tokens"]
                lines.append(f"    {len(s['video_records'])} records with video: frames min {f['min']} mean "
                             f"{f['mean']:.0f} max {f['max']}; video tokens min {v['min']} mean {v['mean']:.0f} "
                             f"max {v['max']}")  # fmt: skip
            for kind, n in s["skip_reasons"].items():
                lines.append(f"    {n:>6} x {kind}   e.g. {s['examples'][kind]}")
    return "\n".join(lines)
