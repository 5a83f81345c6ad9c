"""Read corpora, queries and qrels: BEIR directories, plain JSONL (or ``.jsonl.gz``), TSV and Parquet.

Every reader streams its file and stops at the first bad record with a
:class:`DataFormatError` that names the file, the line (or Parquet row) and the field.
Document and query ids must be usable in a TREC run file: non-empty, no whitespace of any
kind and encodable as UTF-8 (a JSON ``"\\ud800"`` escape is not).

>>> ds = load_beir("../shared/data/beir/scifact")            # doctest: +SKIP
>>> len(ds.corpus), len(ds.queries), ds.corpus.contents(0)[:40]  # doctest: +SKIP
(5183, 300, 'Microstructural development of human new')
"""
from __future__ import annotations

import gzip
import json
import logging
import math
import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from lsr.errors import DataFormatError

logger = logging.getLogger(__name__)

__all__ = [
    "DataFormatError",
    "Document",
    "Corpus",
    "BeirDataset",
    "iter_corpus",
    "read_corpus",
    "read_queries",
    "read_qrels",
    "load_beir",
    "check_id",
]

ID_FIELDS = ("_id", "id", "docid", "doc_id")
TEXT_FIELDS = ("text", "contents", "content", "body")
QUERY_ID_FIELDS = ("_id", "id", "qid", "query_id")
QUERY_TEXT_FIELDS = ("text", "query", "title")
# First-line column names that make a TSV line a header, not a record (compared lower-cased).
QUERY_HEADER_IDS = ("query-id", "query_id", "queryid", "qid", "_id", "id")
QUERY_HEADER_TEXTS = ("text", "query", "query-text", "query_text", "title", "question")
QRELS_HEADER_IDS = ("query-id", "query_id", "queryid", "qid")
# pytrec_eval keeps grades in C ints (it wraps larger ones silently), and trec_eval's nDCG
# allocates an array entry per grade level up to the largest grade: 2**31 - 1 took 14 GB and was
# killed, 10**6 took 8 MB (measured). Grades above MAX_GRADE are refused for that reason.
MIN_GRADE, MAX_GRADE = -(2**31), 2**20
# Python's \s is exactly str.isspace; surrogates cannot be written as UTF-8.
_BAD_ID_CHAR = re.compile(r"[\s\ud800-\udfff]")


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    title: str = ""
    metadata: Any = None  # a JSONL line's "metadata" value as read (collections store and filter it)

    @property
    def contents(self) -> str:
        """Title and text joined by a space, as Anserini's "flat" BEIR indexes do."""
        return f"{self.title} {self.text}" if self.title else self.text


@dataclass
class Corpus:
    """An in-memory corpus: parallel lists of ids, titles and texts."""

    ids: list[str] = field(default_factory=list)
    titles: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    metadata: list[Any] = field(default_factory=list)  # per document: its "metadata" value, or None

    def __len__(self) -> int:
        return len(self.ids)

    def contents(self, i: int) -> str:
        t = self.titles[i]
        return f"{t} {self.texts[i]}" if t else self.texts[i]

    def all_contents(self) -> list[str]:
        return [self.contents(i) for i in range(len(self.ids))]

    def __iter__(self) -> Iterator[Document]:
        for i, t, x in zip(self.ids, self.titles, self.texts):
            yield Document(i, x, t)


@dataclass
class BeirDataset:
    """A BEIR dataset for one split: the corpus, the split's queries and their judgements."""

    name: str
    corpus: Corpus
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    split: str = "test"


# ---------------------------------------------------------------------------- low level
def _format(path: Path) -> str:
    """The suffix that decides the format, ignoring a final ``.gz`` (``q.tsv.gz`` -> ``.tsv``)."""
    return Path(path.stem).suffix if path.suffix == ".gz" else path.suffix


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield (line number, decoded line) for non-blank lines, naming undecodable lines.

    ``.gz`` files are decompressed on the fly; a UTF-8 byte-order mark on line 1 is dropped."""
    opener = gzip.open if path.suffix == ".gz" else open
    n = 0
    try:
        with opener(path, "rb") as f:
            for n, raw in enumerate(f, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise DataFormatError(path, n, f"not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
                if n == 1 and line.startswith("\ufeff"):
                    line = line[1:]
                if line.strip():
                    yield n, line
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DataFormatError(path, n + 1, f"corrupt or truncated gzip data ({exc})") from None


def check_id(value: str) -> str | None:
    """Why ``value`` cannot be a document or query id in a TREC run, or ``None`` if it can.

    >>> check_id("doc 1")
    "contains whitespace (' ')"
    >>> check_id("doc-1") is None
    True
    """
    if not value:
        return "is empty"
    bad = _BAD_ID_CHAR.search(value)
    if bad is None:
        return None
    c = bad.group()
    if "\ud800" <= c <= "\udfff":
        return f"contains a lone surrogate ({ascii(c)}), which UTF-8 cannot encode"
    return f"contains whitespace ({c!r})"


def _checked_id(value: str, path: Path, line: int, what: str, field_name: str | None) -> str:
    why = check_id(value)
    if why is not None:
        raise DataFormatError(path, line, f"{what} id {ascii(value)} {why}", field_name)
    return value


def _jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    for n, line in _lines(path):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataFormatError(path, n, f"malformed JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise DataFormatError(path, n, f"expected a JSON object, got {type(obj).__name__}")
        yield n, obj


def _pick(obj: dict, names: tuple[str, ...], path: Path, line: int, what: str, required: bool = True):
    for name in names:
        if name in obj:
            value = obj[name]
            if value is None:
                value = ""
            if isinstance(value, (int, float)) and not isinstance(value, bool) and what == "id":
                value = str(value)
            if not isinstance(value, str):
                raise DataFormatError(path, line, f"expected a string, got {type(value).__name__}", name)
            return name, value
    if required:
        raise DataFormatError(path, line, f"missing {what} (expected one of {', '.join(names)})", names[0])
    return None, ""


def _check_file(path: str | os.PathLike) -> Path:
    """``path`` as a Path; FileNotFoundError if absent, DataFormatError if empty."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DataFormatError(path, None, "file is empty")
    return path


# ---------------------------------------------------------------------------- corpora
def iter_corpus(path: str | os.PathLike, allow_empty: bool = True) -> Iterator[Document]:
    """Stream documents from a JSONL or ``.jsonl.gz`` (``_id``/``id``, ``text``/``contents``,
    optional ``title``) or Parquet file (same column names).

    Documents with an empty title and text are kept (a BEIR corpus may hold a few, and refusing
    the whole corpus for them helps nobody) and counted in one warning at the end;
    ``allow_empty=False`` refuses them instead. Duplicate ids are checked by
    :func:`read_corpus`, not here."""
    for _, doc in _numbered_documents(_check_file(path), allow_empty):
        yield doc


def _numbered_documents(path: Path, allow_empty: bool) -> Iterator[tuple[int, Document]]:
    """(line or Parquet row, document) pairs, with the one warning about empty documents."""
    records = _iter_parquet(path) if _format(path) == ".parquet" else _iter_jsonl(path)
    empty, first = 0, None
    for n, doc in records:
        if not (doc.text.strip() or doc.title.strip()):
            if not allow_empty:
                raise DataFormatError(path, n, f"document {doc.id!r} has empty title and text", "text")
            empty += 1
            first = first or (n, doc.id)
        yield n, doc
    if empty:
        where = "row" if _format(path) == ".parquet" else "line"
        logger.warning("%s: %d document(s) with empty title and text (first %r at %s %d), kept as empty "
                       "documents", path, empty, first[1], where, first[0])


def _iter_jsonl(path: Path) -> Iterator[tuple[int, Document]]:
    for n, obj in _jsonl(path):
        name, doc_id = _pick(obj, ID_FIELDS, path, n, "id")
        _, text = _pick(obj, TEXT_FIELDS, path, n, "text")
        _, title = _pick(obj, ("title",), path, n, "title", required=False)
        if not doc_id.strip():
            raise DataFormatError(path, n, "empty document id", name)
        yield n, Document(_checked_id(doc_id, path, n, "document", name), text, title, obj.get("metadata"))


def _iter_parquet(path: Path) -> Iterator[tuple[int, Document]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:
        raise DataFormatError(path, None, f"not a readable Parquet file ({exc})") from None
    names = pf.schema_arrow.names
    id_col = next((c for c in ID_FIELDS if c in names), None)
    text_col = next((c for c in TEXT_FIELDS if c in names), None)
    if id_col is None:
        raise DataFormatError(path, None, f"no id column (expected one of {', '.join(ID_FIELDS)})", "_id")
    if text_col is None:
        raise DataFormatError(path, None, f"no text column (expected one of {', '.join(TEXT_FIELDS)})", "text")
    cols = [id_col, text_col] + (["title"] if "title" in names else [])
    row = 0
    for batch in pf.iter_batches(batch_size=8192, columns=cols):
        data = batch.to_pydict()
        titles = data.get("title") or [""] * batch.num_rows
        for doc_id, text, title in zip(data[id_col], data[text_col], titles):
            row += 1
            if doc_id is None or not str(doc_id).strip():
                raise DataFormatError(path, row, "missing document id (Parquet row)", id_col)
            text, title = text or "", title or ""
            if not isinstance(text, str) or not isinstance(title, str):
                raise DataFormatError(path, row, "text and title must be strings", text_col)
            yield row, Document(_checked_id(str(doc_id), path, row, "document", id_col), text, title)


def read_corpus(path: str | os.PathLike, allow_empty: bool = True) -> Corpus:
    """Load a whole corpus into memory, refusing duplicate ids (both lines named).

    Empty documents: as :func:`iter_corpus`."""
    path = _check_file(path)
    where = "row" if _format(path) == ".parquet" else "line"
    corpus = Corpus()
    seen: dict[str, int] = {}
    for n, doc in _numbered_documents(path, allow_empty):
        if doc.id in seen:
            raise DataFormatError(path, n, f"duplicate document id {doc.id!r} (first at {where} {seen[doc.id]})",
                                  "_id")
        seen[doc.id] = n
        corpus.ids.append(doc.id)
        corpus.titles.append(doc.title)
        corpus.texts.append(doc.text)
        corpus.metadata.append(doc.metadata)
    if not corpus.ids:
        raise DataFormatError(path, None, "no documents")
    return corpus


# ---------------------------------------------------------------------------- queries, qrels
def read_queries(path: str | os.PathLike) -> dict[str, str]:
    """Queries from JSONL (``_id``/``id`` and ``text``) or TSV (``id<TAB>text``, as Anserini's
    topics), either gzipped. A TSV header line (``query-id<TAB>text``, ``qid<TAB>query``...) is
    skipped; duplicate ids are refused with both lines named."""
    path = _check_file(path)
    queries: dict[str, str] = {}
    lines: dict[str, int] = {}

    def add(n: int, qid: str, text: str, field_name: str) -> None:
        if not qid.strip():
            raise DataFormatError(path, n, "empty query id", field_name)
        _checked_id(qid, path, n, "query", field_name)
        if qid in queries:
            raise DataFormatError(path, n, f"duplicate query id {qid!r} (first at line {lines[qid]})", field_name)
        queries[qid], lines[qid] = text, n

    if _format(path) in (".tsv", ".txt"):
        first = True
        for n, line in _lines(path):
            parts = line.rstrip("\r\n").split("\t")
            if len(parts) < 2:
                raise DataFormatError(path, n, "expected 'id<TAB>text'", "text")
            qid, text = parts[0].strip(), "\t".join(parts[1:]).strip()
            if first and qid.lower() in QUERY_HEADER_IDS and parts[1].strip().lower() in QUERY_HEADER_TEXTS:
                first = False
                continue  # a header line
            first = False
            add(n, qid, text, "id")
    else:
        for n, obj in _jsonl(path):
            name, qid = _pick(obj, QUERY_ID_FIELDS, path, n, "id")
            _, text = _pick(obj, QUERY_TEXT_FIELDS, path, n, "text")
            add(n, qid, text, name)
    if not queries:
        raise DataFormatError(path, None, "no queries")
    return queries


def _grade(rel: str, path: Path, line: int) -> int:
    """An integer relevance grade in [MIN_GRADE, MAX_GRADE]; "2.0" is 2; "1.5", "inf", "nan" are refused."""
    try:
        value = int(rel)
    except ValueError:
        try:
            number = float(rel)
        except ValueError:
            raise DataFormatError(path, line, f"relevance {rel!r} is not a number", "score") from None
        if not (math.isfinite(number) and number.is_integer()):
            raise DataFormatError(path, line, f"relevance {rel!r} is not an integer grade", "score") from None
        value = int(number)
    if value < MIN_GRADE:
        raise DataFormatError(path, line, f"relevance {rel!r} is below the 32-bit integer range", "score")
    if value > MAX_GRADE:
        raise DataFormatError(path, line, f"relevance {rel!r} is above {MAX_GRADE}, the largest grade evaluated "
                                          "(trec_eval allocates memory for every grade level up to it)", "score")
    return value


def read_qrels(path: str | os.PathLike) -> dict[str, dict[str, int]]:
    """Relevance judgements: BEIR TSV (``query-id corpus-id score``, header optional) or
    TREC qrels (``qid 0 docid rel``, whitespace separated), either gzipped.

    Grades must be integers from ``MIN_GRADE`` (-2**31) to ``MAX_GRADE`` (2**20), so that
    pytrec_eval neither wraps nor runs out of memory on them. Lines with a tab are
    split on tabs only, so an id with a space in it is refused rather than read as more columns."""
    path = _check_file(path)
    qrels: dict[str, dict[str, int]] = {}
    first = True
    for n, line in _lines(path):
        text = line.strip()
        parts = [p.strip() for p in text.split("\t")] if "\t" in text else text.split()
        if first and parts and parts[0].lower() in QRELS_HEADER_IDS:
            first = False
            continue
        first = False
        if len(parts) == 3:
            qid, docid, rel = parts
        elif len(parts) == 4:
            qid, _, docid, rel = parts
        else:
            raise DataFormatError(path, n, f"expected 3 or 4 columns, found {len(parts)}")
        _checked_id(qid, path, n, "query", "query-id")
        _checked_id(docid, path, n, "document", "corpus-id")
        qrels.setdefault(qid, {})[docid] = _grade(rel, path, n)
    if not qrels:
        raise DataFormatError(path, None, "no judgements")
    return qrels


def _find(root: Path, name: str) -> Path:
    """``root/name``, else ``root/name.gz``; FileNotFoundError when neither exists."""
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{root}: missing {name} (not a BEIR directory?)")


def load_beir(path: str | os.PathLike, split: str = "test", allow_empty: bool = True) -> BeirDataset:
    """Load a BEIR directory (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``; the two
    JSONL files may be gzipped as ``*.jsonl.gz``).

    Only the queries judged in ``split`` are kept. Empty documents: as :func:`iter_corpus`."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such dataset directory")
    qrels_dir = root / "qrels"
    qrels_file = qrels_dir / f"{split}.tsv"
    if not qrels_file.is_file():
        available = sorted(p.stem for p in qrels_dir.glob("*.tsv")) if qrels_dir.is_dir() else []
        raise ValueError(f"{root}: unknown split {split!r}; available: {', '.join(available) or 'none'}")
    corpus_file, queries_file = _find(root, "corpus.jsonl"), _find(root, "queries.jsonl")
    corpus = read_corpus(corpus_file, allow_empty=allow_empty)
    all_queries = read_queries(queries_file)
    qrels = read_qrels(qrels_file)
    missing = [q for q in qrels if q not in all_queries]
    if missing:
        raise DataFormatError(
            qrels_file, None, f"{len(missing)} judged queries are not in {queries_file.name} (e.g. {missing[0]!r})"
        )
    queries = {q: all_queries[q] for q in all_queries if q in qrels}
    return BeirDataset(root.name, corpus, queries, qrels, split)
