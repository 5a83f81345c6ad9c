"""Training of inference-free sparse encoders (`lsr train`): model, loop, checkpoints, output.

Document side: any Hugging Face masked-LM with SPLADE pooling, w_d = max over the document's
tokens of log(1 + relu(logits)), special tokens excluded, as :class:`~lsr.encoders.splade.SpladeEncoder`
computes it at indexing time. Query side: the IDF table, frozen by default (``idf_trainable`` gives it
its own learning rate). Queries are tokenised as :meth:`InferenceFreeEncoder.encode_queries
<lsr.encoders.inference_free.InferenceFreeEncoder.encode_queries>` does, so the score optimised is
the one searched with (:func:`~lsr.encoders.sparse_losses.inference_free_scores`).

CPU cost is the ``tokens x vocab`` MLM head. Because log(1 + relu(.)) is monotone, the head max-pools
the logits first and keeps, per (document, vocab entry), the token that attains the maximum; the
logits are computed a document and a vocabulary block at a time into one reused buffer and never
kept. The backward pass then only touches the (document, entry) pairs with a non-zero gradient,
i.e. the document's non-zero weights, instead of a dense ``tokens x vocab`` gradient (three head
GEMMs become one).

Determinism: step ``s`` draws its groups from ``numpy.random.default_rng([seed, 1, s])`` and its
dropout from ``torch.manual_seed`` of (seed, s); the query order of epoch ``e`` is a permutation
from ``default_rng([seed, 0, e])``. A run resumed from a checkpoint therefore repeats exactly what
the uninterrupted run would have done.

>>> summary = train_inference_free(data, "splade-tiny", "idf.json", "out", TrainSettings(steps=100))  # doctest: +SKIP
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lsr.encoders._query_tokenizer import QueryTokenizer
from lsr.encoders._torch import (choose_device, length_sorted_batches, quiet_loading, require_torch,
                                 require_transformers, resolve_model, set_threads)
from lsr.encoders.inference_free import IDF_FILE, LENGTH_FILE, read_idf, tokenizer_limit
from lsr.encoders.sparse_losses import (flops_weight_at, idf_aware_flops, inference_free_score_matrix,
                                        inference_free_scores, kl_distillation, margin_mse)
from lsr.encoders.splade import _find_parent, load_tokenizer, tokenize

logger = logging.getLogger(__name__)

__all__ = ["TrainSettings", "TrainingData", "train_inference_free", "SparseDocumentModel", "query_token_ids"]

CHECKPOINTS = "checkpoints"
KEEP_CHECKPOINTS = 2
_LOSSES = ("kl", "margin-mse")


@dataclass(frozen=True)
class TrainSettings:
    """Settings of :func:`train_inference_free` (see docs/training.md for what each one does)."""

    steps: int | None = None           # optimizer steps (None: ceil(epochs * queries / batch_size))
    epochs: float = 1.0
    batch_size: int = 8                # queries per step
    group_size: int = 8                # documents per query per step (positive first, then negatives)
    lr: float = 2e-5                   # document model; 0 freezes it (only the IDF table trains)
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    loss: str = "kl"                   # "kl" or "margin-mse"
    in_batch_negatives: bool = False   # kl over every document of the step, not only the query's group
    raise_zero_weights: bool = False   # relu passes a gradient that raises a zero weight (straight-through)
    teacher_scale: float | None = None  # teacher scores (in [0, 1]) times this; student scores raw. None:
    # matched to the initial student (its within-group score spread over the teacher's: matched_teacher_scale)
    flops_weight: float = 0.002        # lambda of the document FLOPS term (OpenSearch's BEIR fine-tuning value)
    flops_warmup: int | None = None    # T of lambda * min(1, (step/T)^2); None: a third of the steps
    flops_threshold: float | None = None  # documents with at most this many non-zeros are exempt
    idf_trainable: bool = False
    idf_lr: float = 1e-3
    doc_max_length: int = 256
    query_max_length: int | None = None   # None: the tokenizer's limit, as InferenceFreeEncoder
    micro_batch: int = 32              # documents per transformer forward (length-sorted)
    seed: int = 13
    checkpoint_every: int = 200        # steps; 0 disables
    torch_threads: int | None = None
    device: str | None = None

    def __post_init__(self) -> None:
        positive_ints = {"batch_size": self.batch_size, "group_size": self.group_size,
                         "micro_batch": self.micro_batch}
        if self.steps is not None:
            positive_ints["steps"] = self.steps
        for name, value in positive_ints.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TrainSettings.{name} must be an integer >= 1, got {value!r}")
        if self.loss not in _LOSSES:
            raise ValueError(f"TrainSettings.loss must be one of {', '.join(_LOSSES)}, got {self.loss!r}")
        if self.in_batch_negatives and self.loss != "kl":
            raise ValueError("TrainSettings.in_batch_negatives needs loss='kl'")
        if self.loss == "margin-mse" and self.group_size < 2:
            raise ValueError("TrainSettings.group_size must be >= 2 for loss='margin-mse'")
        if self.teacher_scale is not None and (isinstance(self.teacher_scale, bool) or not self.teacher_scale > 0):
            raise ValueError(f"TrainSettings.teacher_scale must be > 0 or None (matched), got {self.teacher_scale!r}")
        for name in ("epochs", "idf_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"TrainSettings.{name} must be > 0, got {getattr(self, name)!r}")
        if not self.lr >= 0:
            raise ValueError(f"TrainSettings.lr must be >= 0 (0 freezes the document model), got {self.lr!r}")
        if self.lr == 0 and not self.idf_trainable:
            raise ValueError("TrainSettings.lr = 0 (--lr 0) freezes the document model: give idf_trainable "
                             "(--idf-trainable), or there is nothing to train")
        for name in ("weight_decay", "flops_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"TrainSettings.{name} must be >= 0, got {getattr(self, name)!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"TrainSettings.warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if self.flops_warmup is not None and self.flops_warmup < 0:
            raise ValueError(f"TrainSettings.flops_warmup must be >= 0, got {self.flops_warmup!r}")
        if self.doc_max_length < 3 or (self.query_max_length is not None and self.query_max_length < 3):
            raise ValueError("TrainSettings max lengths must leave room for the special tokens (>= 3)")
        if self.checkpoint_every < 0:
            raise ValueError(f"TrainSettings.checkpoint_every must be >= 0, got {self.checkpoint_every!r}")

    def total_steps(self, n_queries: int) -> int:
        return self.steps if self.steps is not None else max(1, math.ceil(self.epochs * n_queries / self.batch_size))

    def flops_T(self, total: int) -> int:
        return self.flops_warmup if self.flops_warmup is not None else max(1, total // 3)


@dataclass
class TrainingData:
    """What to train on (built by lsr.train): per query its candidates, teacher scores and positives."""

    queries: list[str]
    doc_texts: list[str]
    groups: list[np.ndarray]             # per query: int indices into doc_texts
    teacher: list[np.ndarray]            # per query: float32 teacher scores aligned with groups[i]
    positives: list[np.ndarray] | None = None  # per query: bool mask over groups[i]; None without labels

    def check(self) -> None:
        """ValueError naming the first inconsistent field and query."""
        n, n_docs = len(self.queries), len(self.doc_texts)
        if n == 0:
            raise ValueError("TrainingData.queries is empty")
        for name in ("groups", "teacher") + (("positives",) if self.positives is not None else ()):
            if len(getattr(self, name)) != n:
                raise ValueError(f"TrainingData.{name}: {len(getattr(self, name))} entries for {n} queries")
        for i in range(n):
            g = np.asarray(self.groups[i])
            if g.ndim != 1 or g.size == 0:
                raise ValueError(f"TrainingData.groups[{i}]: expected a non-empty 1-d array of document indices")
            if g.min() < 0 or g.max() >= n_docs:
                raise ValueError(f"TrainingData.groups[{i}]: document index outside 0..{n_docs - 1}")
            t = np.asarray(self.teacher[i])
            if t.shape != g.shape or not np.isfinite(t).all():
                raise ValueError(f"TrainingData.teacher[{i}]: expected {g.size} finite scores, got shape {t.shape}")
            if self.positives is not None and np.asarray(self.positives[i]).shape != g.shape:
                raise ValueError(f"TrainingData.positives[{i}]: expected a mask of {g.size}")

    def fingerprint(self) -> str:
        """A hash of everything that decides a run (so that a resume refuses other data)."""
        h = hashlib.blake2b(digest_size=16)
        for q in self.queries:
            h.update(q.encode("utf-8", "surrogatepass") + b"\0")
        for d in self.doc_texts:
            h.update(d.encode("utf-8", "surrogatepass") + b"\0")
        for i in range(len(self.queries)):
            h.update(np.asarray(self.groups[i], dtype=np.int64).tobytes())
            h.update(np.asarray(self.teacher[i], dtype=np.float32).tobytes())
            if self.positives is not None:
                h.update(np.asarray(self.positives[i], dtype=bool).tobytes())
        return h.hexdigest()


# ---------------------------------------------------------------------------- queries
def query_token_ids(tokenizer: Any, special_ids: Sequence[int], texts: Sequence[str], max_length: int) -> list[np.ndarray]:
    """Per query its distinct non-special token ids, sorted, as InferenceFreeEncoder.encode_queries
    takes them (before dropping the tokens whose idf is 0, which score 0 anyway)."""
    qt = QueryTokenizer(tokenizer, max_length)
    special = set(int(i) for i in special_ids)
    return [np.asarray(sorted(set(qt(str(t))) - special), dtype=np.int64) for t in texts]


# ---------------------------------------------------------------------------- document model
def _raising_relu_function() -> Any:
    torch = require_torch()

    class RaisingRelu(torch.autograd.Function):
        """relu whose backward also passes a gradient that would raise a clipped (finite) input:
        the loss can then give a document a weight on a token it has none for (plain relu passes
        nothing there, so a zero weight stays zero unless shared parameters move it)."""

        @staticmethod
        def forward(ctx: Any, x: Any) -> Any:
            ctx.save_for_backward(x)
            return x.clamp_min(0)

        @staticmethod
        def backward(ctx: Any, grad: Any) -> Any:
            x, = ctx.saved_tensors
            return torch.where((x > 0) | ((grad < 0) & torch.isfinite(x)), grad, torch.zeros_like(grad))

    return RaisingRelu


def _max_pool_head_function() -> Any:
    torch = require_torch()

    class MaxPooledHead(torch.autograd.Function):
        """pooled[d, v] = max over d's tokens t of (h[d, t] . W[v]) + b[v], with a sparse backward."""

        @staticmethod
        def forward(ctx: Any, hidden: Any, weight: Any, bias: Any, lengths: list[int]) -> Any:
            n_docs, width, dim = hidden.shape
            vocab = weight.shape[0]
            pooled = hidden.new_empty((n_docs, vocab))
            arg = torch.empty((n_docs, vocab), dtype=torch.long, device=hidden.device)
            if hidden.device.type == "cpu":
                # (vocab x tokens) logits, reduced along rows: 2x faster than the (tokens x vocab)
                # layout reduced along columns (measured on the 2-core AVX2 machine)
                flat_buf = hidden.new_empty(vocab * max(lengths))
                for i, n in enumerate(lengths):
                    logits = flat_buf[:vocab * n].view(vocab, n)
                    torch.mm(weight, hidden[i, :n].T, out=logits)
                    torch.max(logits, dim=1, out=(pooled[i], arg[i]))
            else:  # one batched matmul a few documents at a time, padding at -inf
                pad = torch.arange(width, device=hidden.device)[None, :] >= torch.as_tensor(
                    lengths, device=hidden.device)[:, None]
                for s in range(0, n_docs, 8):
                    z = torch.matmul(hidden[s:s + 8], weight.T).masked_fill(pad[s:s + 8, :, None], float("-inf"))
                    torch.max(z, dim=1, out=(pooled[s:s + 8], arg[s:s + 8]))
            pooled += bias
            ctx.save_for_backward(hidden, weight, arg)
            return pooled

        @staticmethod
        def backward(ctx: Any, grad: Any) -> Any:
            hidden, weight, arg = ctx.saved_tensors
            n_docs, width, dim = hidden.shape
            doc, entry = torch.nonzero(grad, as_tuple=True)
            g = grad[doc, entry].unsqueeze(1)
            rows = doc * width + arg[doc, entry]  # the token that attained each maximum
            flat = hidden.reshape(n_docs * width, dim)
            grad_hidden = grad_weight = None
            if ctx.needs_input_grad[0]:
                grad_hidden = torch.zeros_like(flat).index_add_(0, rows, g * weight[entry]).view_as(hidden)
            if ctx.needs_input_grad[1]:
                grad_weight = torch.zeros_like(weight).index_add_(0, entry, g * flat[rows])
            grad_bias = grad.sum(dim=0) if ctx.needs_input_grad[2] else None
            return grad_hidden, grad_weight, grad_bias, None

    return MaxPooledHead


class SparseDocumentModel:
    """A masked-LM with SPLADE pooling, trainable (``forward`` keeps the autograd graph)."""

    def __init__(self, model: str | os.PathLike, doc_max_length: int = 256, device: str | None = None,
                 micro_batch: int = 32, raise_zero_weights: bool = False) -> None:
        torch = require_torch()
        transformers = require_transformers()
        self.source = resolve_model(model)
        self.tokenizer, self.vocab, self.special_ids = load_tokenizer(self.source)
        self.device = choose_device(device)
        try:
            with quiet_loading():
                mlm, info = transformers.AutoModelForMaskedLM.from_pretrained(
                    self.source, dtype=torch.float32, output_loading_info=True)
        except (OSError, ValueError, KeyError) as exc:
            raise ValueError(f"cannot load a masked-LM model from {str(model)!r}: {exc}") from exc
        missing = sorted(info.get("missing_keys") or ())
        if missing:  # a checkpoint without its MLM head would train from a random head
            raise ValueError(f"{model}: not a masked-LM checkpoint: {len(missing)} weights are missing ({missing[0]}, ...)")
        self.mlm = mlm.to(self.device)
        self.decoder = mlm.get_output_embeddings()
        if not isinstance(self.decoder, torch.nn.Linear):
            raise ValueError(f"{model}: the MLM output layer is {type(self.decoder).__name__}, not Linear")
        self._parent, self._attr = _find_parent(mlm, self.decoder)
        self.n_out = min(self.decoder.weight.shape[0], len(self.vocab))
        mask = torch.zeros(self.n_out, device=self.device)
        mask[[i for i in self.special_ids if i < self.n_out]] = float("-inf")
        self._special_mask = mask  # special tokens never get a weight, as in SpladeEncoder
        max_pos = int(getattr(mlm.config, "max_position_embeddings", 0) or 1 << 30)
        self.doc_max_length = min(int(doc_max_length), max_pos)
        self.micro_batch = int(micro_batch)
        pad = getattr(mlm.config, "pad_token_id", None)
        self.pad_id = int(pad) if pad is not None else (self.tokenizer.token_to_id("[PAD]") or 0)
        self._head = _max_pool_head_function()
        self._relu = _raising_relu_function().apply if raise_zero_weights else torch.relu

    def parameters(self) -> Any:
        return self.mlm.parameters()

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        return tokenize(self.tokenizer, texts, self.doc_max_length)

    def forward(self, seqs: Sequence[Sequence[int]]) -> Any:
        """(documents x vocab) weights log(1 + relu(max-pooled logits)) of token id lists, in order."""
        torch = require_torch()
        bias = self.decoder.bias if self.decoder.bias is not None else torch.zeros(
            self.decoder.weight.shape[0], device=self.device)
        weight, bias = self.decoder.weight[:self.n_out], bias[:self.n_out]
        parts, order = [], []
        setattr(self._parent, self._attr, torch.nn.Identity())  # the model returns the transformed hidden states
        try:
            for batch in length_sorted_batches([len(s) for s in seqs], self.micro_batch):
                lengths = [len(seqs[i]) for i in batch]
                ids = torch.full((len(batch), max(lengths)), self.pad_id, dtype=torch.long)
                mask = torch.zeros_like(ids)
                for row, i in enumerate(batch):
                    ids[row, :lengths[row]] = torch.as_tensor(seqs[i], dtype=torch.long)
                    mask[row, :lengths[row]] = 1
                hidden = self.mlm(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
                parts.append(self._head.apply(hidden.float(), weight, bias, lengths))
                order.append(batch)
        finally:
            setattr(self._parent, self._attr, self.decoder)
        pooled = torch.cat(parts)[torch.as_tensor(np.argsort(np.concatenate(order)), device=self.device)]
        return torch.log1p(self._relu(pooled + self._special_mask))


# ---------------------------------------------------------------------------- sampling
def _epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, 0, epoch]).permutation(n)


def _step_queries(seed: int, step: int, batch_size: int, n: int) -> np.ndarray:
    """The query indices of 0-based step ``step``: consecutive slices of per-epoch permutations."""
    flat = np.arange(step * batch_size, (step + 1) * batch_size)
    epochs, pos = flat // n, flat % n
    return np.array([_epoch_order(seed, int(e), n)[p] for e, p in zip(epochs, pos)], dtype=np.int64)


def _sample_group(data: TrainingData, q: int, group_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(document indices, teacher scores) of one query's group: a labelled positive first (else the
    teacher's top candidate), then up to group_size - 1 other candidates drawn without replacement."""
    cand = np.asarray(data.groups[q], dtype=np.int64)
    teach = np.asarray(data.teacher[q], dtype=np.float32)
    pos = np.flatnonzero(np.asarray(data.positives[q], dtype=bool)) if data.positives is not None else np.zeros(0, int)
    first = int(rng.choice(pos)) if pos.size else int(np.argmax(teach))
    others = np.setdiff1d(np.arange(cand.size), pos if pos.size else [first])  # other positives are no negatives
    take = rng.choice(others, size=min(group_size - 1, others.size), replace=False) if others.size else others
    slots = np.concatenate([[first], take]).astype(np.int64)
    return cand[slots], teach[slots]


def _candidate_lookup(data: TrainingData) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per query its candidates sorted, with their teacher scores (for :func:`_in_batch_teacher`)."""
    out = []
    for g, t in zip(data.groups, data.teacher):
        order = np.argsort(np.asarray(g, dtype=np.int64), kind="stable")
        out.append((np.asarray(g, dtype=np.int64)[order], np.asarray(t, dtype=np.float32)[order]))
    return out


def _in_batch_teacher(queries: np.ndarray, docs: np.ndarray, by_doc: list[tuple[np.ndarray, np.ndarray]]) -> Any:
    """(queries x step documents) teacher scores: a document among the query's candidates gets its
    teacher score, any other one 0, the fused floor (it is in no teacher's top ``depth``; the
    candidates' min-max normalisation puts the weakest candidate of every teacher at 0)."""
    torch = require_torch()
    out = np.zeros((len(queries), docs.size), dtype=np.float32)
    for r, q in enumerate(queries):
        cand, teach = by_doc[int(q)]
        pos = np.minimum(np.searchsorted(cand, docs), cand.size - 1)
        hit = cand[pos] == docs
        out[r, hit] = teach[pos[hit]]
    return torch.as_tensor(out)


#: queries whose groups measure the initial score spreads (matched_teacher_scale)
SCALE_SAMPLE_QUERIES = 64


def matched_teacher_scale(model: "SparseDocumentModel", data: TrainingData, q_ids: list[np.ndarray], idf: Any,
                          settings: TrainSettings) -> float:
    """The teacher scale at which the teacher's scores spread within a group as much as the initial
    student's: mean within-group standard deviation of the student's scores over the teacher's, on
    the groups (sampled as in training) of a seeded sample of up to :data:`SCALE_SAMPLE_QUERIES`
    queries. A flatter teacher than the student makes the ranking loss shrink every document
    vector; a sharper one makes it grow them: matched, the loss teaches the order, not a scale."""
    torch = require_torch()
    rng = np.random.default_rng([settings.seed, 2])
    n = len(data.queries)
    sample = rng.choice(n, size=min(SCALE_SAMPLE_QUERIES, n), replace=False)
    groups = [_sample_group(data, int(q), max(2, settings.group_size), rng) for q in sample]
    keep = [(int(q), d, t) for q, (d, t) in zip(sample, groups) if d.size >= 2 and float(np.std(t)) > 0]
    if not keep:
        raise ValueError("teacher scores are equal within every sampled group: give --teacher-scale")
    docs = np.unique(np.concatenate([d for _, d, _ in keep]))
    where = {int(d): i for i, d in enumerate(docs)}
    was_training = model.mlm.training
    model.mlm.eval()
    with torch.no_grad():
        weights = model.forward(model.tokenize([data.doc_texts[int(d)] for d in docs]))
        s_std, t_std = [], []
        for q, d_idx, t in keep:
            qmask = torch.zeros((1, model.n_out), device=weights.device)
            ids = q_ids[q]
            qmask[0, ids[ids < model.n_out]] = 1.0
            rows = weights[torch.as_tensor([where[int(d)] for d in d_idx], device=weights.device)]
            s = inference_free_scores(qmask, idf, rows.unsqueeze(0))[0].float().cpu().numpy()
            s_std.append(float(np.std(s)))
            t_std.append(float(np.std(t)))
    model.mlm.train(was_training)
    scale = float(np.mean(s_std) / np.mean(t_std))
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError("the initial student scores every sampled group's documents equally: give --teacher-scale")
    return scale


class _FrozenRows:
    """The frozen document model's vectors, encoded once per document and kept sparse (its
    non-zeros): with ``lr = 0`` they do not change, so a step re-encodes nothing it has seen."""

    def __init__(self, model: SparseDocumentModel) -> None:
        self.model = model
        self.rows: dict[int, tuple[Any, Any]] = {}

    def weights(self, docs: list[int], tokens: dict[int, list[int]]) -> Any:
        """(len(docs) x vocab) weights of the documents ``docs``, whose token ids are ``tokens[d]``."""
        torch = require_torch()
        missing = [d for d in docs if d not in self.rows]
        if missing:
            with torch.no_grad():
                encoded = self.model.forward([tokens[d] for d in missing])
            for d, row in zip(missing, encoded):
                nz = torch.nonzero(row).squeeze(1)
                self.rows[d] = (nz, row[nz])
        out = torch.zeros((len(docs), self.model.n_out), device=self.model.device)
        for i, d in enumerate(docs):
            nz, values = self.rows[d]
            out[i, nz] = values
        return out


# ---------------------------------------------------------------------------- checkpoints
def _checkpoint_dirs(out: Path) -> list[tuple[int, Path]]:
    root = out / CHECKPOINTS
    found = []
    if root.is_dir():
        for p in root.iterdir():
            if p.is_dir() and p.name.startswith("step_") and p.name[5:].isdigit() and (p / "state.pt").is_file():
                found.append((int(p.name[5:]), p))
    return sorted(found)


def _save_checkpoint(out: Path, step: int, state: dict[str, Any], meta: dict[str, Any]) -> None:
    """OUT/checkpoints/step_N written under a temporary name and renamed; the latest 2 kept."""
    torch = require_torch()
    root = out / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-step_{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    torch.save(state, tmp / "state.pt")
    (tmp / "state.json").write_text(json.dumps(meta, indent=2) + "\n")
    final = root / f"step_{step}"
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for _, old in _checkpoint_dirs(out)[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------- output
def _replace_text(path: Path, text: str) -> None:
    """``path`` holds ``text``, written under a temporary name and renamed over it."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_output(out: Path, doc_model: SparseDocumentModel, idf: Any, idf_source: Path | None,
                  summary: dict[str, Any]) -> None:
    """The OpenSearch inference-free layout: save_pretrained model, tokenizer files, idf.json."""
    transformers = require_transformers()
    doc_model.mlm.save_pretrained(out)
    with quiet_loading():
        transformers.AutoTokenizer.from_pretrained(doc_model.source).save_pretrained(out)
    if idf_source is not None:
        if idf_source.resolve() != (out / IDF_FILE).resolve():
            shutil.copyfile(idf_source, out / IDF_FILE)
    else:
        values = idf.detach().cpu().numpy()
        table = {doc_model.vocab[i]: round(float(values[i]), 6) for i in np.flatnonzero(values)}
        _replace_text(out / IDF_FILE, json.dumps(table))
    # the document length trained with, which InferenceFreeEncoder(out) then encodes at by default
    _replace_text(out / LENGTH_FILE, json.dumps({"max_seq_length": doc_model.doc_max_length}) + "\n")
    (out / "training.json").write_text(json.dumps(summary, indent=2) + "\n")


def _idf_table(idf: str | os.PathLike | dict, vocab: list[str], out: Path) -> tuple[np.ndarray, Path | None]:
    """The IDF vector over ``vocab`` and the file it came from (a dict is written to OUT/idf.json)."""
    if isinstance(idf, dict):
        out.mkdir(parents=True, exist_ok=True)
        path = out / IDF_FILE
        path.write_text(json.dumps(idf))
    else:
        path = Path(idf)
        if not path.is_file():
            raise ValueError(f"IDF file {path} does not exist")
    return read_idf(path, vocab), path


# ---------------------------------------------------------------------------- training
def train_inference_free(data: TrainingData, init: str | os.PathLike, idf: str | os.PathLike | dict,
                         out: str | os.PathLike, settings: TrainSettings, show_progress: bool = False) -> dict:
    """Train an inference-free document encoder; resume from OUT/checkpoints when present.

    Writes the OpenSearch inference-free layout to ``out`` (loadable by
    ``lsr.InferenceFreeRetriever(out)``, ``lsr eval -r inference-free -m out`` and transformers) and
    returns a summary: steps, final loss, rank loss, FLOPS, document non-zeros, documents/s.
    """
    from tqdm.auto import tqdm

    torch = require_torch()
    data.check()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    set_threads(settings.torch_threads)
    model = SparseDocumentModel(init, settings.doc_max_length, settings.device, settings.micro_batch,
                                settings.raise_zero_weights)
    device = model.device
    idf_vec, idf_path = _idf_table(idf, model.vocab, out)
    idf_vec[[i for i in model.special_ids if i < idf_vec.size]] = 0.0
    idf_param = torch.nn.Parameter(torch.as_tensor(idf_vec[:model.n_out]).to(device),
                                   requires_grad=settings.idf_trainable)
    q_len = settings.query_max_length or tokenizer_limit(model.source)
    q_ids = query_token_ids(model.tokenizer, model.special_ids, data.queries, q_len)
    doc_tokens: dict[int, list[int]] = {}  # tokenised on first use

    # from the initial model (before any checkpoint is loaded: a resumed run gets the same value)
    scale = (settings.teacher_scale if settings.teacher_scale is not None
             else matched_teacher_scale(model, data, q_ids, idf_param, settings))
    logger.info("teacher scale %.2f%s", scale, "" if settings.teacher_scale is not None else " (matched)")
    total = settings.total_steps(len(data.queries))
    warm = int(math.ceil(settings.warmup_ratio * total))
    flops_T = settings.flops_T(total)
    decay, no_decay = [], []
    for name, p in model.mlm.named_parameters():
        (no_decay if p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(p)
    frozen = settings.lr == 0  # the document model as initialised; only the IDF table trains
    groups = [] if frozen else [{"params": decay, "weight_decay": settings.weight_decay},
                                {"params": no_decay, "weight_decay": 0.0}]
    if settings.idf_trainable:
        groups.append({"params": [idf_param], "weight_decay": 0.0, "lr": settings.idf_lr})
    optimizer = torch.optim.AdamW(groups, lr=settings.lr)

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        return max(0.0, (total - step) / max(1, total - warm))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    fingerprint = data.fingerprint()
    run_key = {"settings": {k: v for k, v in asdict(settings).items()
                            if k not in ("checkpoint_every", "torch_threads", "device")},
               "data": fingerprint, "init": str(model.source)}
    history: list[dict[str, float]] = []
    start = 0
    found = _checkpoint_dirs(out)
    if found:
        step0, path = found[-1]
        meta = json.loads((path / "state.json").read_text())
        defaults = {f.name: f.default for f in fields(TrainSettings)}
        if isinstance(meta.get("settings"), dict):  # a setting added since the checkpoint has its default there
            meta["settings"] = {**{k: defaults[k] for k in run_key["settings"] if k not in meta["settings"]},
                                **meta["settings"]}
        for key in ("settings", "data", "init"):
            if meta.get(key) != run_key[key]:
                raise ValueError(f"{path}: checkpoint of another run ({key} differs); remove {out / CHECKPOINTS} "
                                 "or train into another directory")
        state = torch.load(path / "state.pt", map_location=device, weights_only=True)
        model.mlm.load_state_dict(state["model"])
        with torch.no_grad():
            idf_param.copy_(state["idf"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        history = list(meta.get("history", []))
        start = step0
        logger.info("%s: resuming at step %d of %d", path, start, total)

    by_doc = _candidate_lookup(data) if settings.in_batch_negatives else []
    frozen_rows = _FrozenRows(model)
    model.mlm.train(not frozen)  # frozen: no dropout, the document vectors the index will hold
    model.mlm.requires_grad_(not frozen)  # frozen: no graph through the document model
    t_train, n_docs_seen = 0.0, 0
    with tqdm(total=total, initial=start, desc="train", unit="step", disable=not show_progress) as bar:
        for step in range(start, total):
            t0 = time.perf_counter()
            rng = np.random.default_rng([settings.seed, 1, step])
            torch.manual_seed(settings.seed * 1_000_003 + step)
            queries = _step_queries(settings.seed, step, settings.batch_size, len(data.queries))
            sampled = [_sample_group(data, int(q), settings.group_size, rng) for q in queries]
            docs = np.unique(np.concatenate([d for d, _ in sampled]))
            missing = [int(d) for d in docs if int(d) not in doc_tokens]
            if missing:
                for d, toks in zip(missing, model.tokenize([data.doc_texts[d] for d in missing])):
                    doc_tokens[d] = toks
            if frozen:  # each document through the frozen model once; its row reused after that
                weights = frozen_rows.weights([int(d) for d in docs], doc_tokens)
            else:
                weights = model.forward([doc_tokens[int(d)] for d in docs])
            where = {int(d): i for i, d in enumerate(docs)}
            b, g = len(queries), settings.group_size
            slot = torch.zeros((b, g), dtype=torch.long)
            valid = torch.zeros((b, g), dtype=torch.bool)
            teacher = torch.zeros((b, g))
            qmask = torch.zeros((b, model.n_out))
            for r, (q, (d_idx, t)) in enumerate(zip(queries, sampled)):
                slot[r, :d_idx.size] = torch.as_tensor([where[int(d)] for d in d_idx])
                valid[r, :d_idx.size] = True
                teacher[r, :d_idx.size] = torch.as_tensor(t)
                ids = q_ids[int(q)]
                qmask[r, ids[ids < model.n_out]] = 1.0
            if settings.in_batch_negatives:  # every query against every document of the step
                teacher = _in_batch_teacher(queries, docs, by_doc)
                valid = torch.ones((b, docs.size), dtype=torch.bool)
                teacher, valid, qmask = (x.to(device) for x in (teacher, valid, qmask))
                scores = inference_free_score_matrix(qmask, idf_param, weights)
            else:
                slot, valid, teacher, qmask = (x.to(device) for x in (slot, valid, teacher, qmask))
                scores = inference_free_scores(qmask, idf_param, weights[slot])
            loss_fn = kl_distillation if settings.loss == "kl" else margin_mse
            rank = loss_fn(scores, teacher, valid, scale)
            flops = idf_aware_flops(weights, settings.flops_threshold)
            lam = flops_weight_at(step + 1, settings.flops_weight, flops_T)
            loss = rank + lam * flops
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if settings.idf_trainable:  # a weight below 0 would reward a missing term, and break MaxScore's bounds
                with torch.no_grad():
                    idf_param.clamp_(min=0.0)
            scheduler.step()
            nnz = float((weights > 0).sum(dim=1).float().mean())
            seconds = time.perf_counter() - t0
            history.append({"loss": loss.item(), "rank": rank.item(), "flops": flops.item(), "nnz": nnz,
                            "docs": int(len(docs)), "seconds": round(seconds, 6)})
            t_train += seconds
            n_docs_seen += len(docs)
            bar.set_postfix(loss=f"{history[-1]['loss']:.4f}", flops=f"{history[-1]['flops']:.2f}", nnz=f"{nnz:.0f}")
            bar.update(1)
            done = step + 1
            if settings.checkpoint_every and (done % settings.checkpoint_every == 0 or done == total):
                state = {"model": model.mlm.state_dict(), "idf": idf_param.detach().clone(),
                         "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                         "torch_rng": torch.get_rng_state(), "step": done,
                         "data_order": torch.as_tensor(_epoch_order(settings.seed, done * settings.batch_size
                                                                    // len(data.queries), len(data.queries)))}
                _save_checkpoint(out, done, state, {**run_key, "step": done, "total_steps": total,
                                                    "history": history})
    last = history[-1] if history else {"loss": float("nan"), "rank": float("nan"), "flops": float("nan"), "nnz": 0.0}
    summary = {"steps": total, "resumed_from": start, "loss": last["loss"], "rank_loss": last["rank"],
               "flops": last["flops"], "doc_nonzeros": last["nnz"],
               "docs_per_s": n_docs_seen / t_train if t_train else None, "teacher_scale": scale,
               "loss_history": [h["loss"] for h in history], "history": history, "settings": asdict(settings)}
    model.mlm.eval()
    _write_output(out, model, idf_param, None if settings.idf_trainable else idf_path, summary)
    return summary
