"""TREC run files: ``qid Q0 docid rank score tag``, one line per retrieved document.

A run in memory is ``dict[qid, dict[docid, score]]`` (the shape pytrec_eval takes).

>>> import io
>>> buf = io.StringIO()
>>> write_run({"q1": {"d2": 1.5, "d1": 2.0}}, buf, tag="bm25")
>>> print(buf.getvalue(), end="")
q1 Q0 d1 1 2 bm25
q1 Q0 d2 2 1.5 bm25
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import IO, Union

from lsr.errors import DataFormatError
from lsr.io.readers import _check_file, _lines, check_id
from lsr.metrics import Run, ranked

__all__ = ["Run", "write_run", "read_run", "ranked", "format_score"]

def format_score(score: float) -> str:
    """Nine significant digits: float32 scores round-trip exactly, so the file ranks as memory does."""
    return f"{score:.9g}"


def write_run(run: Run, out: Union[str, os.PathLike, IO[str]], tag: str = "lsr") -> None:
    """Write a run in TREC format to a path (atomically) or an open text stream."""
    if not tag or any(c.isspace() for c in tag):
        raise ValueError(f"run tag must be one word, got {tag!r}")

    def emit(f: IO[str]) -> None:
        for qid, docs in run.items():
            why = check_id(str(qid))
            if why is not None:  # the file would not split back into six columns, or not encode
                raise ValueError(f"query id {ascii(qid)} {why}: not writable in a TREC run")
            for rank, (docid, score) in enumerate(ranked(docs), start=1):
                why = check_id(str(docid))
                if why is not None:
                    raise ValueError(f"query {qid!r}: document id {ascii(docid)} {why}: not writable in a TREC run")
                if not math.isfinite(score):
                    raise ValueError(f"query {qid!r}, document {docid!r}: score {score} is not finite")
                f.write(f"{qid} Q0 {docid} {rank} {format_score(score)} {tag}\n")

    if hasattr(out, "write"):
        emit(out)  # type: ignore[arg-type]
        return
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            emit(f)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_run(path: Union[str, os.PathLike]) -> Run:
    """Read a TREC run file; malformed lines raise :class:`DataFormatError` with the line."""
    path = _check_file(path)
    run: Run = {}
    for n, line in _lines(path):
        parts = line.split()
        if len(parts) != 6:
            raise DataFormatError(path, n, f"expected 6 columns 'qid Q0 docid rank score tag', found {len(parts)}")
        qid, _, docid, _, score, _ = parts
        try:
            value = float(score)
        except ValueError:
            raise DataFormatError(path, n, f"score {score!r} is not a number", "score") from None
        docs = run.setdefault(qid, {})
        if docid in docs:
            raise DataFormatError(path, n, f"document {docid!r} listed twice for query {qid!r}", "docid")
        docs[docid] = value
    return run
