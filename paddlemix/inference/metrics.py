"""Scores of generated answers against references, through maintained libraries: sacrebleu (BLEU), rouge-score
(ROUGE-L) and rapidfuzz (edit distances). Every per-record metric takes the best over a record's references.

    exact_match        normalised prediction == a normalised reference (VQA: lowercase, trimmed, outer punctuation off)
    relaxed_accuracy   ChartQA: numbers within 5 % relative error ("12%" = 0.12), else case-insensitive equality
    anls               DocVQA: 1 - normalised Levenshtein distance, 0 when that distance is 0.5 or more
    edit_distance      normalised Levenshtein distance (distance / longer length; lower is better)
    cer                character error rate over the whole file: total edit distance / total reference characters
    bleu               corpus BLEU-4 of sacrebleu (13a tokens, 0-100)
    rouge_l            ROUGE-L F1 of rouge-score (0-100, lowercased alphanumeric tokens)

Table values are means over records in percent, except `cer` (a fraction) and `bleu` (corpus level).
`ocr_scores` gives the transcription scores of evaluation by generation (raw text, one reference per record).
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import Any

from paddlemix.utils.errors import UserError

RELAXED_TOLERANCE = 0.05
ANLS_THRESHOLD = 0.5
METRICS = ("exact_match", "relaxed_accuracy", "anls", "edit_distance", "cer", "bleu", "rouge_l")


def _need(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(
            f"scoring needs {module.split('.')[0]}. Install the eval extra: pip install -e '.[eval]'."
        ) from None


def normalize(text: str) -> str:
    """Lowercase, trim and drop surrounding punctuation, as VQA exact-match scoring does."""
    return text.strip().lower().strip(string.punctuation + " ")


def exact_match(prediction: str, references: Sequence[str]) -> float:
    return float(any(normalize(prediction) == normalize(r) for r in references))


def _number(text: str) -> float | None:
    text = text.strip().replace(",", "")
    try:
        return float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        return None


def relaxed_accuracy(prediction: str, references: Sequence[str]) -> float:
    """ChartQA's relaxed correctness: a number within 5 % of a numeric reference, else equal text (case off)."""
    for reference in references:
        p, r = _number(prediction), _number(reference)
        if p is not None and r is not None:
            if (p == r) if r == 0 else abs(p - r) / abs(r) <= RELAXED_TOLERANCE:
                return 1.0
        elif prediction.strip().lower() == reference.strip().lower():
            return 1.0
    return 0.0


def _docvqa(text: str) -> str:
    return " ".join(text.strip().lower().split())


def edit_distance(prediction: str, references: Sequence[str]) -> float:
    """Smallest normalised Levenshtein distance to a reference (0 = equal, 1 = nothing in common)."""
    levenshtein = _need("rapidfuzz.distance").Levenshtein
    return min(levenshtein.normalized_distance(_docvqa(prediction), _docvqa(r)) for r in references)


def anls(prediction: str, references: Sequence[str]) -> float:
    distance = edit_distance(prediction, references)
    return 1.0 - distance if distance < ANLS_THRESHOLD else 0.0


def character_errors(prediction: str, references: Sequence[str]) -> tuple[int, int]:
    """(edit distance, reference length) in characters against the closest reference, for the CER sums."""
    levenshtein = _need("rapidfuzz.distance").Levenshtein
    return min((levenshtein.distance(prediction, r), len(r)) for r in references)


def ocr_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """Transcription scores of answers against one reference each, on the raw text (case, spaces and punctuation
    count, as OCR benchmarks score): per record the normalised Levenshtein distance (distance / longer length, 0 =
    equal); over the file its mean (`edit_distance`) and the character error rate (`cer`: total distance / total
    reference characters). Needs rapidfuzz (the eval extra).

    Returns:
        {"edit_distances": [float per record], "edit_distance": float, "cer": float}; empty inputs give 0.0.

    Raises:
        UserError: rapidfuzz is not installed.
    """
    levenshtein = _need("rapidfuzz.distance").Levenshtein
    per_record = [levenshtein.normalized_distance(p, r) for p, r in zip(predictions, references)]
    errors = sum(levenshtein.distance(p, r) for p, r in zip(predictions, references))
    characters = sum(len(r) for r in references)
    return {"edit_distances": per_record, "edit_distance": sum(per_record) / max(len(per_record), 1),
            "cer": errors / max(characters, 1)}  # fmt: skip


def rouge_l(prediction: str, references: Sequence[str]) -> float:
    scorer = _need("rouge_score.rouge_scorer").RougeScorer(["rougeL"])
    return max(scorer.score(r, prediction)["rougeL"].fmeasure for r in references)


def sentence_bleu(prediction: str, references: Sequence[str]) -> float:
    """sacrebleu's sentence BLEU (exponential smoothing) as a fraction in [0, 1]; 0 for an empty prediction."""
    if not prediction.strip():
        return 0.0
    return _need("sacrebleu").sentence_bleu(prediction, list(references)).score / 100


def corpus_bleu(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """sacrebleu's corpus BLEU (0-100). Records with fewer references repeat their first one, which changes
    neither clipped counts nor the closest reference length."""
    width = max((len(r) for r in references), default=1)
    streams = [[refs[k] if k < len(refs) else refs[0] for refs in references] for k in range(width)]
    return _need("sacrebleu").corpus_bleu(list(predictions), streams).score


def score_records(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """The metrics table of a file: means in percent, `cer` as a fraction, corpus BLEU. Raises ValueError when a
    record has no reference."""
    if any(not refs for refs in references):
        raise ValueError("every record needs at least one reference")
    n = max(len(predictions), 1)
    per_record = {"exact_match": exact_match, "relaxed_accuracy": relaxed_accuracy, "anls": anls,
                  "edit_distance": edit_distance, "rouge_l": rouge_l}  # fmt: skip
    table = {k: 100 * sum(f(p, r) for p, r in zip(predictions, references)) / n for k, f in per_record.items()}
    errors = [character_errors(p, r) for p, r in zip(predictions, references)]
    table["cer"] = sum(e for e, _ in errors) / max(sum(length for _, length in errors), 1)
    table["bleu"] = corpus_bleu(predictions, references) if predictions else 0.0
    return {k: table[k] for k in METRICS} | {"records": len(predictions)}


def format_table(table: dict[str, float]) -> str:
    """The metrics as an aligned two-column text table."""
    rows = [("records", str(table["records"]))]
    rows += [(k, f"{table[k]:.4f}" if k == "cer" else f"{table[k]:.2f}") for k in METRICS]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v:>8}" for k, v in rows)
