"""Read corpora, queries and qrels: BEIR directories, plain JSONL, TSV and Parquet.

Every reader streams its file and stops at the first bad record with a
:class:`DataFormatError` that names the file, the line (or Parquet row) and the field.

>>> ds = load_beir("../shared/data/beir/scifact")            # doctest: +SKIP
>>> len(ds.corpus), len(ds.queries), ds.corpus.contents(0)[:40]  # doctest: +SKIP
(5183, 300, 'Microstructural development of human new')
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from lsr.errors import DataFormatError

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
]

ID_FIELDS = ("_id", "id", "docid", "doc_id")
TEXT_FIELDS = ("text", "contents", "content", "body")
QUERY_ID_FIELDS = ("_id", "id", "qid", "query_id")
QUERY_TEXT_FIELDS = ("text", "query", "title")


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    title: str = ""

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
def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield (line number, decoded line) for non-blank lines, naming undecodable lines."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataFormatError(path, n, f"not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
            if line.strip():
                yield n, line


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
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DataFormatError(path, None, "file is empty")
    return path


# ---------------------------------------------------------------------------- corpora
def iter_corpus(path: str | os.PathLike, allow_empty: bool = False) -> Iterator[Document]:
    """Stream documents from a JSONL (``_id``/``id``, ``text``/``contents``, optional
    ``title``) or Parquet file (same column names). Empty documents are an error unless
    ``allow_empty``. Duplicate ids are checked by :func:`read_corpus`, not here."""
    path = _check_file(path)
    if path.suffix == ".parquet":
        yield from _iter_parquet(path, allow_empty)
        return
    for n, obj in _jsonl(path):
        _, doc_id = _pick(obj, ID_FIELDS, path, n, "id")
        _, text = _pick(obj, TEXT_FIELDS, path, n, "text")
        _, title = _pick(obj, ("title",), path, n, "title", required=False)
        if not doc_id.strip():
            raise DataFormatError(path, n, "empty document id", "_id")
        if not allow_empty and not (text.strip() or title.strip()):
            raise DataFormatError(path, n, f"document {doc_id!r} has empty title and text", "text")
        yield Document(doc_id, text, title)


def _iter_parquet(path: Path, allow_empty: bool) -> Iterator[Document]:
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
            if not allow_empty and not (text.strip() or title.strip()):
                raise DataFormatError(path, row, f"document {doc_id!r} has empty title and text", text_col)
            yield Document(str(doc_id), text, title)


def read_corpus(path: str | os.PathLike, allow_empty: bool = False) -> Corpus:
    """Load a whole corpus into memory, refusing duplicate ids."""
    corpus = Corpus()
    seen: dict[str, int] = {}
    for n, doc in enumerate(iter_corpus(path, allow_empty), start=1):
        if doc.id in seen:
            raise DataFormatError(path, n, f"duplicate document id {doc.id!r} (first at record {seen[doc.id]})", "_id")
        seen[doc.id] = n
        corpus.ids.append(doc.id)
        corpus.titles.append(doc.title)
        corpus.texts.append(doc.text)
    if not corpus.ids:
        raise DataFormatError(path, None, "no documents")
    return corpus


# ---------------------------------------------------------------------------- queries, qrels
def read_queries(path: str | os.PathLike) -> dict[str, str]:
    """Queries from JSONL (``_id``/``id`` and ``text``) or TSV (``id<TAB>text``, as Anserini's topics)."""
    path = _check_file(path)
    queries: dict[str, str] = {}
    if path.suffix in (".tsv", ".txt"):
        for n, line in _lines(path):
            parts = line.rstrip("\r\n").split("\t")
            if len(parts) < 2:
                raise DataFormatError(path, n, "expected 'id<TAB>text'", "text")
            qid, text = parts[0].strip(), "\t".join(parts[1:]).strip()
            if qid in queries:
                raise DataFormatError(path, n, f"duplicate query id {qid!r}", "id")
            queries[qid] = text
    else:
        for n, obj in _jsonl(path):
            _, qid = _pick(obj, QUERY_ID_FIELDS, path, n, "id")
            _, text = _pick(obj, QUERY_TEXT_FIELDS, path, n, "text")
            if qid in queries:
                raise DataFormatError(path, n, f"duplicate query id {qid!r}", "_id")
            queries[qid] = text
    if not queries:
        raise DataFormatError(path, None, "no queries")
    return queries


def read_qrels(path: str | os.PathLike) -> dict[str, dict[str, int]]:
    """Relevance judgements: BEIR TSV (``query-id corpus-id score``, header optional) or
    TREC qrels (``qid 0 docid rel``, whitespace separated)."""
    path = _check_file(path)
    qrels: dict[str, dict[str, int]] = {}
    for n, line in _lines(path):
        parts = line.split()
        if n == 1 and parts and parts[0].lower() in ("query-id", "query_id", "qid"):
            continue
        if len(parts) == 3:
            qid, docid, rel = parts
        elif len(parts) == 4:
            qid, _, docid, rel = parts
        else:
            raise DataFormatError(path, n, f"expected 3 or 4 columns, found {len(parts)}")
        try:
            relevance = int(float(rel))
        except ValueError:
            raise DataFormatError(path, n, f"relevance {rel!r} is not a number", "score") from None
        qrels.setdefault(qid, {})[docid] = relevance
    if not qrels:
        raise DataFormatError(path, None, "no judgements")
    return qrels


def load_beir(path: str | os.PathLike, split: str = "test", allow_empty: bool = False) -> BeirDataset:
    """Load a BEIR directory (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``).

    Only the queries judged in ``split`` are kept."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such dataset directory")
    qrels_dir = root / "qrels"
    qrels_file = qrels_dir / f"{split}.tsv"
    if not qrels_file.is_file():
        available = sorted(p.stem for p in qrels_dir.glob("*.tsv")) if qrels_dir.is_dir() else []
        raise ValueError(f"{root}: unknown split {split!r}; available: {', '.join(available) or 'none'}")
    for name in ("corpus.jsonl", "queries.jsonl"):
        if not (root / name).is_file():
            raise FileNotFoundError(f"{root}: missing {name} (not a BEIR directory?)")
    corpus = read_corpus(root / "corpus.jsonl", allow_empty=allow_empty)
    all_queries = read_queries(root / "queries.jsonl")
    qrels = read_qrels(qrels_file)
    missing = [q for q in qrels if q not in all_queries]
    if missing:
        raise DataFormatError(
            qrels_file, None, f"{len(missing)} judged queries are not in queries.jsonl (e.g. {missing[0]!r})"
        )
    queries = {q: all_queries[q] for q in all_queries if q in qrels}
    return BeirDataset(root.name, corpus, queries, qrels, split)
