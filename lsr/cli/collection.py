"""CLI commands of live collections (``lsr add``, ``lsr delete``) and the collection side of
``lsr index`` / ``lsr search``: registered on :func:`lsr.cli.main`."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import click

from lsr.cli import _flag, _friendly_errors, main


def is_collection(path: Path) -> bool:
    """Whether ``path`` holds an lsr collection (its manifest says so)."""
    try:
        return json.loads((path / "manifest.json").read_text()).get("format") == "lsr.collection"
    except (OSError, ValueError, AttributeError):
        return False


def collection_options(retriever: str, given: dict[str, Any]) -> Any:
    """The typed options of ``retriever`` from the options given on the command line."""
    from lsr.retrievers.options import OPTIONS

    allowed = {f.name for f in dataclasses.fields(OPTIONS[retriever])}
    if retriever == "hybrid" and set(given) - allowed:
        raise click.BadParameter(f"{', '.join(sorted(set(given) - allowed))}: not an option of a hybrid collection "
                                 f"(components take their model in --components NAME=MODEL)",
                                 param_hint="--retriever")
    wrong = [_flag(k) for k in given if k not in allowed]
    if wrong:
        raise click.BadParameter(f"{', '.join(wrong)} {'does' if len(wrong) == 1 else 'do'} not apply to "
                                 f"--retriever {retriever}", param_hint="--retriever")
    try:
        return OPTIONS[retriever](**given)
    except (ValueError, TypeError) as exc:
        raise click.BadParameter(str(exc), param_hint="--retriever options") from exc


def index_collection(source: Path, output: Path, retriever: str, given: dict[str, Any], overwrite: bool,
                     read_docs: Any) -> None:
    """``lsr index CORPUS COLLECTION``: a new collection holding the corpus (one segment)."""
    from lsr.collection import Collection
    from lsr.errors import ModelNotFoundError

    given = dict(given)
    doc_vectors = given.pop("doc_vectors", None)  # `lsr encode` shards: indexed, not re-encoded
    options = collection_options(retriever, given)
    corpus = read_docs(source)  # the corpus readers' checks (duplicate ids, file:line errors)
    docs = corpus_documents(corpus, source)
    t = time.perf_counter()
    target, lock = output, None
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        if not overwrite:
            raise click.BadParameter(f"{output} already exists (use --overwrite to replace an lsr index)",
                                     param_hint="OUTPUT")
        try:
            fmt = json.loads((output / "manifest.json").read_text()).get("format", "")
        except (OSError, ValueError, AttributeError):
            fmt = ""
        if not str(fmt).startswith("lsr"):
            raise click.BadParameter(f"{output} is not an lsr index or collection; refusing to replace it",
                                     param_hint="OUTPUT")
        target = output.parent / f".{output.name}.new-{uuid.uuid4().hex[:12]}"  # swapped in when complete
        if is_collection(output):  # held until swapped: a live writer of it would write into the new one
            from lsr.collection.lock import WriteLock

            lock = WriteLock(output)
    try:
        try:
            col = Collection.create(target, options, merge_policy=None)
        except ModelNotFoundError as exc:
            raise click.BadParameter(str(exc), param_hint="--model") from exc
        except (ValueError, TypeError) as exc:
            raise click.BadParameter(str(exc), param_hint="--retriever options") from exc
        with col:
            vectors = None if doc_vectors is None else _shard_vectors(col, Path(doc_vectors))
            col.add(docs, show_progress=True, vectors=vectors)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)  # ours: new, or a temporary sibling
        if lock is not None:
            lock.release()
        raise
    if target != output:
        from lsr.io.swap import _exchange

        old = output.parent / f".{output.name}.old-{uuid.uuid4().hex[:12]}"
        real = Path(os.path.realpath(output))
        try:
            if _exchange(target, output):  # one step (Linux renameat2): the path always holds one
                os.rename(target, old)
            else:  # elsewhere two renames: killed between them, both are left as siblings
                os.rename(output, old)
                os.rename(target, output)
        finally:
            if lock is not None:
                lock.release()
        if old.is_symlink():  # a versioned retriever directory: its version goes too
            old.unlink()
            shutil.rmtree(real, ignore_errors=True)
        else:
            shutil.rmtree(old, ignore_errors=True)
    click.echo(f"indexed {len(docs)} documents with {retriever} into collection {output} "
               f"in {time.perf_counter() - t:.1f}s", err=True)


def corpus_documents(corpus: Any, source: Path) -> list[dict[str, Any]]:
    """A corpus's documents as a collection stores them: id, title and text kept apart (the engine
    reads them joined, as ``Corpus.contents`` joins them) and the line's ``metadata`` object (BEIR
    corpora carry one; an empty one is no metadata)."""
    from lsr.errors import DataFormatError

    metas = corpus.metadata or [None] * len(corpus.ids)
    docs = []
    for i, t, x, m in zip(corpus.ids, corpus.titles, corpus.texts, metas):
        doc = {"_id": i, "title": t, "text": x}
        if m is not None and not isinstance(m, dict):
            raise DataFormatError(source, None, f"document {i!r}: metadata is not a JSON object", "metadata")
        if m:
            doc["metadata"] = m
        docs.append(doc)
    return docs


def search_collection(path: Path, queries: dict[str, str], k: int, threads: int, filter_json: str | None,
                      fmt: str, output: str, tag: str | None) -> None:
    """``lsr search COLLECTION``: a TREC run, or one JSON object per hit."""
    from lsr.collection import Collection

    spec = None
    if filter_json is not None:
        try:
            spec = json.loads(filter_json)
        except ValueError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint="--filter") from exc
    with Collection.open(path, readonly=True) as col:
        qids = list(queries)
        res = col.search([queries[q] for q in qids], k=k, filter=spec, threads=threads,
                         fields=["text", "metadata"] if fmt == "jsonl" else None)
        name = col.retriever
    if fmt == "trec":
        from lsr.cli import _write_run

        _write_run(res.to_run(qids), output, tag or name)
        return
    write_jsonl(res, qids, output)


def write_jsonl(res: Any, qids: list[str], output: str) -> None:
    out = sys.stdout if output == "-" else open(output, "w")
    try:
        for i, q in enumerate(qids):
            for doc in res.documents(i):
                row = {"query_id": q, "doc_id": doc["_id"], "rank": doc["rank"], "score": doc["score"]}
                for f in ("text", "metadata"):
                    if f in doc:
                        row[f] = doc[f]
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()


def read_documents(path: Path) -> Iterator[dict[str, Any]]:
    """Documents ``{_id, title, text, metadata}`` of a JSONL(.gz) or Parquet file, each checked as
    ``Collection.add`` checks it; a bad line (not UTF-8, not JSON, an unknown or mistyped field,
    an id seen on an earlier line) is a DataFormatError naming the file, line and field."""
    from lsr.errors import DataFormatError

    seen: dict[str, int] = {}
    for n, obj in _records(path):
        doc = _document(path, n, obj)
        first = seen.setdefault(doc["_id"], n)
        if first != n:
            where = "row" if path.suffix == ".parquet" else "line"
            raise DataFormatError(path, n, f"duplicate document id {doc['_id']!r} (first at {where} {first})", "_id")
        yield doc


def _records(path: Path) -> Iterator[tuple[int, Any]]:
    from lsr.errors import DataFormatError

    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        with pq.ParquetFile(path) as f:  # read a row group's batch at a time, not the whole file
            if "_id" not in f.schema_arrow.names or "text" not in f.schema_arrow.names:
                raise DataFormatError(path, None, "a documents file needs columns _id and text")
            rows = (row for batch in f.iter_batches(batch_size=4096) for row in batch.to_pylist())
            for n, row in enumerate(rows, 1):
                meta = row.get("metadata")
                if isinstance(meta, str):
                    try:
                        meta = json.loads(meta)
                    except (ValueError, RecursionError):
                        raise DataFormatError(path, n, "metadata is not JSON text", "metadata") from None
                yield n, {**row, "metadata": meta} if "metadata" in row else row
        return
    from lsr.io.readers import _lines  # per-line UTF-8 decoding (errors name the line), .gz, BOM

    for n, line in _lines(path):
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError) as exc:
            raise DataFormatError(path, n, f"not JSON ({exc})") from None
        yield n, obj


def _document(path: Path, n: int, obj: Any) -> dict[str, Any]:
    from lsr.collection.docstore import check_document
    from lsr.errors import DataFormatError

    if not isinstance(obj, dict):
        raise DataFormatError(path, n, "expected a JSON object")
    doc = dict(obj)
    doc_id = doc.get("_id")
    if isinstance(doc_id, int) and not isinstance(doc_id, bool):
        doc["_id"] = str(doc_id)
    elif not isinstance(doc_id, str) or not doc_id:
        raise DataFormatError(path, n, "missing or empty id", "_id")
    for name in ("title", "text"):  # JSON null (or a missing field) is an empty string
        if doc.get(name) is None:
            doc[name] = ""
    return check_document(doc, path, n)


#: documents ``lsr add`` reads and encodes at a time (one segment each, one commit for the file)
ADD_BATCH = 10_000


@main.command("add")
@click.argument("collection", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("docs", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--batch-size", type=click.IntRange(min=1), default=ADD_BATCH, show_default=True,
              help="Documents read and encoded at a time (each a segment; the file is still one commit).")
@click.option("--doc-vectors", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Index these `lsr encode` shards (every document of DOCS, by id; made by this collection's "
                   "model) instead of encoding: a SPLADE or inference-free collection, or a hybrid's one such "
                   "component.")
@_friendly_errors
def add_cmd(collection: Path, docs: Path, batch_size: int, doc_vectors: Path | None) -> None:
    """Add or replace the documents of DOCS (JSONL, JSONL.gz or Parquet: _id, title, text, metadata).

    The file is read in batches; a bad line stops the command before its one commit, so the
    collection is left as it was."""
    from lsr.collection import Collection

    read = 0

    def counted() -> Iterator[dict[str, Any]]:
        nonlocal read
        for doc in read_documents(docs):
            read += 1
            yield doc

    with Collection.open(collection) as col:
        before = len(col)
        vectors = None if doc_vectors is None else _shard_vectors(col, doc_vectors)
        col.upsert(counted(), show_progress=True, batch_size=batch_size, vectors=vectors)
        total = len(col)
    replaced = read - (total - before)  # an upsert removes each replaced document and adds all
    click.echo(f"{read - replaced} added, {replaced} replaced; {collection} holds {total} documents", err=True)


def _shard_vectors(col: Any, path: Path) -> Any:
    """``lsr encode`` shards as the ``vectors`` of ``col.upsert`` (for a hybrid: its sparse component's)."""
    from lsr.collection.encoded import EncodedDocuments

    vectors = EncodedDocuments.from_shards(path)
    if col.engine.name != "hybrid":
        return vectors
    names = [e.name for e in col.engine.components]
    sparse = [i for i, n in enumerate(names) if n in ("splade", "inference-free")]
    if len(sparse) != 1:
        raise click.BadParameter(f"the hybrid's components are {', '.join(names)}: --doc-vectors needs exactly "
                                 f"one splade or inference-free component", param_hint="--doc-vectors")
    return [vectors if i == sparse[0] else None for i in range(len(names))]


@main.command("delete")
@click.argument("collection", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("ids", nargs=-1, required=True)
@_friendly_errors
def delete_cmd(collection: Path, ids: tuple[str, ...]) -> None:
    """Delete documents by id (ids not in the collection are reported, not an error)."""
    from lsr.collection import Collection

    with Collection.open(collection) as col:
        n = col.delete(list(ids))
        total = len(col)
    click.echo(f"deleted {n} of {len(set(ids))} ids; {collection} holds {total} documents", err=True)
