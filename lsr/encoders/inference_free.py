"""Inference-free learned sparse retrieval: SPLADE documents, tokenizer-only queries.

Documents go through a masked-LM exactly as in :class:`~lsr.encoders.splade.SpladeEncoder`.
Queries are only tokenised: each distinct non-special token gets the weight of an IDF table
(``idf.json``, token -> weight, as the OpenSearch inference-free models ship it). The query path
loads no model and never imports torch, so query latency is that of a tokenizer plus the index.

A real inference-free checkpoint directory holds the model files and ``idf.json`` side by side;
``idf=`` overrides the table (for example a stand-in document model with a separate table).

>>> enc = InferenceFreeEncoder("path/to/model-dir")             # doctest: +SKIP
>>> enc.decode(enc.encode_queries(["What's the weather in ny now?"]), top_k=2)  # doctest: +SKIP
[('ny', 5.7729), ('weather', 4.5684)]
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from lsr.encoders._query_tokenizer import QueryTokenizer
from lsr.encoders.splade import SpladeEncoder, load_tokenizer
from lsr.types import SparseBatch

logger = logging.getLogger(__name__)

__all__ = ["InferenceFreeEncoder", "read_idf", "corpus_idf"]

IDF_FILE = "idf.json"
#: where a model declares the document length it was trained with (sentence-transformers' file)
LENGTH_FILE = "sentence_bert_config.json"
#: documents of a model that declares no length: SpladeEncoder's (SPLADE's training length)
DEFAULT_DOC_LENGTH = 256


def read_idf(path: str | os.PathLike, vocab: Sequence[str]) -> np.ndarray:
    """An ``idf.json`` (token -> weight) as a float32 vector over ``vocab`` (missing tokens weigh 0)."""
    path = Path(path)
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable IDF table ({exc})") from exc
    if not isinstance(table, dict):
        raise ValueError(f"{path}: expected a JSON object mapping token -> weight, got {type(table).__name__}")
    ids = {t: i for i, t in enumerate(vocab)}
    idf = np.zeros(len(vocab), dtype=np.float32)
    unknown = 0
    for token, weight in table.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not np.isfinite(weight):
            raise ValueError(f"{path}: field {token!r}: weight must be a finite number, got {weight!r}")
        i = ids.get(token)
        if i is None:
            unknown += 1
        else:
            idf[i] = weight
    if unknown:
        logger.warning("%s: %d of %d tokens are not in the tokenizer vocabulary (ignored)", path, unknown, len(table))
    if unknown == len(table) and table:
        raise ValueError(f"{path}: no token of the IDF table is in the tokenizer vocabulary")
    return idf


def corpus_idf(model: str | os.PathLike, texts: Iterable[str], batch_size: int = 1024,
               show_progress: bool = False) -> dict[str, float]:
    """An IDF table (token -> weight) estimated on ``texts`` with ``model``'s tokenizer.

    Each token weighs BM25's (Lucene's) idf, ``ln(1 + (N - df + 0.5) / (df + 0.5))``, over the
    ``N`` texts, where ``df`` counts the texts whose whole (untruncated) tokenisation contains the
    token. OpenSearch's MS MARCO table is this formula over MS MARCO's N = 8,841,823 passages (a
    token in one passage weighs ln(1 + (N - 0.5) / 1.5) = 15.5895 there, in two 15.0787), so a table
    estimated on a user's corpus replaces it like for like. Special tokens weigh 0. A token in no
    text gets the formula's value at df = 0, the largest (OpenSearch's table gives its unseen
    tokens, junk in MS MARCO, 1.0; in a small corpus unseen tokens are ordinary words that only
    document expansion can match). Only the tokenizer is loaded (no torch).
    """
    from tqdm.auto import tqdm

    tok, vocab, special_ids = load_tokenizer(model)  # a fresh tokenizer: no truncation, no padding
    df = np.zeros(len(vocab), dtype=np.int64)  # the vocabulary includes added tokens: every id fits
    n = 0
    it = iter(texts)
    with tqdm(desc="idf", unit="doc", disable=not show_progress) as bar:
        while batch := [str(t) for t in itertools.islice(it, batch_size)]:
            for enc in tok.encode_batch(batch, add_special_tokens=False):
                df[np.unique(np.asarray(enc.ids, dtype=np.int64))] += 1
            n += len(batch)
            bar.update(len(batch))
    if n == 0:
        raise ValueError("cannot estimate an IDF table from an empty corpus")
    idf = np.log1p((n - df + 0.5) / (df + 0.5))
    idf[special_ids] = 0.0
    return {token: float(w) for token, w in zip(vocab, idf)}


def _resolve_idf(source: str, idf: str | os.PathLike | None) -> Path:
    """``idf``, else ``idf.json`` of the model ``source`` (a directory, or a hub id that answered)."""
    if idf is not None:
        path = Path(idf)
        if not path.is_file():
            raise ValueError(f"IDF file {path} does not exist")
        return path
    local = Path(source)
    if local.is_dir():
        if not (local / IDF_FILE).is_file():
            raise ValueError(f"{local} has no {IDF_FILE}: pass the query IDF table with --idf FILE")
        return local / IDF_FILE
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(source, IDF_FILE))
    except Exception as exc:  # hub errors come in many types
        raise ValueError(f"cannot fetch {IDF_FILE} for {source!r} ({type(exc).__name__}: {exc}); "
                         "pass the query IDF table with --idf FILE") from exc


def tokenizer_limit(source: str | os.PathLike) -> int:
    """The tokenizer's ``model_max_length`` (tokenizer_config.json), or no limit (2**20) when it
    declares none (transformers writes 1e30 for "unset")."""
    path = Path(source) / "tokenizer_config.json"
    try:
        value = json.loads(path.read_text()).get("model_max_length")
    except (OSError, ValueError, AttributeError):
        value = None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 3 <= value < 1 << 20:
        return int(value)
    return 1 << 20


def declared_doc_length(source: str | os.PathLike) -> int | None:
    """The document length a model declares: ``max_seq_length`` of its ``sentence_bert_config.json``
    (``lsr train`` writes the length it trained with there), or ``None`` when it has no such file.
    A file that is there but unreadable, or a length below 3, is an error naming the file."""
    path = Path(source) / LENGTH_FILE
    if not Path(source).is_dir():
        try:  # a hub id whose hub answered (resolve_model): the file is optional
            from huggingface_hub import hf_hub_download
            from huggingface_hub.errors import EntryNotFoundError

            path = Path(hf_hub_download(str(source), LENGTH_FILE))
        except EntryNotFoundError:  # the model declares no length
            return None
        except Exception as exc:  # hub errors come in many types: say so, do not guess silently
            logger.warning("%s: cannot read its %s (%s: %s); documents default to %d tokens", source, LENGTH_FILE,
                           type(exc).__name__, exc, DEFAULT_DOC_LENGTH)
            return None
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("max_seq_length")
    except (OSError, ValueError, AttributeError) as exc:
        raise ValueError(f"{path}: not a JSON object with max_seq_length ({exc})") from exc
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 3:
        raise ValueError(f"{path}: max_seq_length must be an integer >= 3, got {value!r}")
    return value


class InferenceFreeEncoder(SpladeEncoder):
    """SPLADE document encoder + IDF-weighted tokenizer queries (no model at query time).

    Args:
        model: document model directory or hub id (its tokenizer also tokenises queries).
        idf: path of the query ``idf.json``; default: ``idf.json`` in the model directory.
        doc_max_length: document truncation; default: the length the model declares
            (:func:`declared_doc_length`: a model ``lsr train`` wrote declares the length its
            query table was trained against), else 256.
        other arguments: as :class:`~lsr.encoders.splade.SpladeEncoder` (document side).
    """

    name = "inference-free"

    def __init__(self, model: str | os.PathLike, idf: str | os.PathLike | None = None,
                 query_max_length: int | None = None, doc_max_length: int | None = None, **kwargs: Any) -> None:
        # a query goes through no model, so it is cut only at the tokenizer's own limit by default
        # (3: placeholders, checked by SpladeEncoder, until the model's own files are found)
        super().__init__(model, query_max_length=query_max_length or 3,
                         doc_max_length=3 if doc_max_length is None else doc_max_length, **kwargs)
        self.query_max_length = int(query_max_length or tokenizer_limit(self._source))
        if doc_max_length is None:
            self.doc_max_length = declared_doc_length(self._source) or DEFAULT_DOC_LENGTH
        self.idf_path = _resolve_idf(self._source, idf).resolve()
        self.idf = read_idf(self.idf_path, self.vocab)
        self.idf[self.special_ids] = 0.0
        self._query_tokenizer: QueryTokenizer | None = None

    def encode_queries(self, texts: Sequence[str], batch_size: int | None = None,
                       show_progress: bool = False) -> SparseBatch:
        """Each distinct non-special token of a query, weighted by its IDF (tokenizer only, no torch)."""
        qt = self._query_tokenizer
        if qt is None or qt.max_length != self.query_max_length:
            qt = self._query_tokenizer = QueryTokenizer(self.tokenizer, self.query_max_length)
        indptr = np.zeros(len(texts) + 1, dtype=np.int64)
        ids_list: list[int] = []
        for i, text in enumerate(texts):
            distinct = sorted(set(qt(str(text))))  # sorted and distinct, as CSR wants
            ids_list.extend(distinct)
            indptr[i + 1] = len(ids_list)
        ids = np.asarray(ids_list, dtype=np.int32)
        w = self.idf[ids]
        if ids.size and not w.all():  # tokens with no IDF weight are dropped
            keep = w != 0
            rows = np.repeat(np.arange(len(texts)), np.diff(indptr))
            indptr[1:] = np.cumsum(np.bincount(rows[keep], minlength=len(texts)))
            ids, w = ids[keep], w[keep]
        return SparseBatch(indptr, ids, w, self.vocab_size, self.vocab)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "idf": str(self.idf_path)}

    def save(self, directory: str | os.PathLike) -> None:
        """``encoder.json`` plus a copy of ``idf.json``, so the query side is self-contained."""
        directory = Path(directory)
        shutil.copyfile(self.idf_path, directory / IDF_FILE)
        cfg = {**self.config(), "idf": IDF_FILE, "idf_source": str(self.idf_path)}
        (directory / "encoder.json").write_text(json.dumps(cfg, indent=2) + "\n")

    @classmethod
    def _load_args(cls, directory: Path, cfg: dict[str, Any]) -> dict[str, Any]:
        """The saved copy of ``idf.json`` makes the query side independent of the source table."""
        return {"idf": directory / cfg.get("idf", IDF_FILE)}
