"""SPLADE: sparse term weights from a masked-language-model head.

For a text with tokens ``t`` and MLM logits ``z[t, v]`` the weight of vocabulary entry ``v`` is

    w[v] = max_t log(1 + relu(z[t, v]))      over the tokens under the attention mask,

with special tokens ([CLS], [SEP], [PAD], [MASK], [UNK]) removed from the output. Because
``log(1 + relu(x))`` is monotone, lsr max-pools the logits first and activates only the pooled
``(batch x vocab)`` matrix. On CPU it goes further while staying exact: the ``tokens x vocab``
head matmul is first done in bf16 (faster on CPUs with AVX512-BF16; docs/learned_sparse.md), which bounds every
logit to within a proven margin; only the few hundred entries whose bound is positive are then
recomputed in fp32. Weights match a plain fp32 transformers implementation to ~1e-6.

>>> enc = SpladeEncoder("path/to/splade-model")                        # doctest: +SKIP
>>> docs = enc.encode_documents(["Heart disease is caused by ..."])    # doctest: +SKIP
>>> enc.decode(docs, top_k=3)                                          # doctest: +SKIP
[('heart', 2.32), ('pressure', 1.93), ('disease', 1.73)]
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lsr.encoders._torch import (
    autocast_dtype,
    bf16_matmul_is_fast,
    choose_device,
    length_sorted_batches,
    quiet_loading,
    resolve_model,
    require_torch,
    require_transformers,
    set_threads,
)
from lsr.types import SparseBatch

logger = logging.getLogger(__name__)

__all__ = ["SpladeEncoder", "load_tokenizer", "decode_vector"]

# bf16 screening margin per (token, vocab) pair, in units of ||h_t|| * ||w_v||. Rounding h and w
# to bf16 (unit roundoff 2**-8) and the bf16 output cost at most ~3 * 2**-8; 1/32 is ~2.7x safer.
_SCREEN_MARGIN = 1.0 / 32.0


# ---------------------------------------------------------------------------- tokenizer (torch-free)
def load_tokenizer(model: str | os.PathLike) -> tuple[Any, list[str], list[int]]:
    """A fast ``tokenizers.Tokenizer`` for a model directory or hub id, its vocab and special ids.

    Uses ``tokenizer.json`` (or a BERT ``vocab.txt``) and never imports torch, so query
    encoding of inference-free models stays light. Raises ModelNotFoundError for a missing
    directory or an unreachable hub (see :func:`~lsr.encoders._torch.resolve_model`) and
    ValueError when the files found do not load.
    """
    from tokenizers import Tokenizer

    source = resolve_model(model)
    path = Path(source)
    if path.is_dir():
        if (path / "tokenizer.json").is_file():
            tok = Tokenizer.from_file(str(path / "tokenizer.json"))
        elif (path / "vocab.txt").is_file():
            from tokenizers.implementations import BertWordPieceTokenizer

            lower = True
            cfg = path / "tokenizer_config.json"
            if cfg.is_file():
                lower = bool(json.loads(cfg.read_text()).get("do_lower_case", True))
            tok = BertWordPieceTokenizer(str(path / "vocab.txt"), lowercase=lower)._tokenizer
        else:
            raise ValueError(f"{path}: no tokenizer.json or vocab.txt in the model directory")
    else:  # a hub id, and the hub answered
        try:
            from huggingface_hub import hf_hub_download

            tok = Tokenizer.from_file(hf_hub_download(source, "tokenizer.json"))
        except Exception as exc:  # hub errors come in many types
            raise ValueError(f"cannot load a tokenizer for {str(model)!r}: not a local directory and the "
                             f"Hugging Face hub failed ({type(exc).__name__}: {exc})") from exc
    tok.no_padding()
    tok.no_truncation()
    size = tok.get_vocab_size(with_added_tokens=True)
    vocab = [""] * size
    for token, i in tok.get_vocab(with_added_tokens=True).items():
        vocab[i] = token
    for i, t in enumerate(vocab):
        if not t:
            vocab[i] = f"[unused_id_{i}]"
    special = sorted(i for i, t in tok.get_added_tokens_decoder().items() if t.special)
    return tok, vocab, special


def tokenize(tok: Any, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids with special tokens, truncated to ``max_length`` (special tokens included)."""
    trunc = tok.truncation
    if trunc is None or trunc.get("max_length") != max_length:
        tok.enable_truncation(max_length=max_length)
    if len(texts) == 1:  # one query: skip the batch machinery
        return [tok.encode(str(texts[0]), add_special_tokens=True).ids]
    return [e.ids for e in tok.encode_batch([str(t) for t in texts], add_special_tokens=True)]


def decode_vector(vector: Any, vocab: Sequence[str], top_k: int | None = None, row: int = 0) -> list[tuple[str, float]]:
    """``(token, weight)`` pairs, heaviest first, of a SparseBatch row, ``(ids, weights)``, dict or dense array."""
    if isinstance(vector, SparseBatch):
        if not 0 <= row < len(vector):
            raise IndexError(f"row {row} outside a batch of {len(vector)}")
        ids, w = vector.row(row)
    elif isinstance(vector, dict):
        ids, w = np.fromiter(vector.keys(), np.int64), np.fromiter(vector.values(), np.float64)
    elif isinstance(vector, tuple) and len(vector) == 2:
        ids, w = np.asarray(vector[0], np.int64), np.asarray(vector[1], np.float64)
    else:
        dense = np.asarray(vector, dtype=np.float64).ravel()
        ids = np.flatnonzero(dense)
        w = dense[ids]
    order = np.argsort(-np.asarray(w), kind="stable")[:top_k]
    return [(vocab[int(ids[j])], round(float(w[j]), 4)) for j in order]


# ---------------------------------------------------------------------------- encoder
class SpladeEncoder:
    """SPLADE encoder over any Hugging Face masked-LM checkpoint (directory or hub id).

    Args:
        model: model directory or hub id (loaded with ``AutoModelForMaskedLM``).
        doc_max_length / query_max_length: truncation in tokens, special tokens included.
        batch_size: texts per forward pass (default 32 on CPU, 128 on GPU).
        device: torch device (default CUDA if available, else CPU).
        threads: torch CPU threads (default: torch's setting).
        precision: "auto" (exact fp32 on CPU, bf16/fp16 autocast on CUDA), "fp32", "bf16", "fp16".
        top_k: keep only each document's ``top_k`` heaviest terms (documents only).
        min_weight: drop document weights below this.
    """

    name = "splade"

    def __init__(self, model: str | os.PathLike, doc_max_length: int = 256, query_max_length: int = 64,
                 batch_size: int | None = None, device: str | None = None, threads: int | None = None,
                 precision: str = "auto", top_k: int | None = None, min_weight: float = 0.0) -> None:
        if doc_max_length < 3 or query_max_length < 3:
            raise ValueError("max lengths must leave room for the special tokens (>= 3)")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if precision not in {"auto", "fp32", "bf16", "fp16"}:
            raise ValueError(f"precision must be auto, fp32, bf16 or fp16, not {precision!r}")
        # Where the files are read from: a local directory, a hub id whose hub answered, or a cached
        # snapshot of it when the hub is unreachable. Configs record the directory or the hub id.
        self._source = resolve_model(model)
        self.model_name = self._source if Path(model).expanduser().is_dir() else str(model)
        self.doc_max_length, self.query_max_length = int(doc_max_length), int(query_max_length)
        self.batch_size, self.device_name, self.threads = batch_size, device, threads
        self.precision, self.top_k, self.min_weight = precision, top_k, float(min_weight)
        self.tokenizer, self.vocab, self.special_ids = load_tokenizer(self._source)
        self._model: Any = None

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    # ------------------------------------------------------------------ model (lazy)
    def load_model(self) -> None:
        """Load the MLM (done on first document/query encoding); ValueError if it cannot load."""
        if self._model is not None:
            return
        torch = require_torch()
        transformers = require_transformers()
        self.device = choose_device(self.device_name)
        try:
            with quiet_loading():
                model, info = transformers.AutoModelForMaskedLM.from_pretrained(
                    self._source, dtype=torch.float32, output_loading_info=True)
        except (OSError, ValueError, KeyError) as exc:
            raise ValueError(f"cannot load a masked-LM model from {self.model_name!r}: {exc}") from exc
        # A checkpoint without an MLM head (a sentence-transformers bi-encoder, a bare BertModel)
        # loads with a randomly initialised head (transformers only logs it): every vector would be
        # noise. Refuse it.
        missing = sorted(info.get("missing_keys") or ())
        if missing:
            shown = ", ".join(missing[:4]) + (", ..." if len(missing) > 4 else "")
            raise ValueError(f"{self.model_name}: not a masked-LM checkpoint: {len(missing)} weights of the "
                             f"model are missing and would be random ({shown})")
        model.eval().to(self.device)
        decoder = model.get_output_embeddings()
        if not isinstance(decoder, torch.nn.Linear):
            raise ValueError(f"{self.model_name}: the MLM output layer is {type(decoder).__name__}, not Linear")
        # Keep the decoder's weights and replace it by Identity, so the model returns the
        # transformed hidden states and the (tokens x vocab) matmul is done by lsr's pooled head.
        self._W = decoder.weight.detach().float().contiguous()
        self._b = (decoder.bias.detach().float() if decoder.bias is not None
                   else torch.zeros(self._W.shape[0], device=self.device))
        parent, attr = _find_parent(model, decoder)
        setattr(parent, attr, torch.nn.Identity())
        n = min(self._W.shape[0], self.vocab_size)
        if self._W.shape[0] != self.vocab_size:
            logger.warning("%s: model has %d output rows, tokenizer %d tokens; using the first %d",
                           self.model_name, self._W.shape[0], self.vocab_size, n)
            self._W, self._b = self._W[:n].contiguous(), self._b[:n].contiguous()
        self._b_masked = self._b.clone()  # special tokens can never get a weight
        special = [i for i in self.special_ids if i < n]
        self._b_masked[special] = float("-inf")
        self._autocast = autocast_dtype(self.device, self.precision)
        self._screen = False
        if self.device.type == "cpu" and self._autocast is None:
            set_threads(self.threads)
            self._set_screen(bf16_matmul_is_fast(torch.get_num_threads()))
        self._max_positions = int(getattr(model.config, "max_position_embeddings", 0) or 1 << 30)
        if max(self.doc_max_length, self.query_max_length) > self._max_positions:
            logger.warning("%s: truncating to the model's %d positions", self.model_name, self._max_positions)
        self._pad_id = self.tokenizer.token_to_id("[PAD]") or 0
        if getattr(model.config, "pad_token_id", None) is not None:
            self._pad_id = int(model.config.pad_token_id)
        self._model = model

    def _set_screen(self, on: bool) -> None:
        """Use (or not) the exact bf16-screened head on CPU; both give the same vectors."""
        self._screen = bool(on)
        if on and not hasattr(self, "_Wb"):
            self._Wb = self._W.bfloat16()
            self._margin = self._W.norm(dim=1) * _SCREEN_MARGIN

    # ------------------------------------------------------------------ encoding
    def encode_documents(self, texts: Sequence[str], batch_size: int | None = None,
                         show_progress: bool = False) -> SparseBatch:
        """Document vectors (``doc_max_length`` tokens, pruned by ``top_k`` / ``min_weight``)."""
        return self._encode(texts, self.doc_max_length, batch_size, show_progress, prune=True)

    def encode_queries(self, texts: Sequence[str], batch_size: int | None = None,
                       show_progress: bool = False) -> SparseBatch:
        """Query vectors (``query_max_length`` tokens, no pruning)."""
        return self._encode(texts, self.query_max_length, batch_size, show_progress, prune=False)

    def _encode(self, texts: Sequence[str], max_length: int, batch_size: int | None, show_progress: bool,
                prune: bool) -> SparseBatch:
        from tqdm.auto import tqdm

        self.load_model()
        torch = require_torch()
        set_threads(self.threads if self.device.type == "cpu" else None)
        bs = batch_size or self.batch_size or (128 if self.device.type == "cuda" else 32)
        ids = tokenize(self.tokenizer, texts, min(max_length, self._max_positions))
        rows: list[tuple[np.ndarray, np.ndarray]] = [(np.zeros(0, np.int64), np.zeros(0, np.float32))] * len(ids)
        with torch.inference_mode(), tqdm(total=len(ids), desc="encode", unit="doc",
                                          disable=not show_progress) as bar:
            for batch in length_sorted_batches([len(x) for x in ids], bs):
                for pos, row in zip(batch, self._forward([ids[i] for i in batch])):
                    rows[pos] = self._prune(*row) if prune else row
                bar.update(len(batch))
        return SparseBatch.from_rows(rows, vocab_size=self.vocab_size, vocab=self.vocab)

    def _forward(self, seqs: list[list[int]]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Sparse (ids, weights) for one batch of token id lists."""
        torch = require_torch()
        lengths = [len(s) for s in seqs]
        width = max(lengths)
        input_ids = torch.full((len(seqs), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            input_ids[i, :len(s)] = torch.as_tensor(s, dtype=torch.long)
            mask[i, :len(s)] = 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        if self._autocast is not None:
            with torch.autocast(self.device.type, dtype=self._autocast):
                hidden = self._model(input_ids=input_ids, attention_mask=mask).logits
                return self._pooled_head(hidden, mask)
        hidden = self._model(input_ids=input_ids, attention_mask=mask).logits.float()
        if hidden.shape[-1] != self._W.shape[1]:
            raise RuntimeError(f"unexpected MLM hidden size {hidden.shape[-1]} (decoder expects {self._W.shape[1]})")
        if self.device.type != "cpu":
            return self._pooled_head(hidden, mask)
        return self._exact_head(hidden, mask, lengths)

    def _pooled_head(self, hidden: Any, mask: Any) -> list[tuple[np.ndarray, np.ndarray]]:
        """Max-pool the logits (padding at -inf), then log1p(relu) on the pooled batch x vocab matrix."""
        import torch.nn.functional as F

        torch = require_torch()
        out = []
        for s in range(0, hidden.shape[0], 8):  # a few sequences at a time bounds the logits tensor
            logits = F.linear(hidden[s:s + 8], self._W, self._b)
            logits = logits.masked_fill(mask[s:s + 8, :, None] == 0, float("-inf"))
            pooled = logits.amax(dim=1).float() + (self._b_masked - self._b)  # -inf on special tokens
            w = torch.log1p(torch.relu(pooled))
            for r in w:
                nz = torch.nonzero(r > 0).squeeze(1)
                out.append((nz.cpu().numpy(), r[nz].cpu().numpy().astype(np.float32)))
        return out

    def _exact_head(self, hidden: Any, mask: Any, lengths: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
        """fp32-exact pooled weights of a batch of hidden states (batch x tokens x dim), on CPU.

        Per sequence, the (tokens x vocab) matmul and its max over tokens run into reused buffers
        (allocating ~15 MB per sequence costs page faults as slow as the matmul). With screening,
        that pass is in bf16 and only bounds the logits; the entries whose bound is positive are
        then recomputed in fp32 for the whole batch in one batched matmul.
        """
        torch = require_torch()
        n_seq, vocab = hidden.shape[0], self._W.shape[0]
        dtype = torch.bfloat16 if self._screen else torch.float32
        buf = getattr(self, "_buf", None)
        if buf is None or buf.dtype != dtype or buf.shape[0] < hidden.shape[1]:
            buf = self._buf = torch.empty((max(hidden.shape[1], 64), vocab), dtype=dtype)
        pooled = torch.empty((n_seq, vocab), dtype=dtype)
        h_all = hidden.bfloat16() if self._screen else hidden
        weight = self._Wb if self._screen else self._W
        for i, n in enumerate(lengths):
            logits = buf[:n]
            torch.mm(h_all[i, :n], weight.T, out=logits)
            torch.amax(logits, dim=0, out=pooled[i])
        if not self._screen:
            z = pooled + self._b_masked
            return [_positive_log1p(r) for r in z]
        # upper bound of every fp32 logit: bf16 value + rounding margin (see _SCREEN_MARGIN)
        norms = (hidden.norm(dim=2) * mask).amax(dim=1)
        bound = pooled.float() + self._b_masked + norms[:, None] * self._margin
        pairs = torch.nonzero(bound > 0)  # (doc, vocab id) rows, sorted by doc
        counts = torch.bincount(pairs[:, 0], minlength=n_seq)
        width = max(int(counts.max()), 1) if pairs.numel() else 1
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(pairs.shape[0]) - starts[pairs[:, 0]]
        cand = torch.zeros((n_seq, width), dtype=torch.long)
        valid = torch.zeros((n_seq, width), dtype=torch.bool)
        cand[pairs[:, 0], slot] = pairs[:, 1]
        valid[pairs[:, 0], slot] = True
        z = torch.bmm(hidden, self._W[cand].transpose(1, 2))  # (batch, tokens, candidates), fp32
        z = z.masked_fill(mask[:, :, None] == 0, float("-inf")).amax(dim=1) + self._b_masked[cand]
        z = z.masked_fill(~valid, float("-inf")).numpy()
        cand = cand.numpy()
        out = []
        for i in range(n_seq):
            keep = z[i] > 0
            out.append((cand[i][keep].astype(np.int64), np.log1p(z[i][keep]).astype(np.float32)))
        return out

    def _prune(self, ids: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.min_weight > 0:
            keep = w >= self.min_weight
            ids, w = ids[keep], w[keep]
        if self.top_k is not None and w.size > self.top_k:
            top = np.argsort(-w, kind="stable")[:self.top_k]
            ids, w = ids[top], w[top]
        return ids, w

    # ------------------------------------------------------------------ inspection
    def decode(self, vector: Any, top_k: int | None = None, row: int = 0) -> list[tuple[str, float]]:
        """A vector as ``(token, weight)`` pairs, heaviest first (SparseBatch row, (ids, w), dict, dense)."""
        return decode_vector(vector, self.vocab, top_k, row)

    # ------------------------------------------------------------------ persistence
    def config(self) -> dict[str, Any]:
        """JSON-able settings; enough to rebuild the encoder with :meth:`load`."""
        return {"type": self.name, "model": self.model_name, "doc_max_length": self.doc_max_length,
                "query_max_length": self.query_max_length, "batch_size": self.batch_size,
                "precision": self.precision, "top_k": self.top_k, "min_weight": self.min_weight,
                "vocab_size": self.vocab_size}

    def _init_args(self) -> dict[str, Any]:
        return {"doc_max_length": self.doc_max_length, "query_max_length": self.query_max_length,
                "batch_size": self.batch_size, "precision": self.precision, "top_k": self.top_k,
                "min_weight": self.min_weight}

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``encoder.json`` into an existing directory (weights are not copied: the model is referenced)."""
        (Path(directory) / "encoder.json").write_text(json.dumps(self.config(), indent=2) + "\n")

    @classmethod
    def _read_config(cls, directory: str | os.PathLike) -> dict[str, Any]:
        path = Path(directory) / "encoder.json"
        try:
            cfg = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: unreadable encoder config ({exc})") from exc
        if cfg.get("type") != cls.name:
            raise ValueError(f"{path}: holds a {cfg.get('type')!r} encoder, not {cls.name!r}")
        return cfg

    @classmethod
    def _load_args(cls, directory: Path, cfg: dict[str, Any]) -> dict[str, Any]:
        """Constructor arguments a subclass restores from its saved directory (none here)."""
        return {}

    @classmethod
    def load(cls, directory: str | os.PathLike, **overrides: Any) -> "SpladeEncoder":
        """Rebuild from ``encoder.json`` (``overrides`` replace saved settings, e.g. ``device``)."""
        cfg = cls._read_config(directory)
        args = {k: cfg[k] for k in ("doc_max_length", "query_max_length", "batch_size", "precision", "top_k",
                                    "min_weight") if k in cfg}
        args.update(cls._load_args(Path(directory), cfg))
        args.update(overrides)
        enc = cls(cfg["model"], **args)
        if enc.vocab_size != cfg.get("vocab_size", enc.vocab_size):
            raise ValueError(f"{directory}: tokenizer of {cfg['model']} has {enc.vocab_size} tokens, "
                             f"the saved encoder {cfg['vocab_size']}")
        return enc


def _positive_log1p(z: Any) -> tuple[np.ndarray, np.ndarray]:
    """(ids, log1p(z)) of the positive entries of a 1-d float tensor."""
    z = z.float().numpy()
    ids = np.flatnonzero(z > 0)
    return ids.astype(np.int64), np.log1p(z[ids]).astype(np.float32)


def _find_parent(model: Any, module: Any) -> tuple[Any, str]:
    for name, m in model.named_modules():
        for attr, child in m.named_children():
            if child is module:
                return m, attr
    raise ValueError("cannot locate the MLM output layer in the model")
