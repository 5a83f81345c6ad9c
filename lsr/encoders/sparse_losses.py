"""Losses of inference-free sparse training (torch tensors in, scalar tensors out).

The student scores a query against a document exactly as lsr searches: the query is the set of its
distinct non-special tokens, each weighted by the IDF table, and

    s(q, d) = sum over t in q of idf(t) * w_d(t)                       (inference_free_scores)

The ranking loss compares these scores, per query over its group of documents, with a teacher's:

* ``kl``: KL(p_teacher || p_student) with p_teacher = softmax(teacher_scale * teacher) and
  p_student = softmax(s) over the group (``kl_distillation``);
* ``margin-mse``: mean squared difference of the margins s(q, d_0) - s(q, d_j) and
  teacher_scale * (t(q, d_0) - t(q, d_j)), j >= 1 (``margin_mse``).

The sparsity term is the FLOPS regulariser of arXiv 2411.04403 on the document vectors,
sum_j ((1/N) sum_i w_ij)^2 over the N documents of the batch (``idf_aware_flops``). It is
"IDF-aware" through the matching function: a token's ranking gradient is scaled by its idf while
its FLOPS gradient is not, so low-idf tokens are the ones the penalty removes. Its weight grows as
lambda * min(1, (step / T)^2) (``flops_weight_at``, OpenSearch's schedule). With a threshold, the
documents with at most that many non-zeros are exempt (arXiv 2504.14839). docs/training.md has the
formulas and their sources.

Every function takes a ``valid`` mask (queries x group) so that groups shorter than the group size
are padded, not filled with repeated documents.
"""
from __future__ import annotations

from typing import Any

from lsr.encoders._torch import require_torch

__all__ = ["inference_free_scores", "inference_free_score_matrix", "kl_distillation", "margin_mse", "idf_aware_flops",
           "flops_weight_at"]


def inference_free_scores(query_tokens: Any, idf: Any, doc_weights: Any) -> Any:
    """s(q, d) for every query and each document of its group.

    Args:
        query_tokens: (queries x vocab) 0/1 float tensor, 1 on each distinct non-special query token.
        idf: (vocab,) query weights (a trainable parameter or a constant).
        doc_weights: (queries x group x vocab) document term weights.
    Returns:
        (queries x group) scores.
    """
    torch = require_torch()
    q = query_tokens * idf  # duplicates count once: the query vector holds idf(t), not tf * idf(t)
    return torch.bmm(doc_weights, q.unsqueeze(2)).squeeze(2)


def inference_free_score_matrix(query_tokens: Any, idf: Any, doc_weights: Any) -> Any:
    """s(q, d) for every query and every document of the batch (in-batch negatives).

    Args:
        query_tokens: (queries x vocab) 0/1 float tensor, as :func:`inference_free_scores`.
        idf: (vocab,) query weights.
        doc_weights: (documents x vocab) document term weights.
    Returns:
        (queries x documents) scores.
    """
    return (query_tokens * idf) @ doc_weights.T


def kl_distillation(student: Any, teacher: Any, valid: Any, teacher_scale: float = 1.0) -> Any:
    """mean over queries of sum_g p_g (log p_g - log q_g), p = softmax(teacher_scale * teacher),
    q = softmax(student), both over the valid documents of each query's group."""
    torch = require_torch()
    neg_inf = torch.finfo(student.dtype).min
    s = student.masked_fill(~valid, neg_inf)
    t = (teacher * teacher_scale).masked_fill(~valid, neg_inf)
    log_q = torch.log_softmax(s, dim=1)
    log_p = torch.log_softmax(t, dim=1)
    terms = (log_p.exp() * (log_p - log_q)).masked_fill(~valid, 0.0)
    return terms.sum(dim=1).mean()


def margin_mse(student: Any, teacher: Any, valid: Any, teacher_scale: float = 1.0) -> Any:
    """mean over valid (query, j >= 1) of ((s_0 - s_j) - teacher_scale * (t_0 - t_j))^2; slot 0
    holds the query's positive (or the teacher's top document without labels)."""
    s_margin = student[:, :1] - student[:, 1:]
    t_margin = (teacher[:, :1] - teacher[:, 1:]) * teacher_scale
    keep = valid[:, 1:] & valid[:, :1]
    if not bool(keep.any()):
        return student.sum() * 0.0
    return ((s_margin - t_margin) ** 2)[keep].mean()


def idf_aware_flops(doc_weights: Any, threshold: float | None = None) -> Any:
    """sum_j ((1/N) sum_i m_i w_ij)^2 over the (N x vocab) document weights of a batch; m_i = 1,
    or, with ``threshold``, m_i = 1 only for documents with more than ``threshold`` non-zeros
    (exempt documents still count in N, as in OpenSearch's implementation)."""
    w = doc_weights.abs()
    if threshold is not None:
        dense_enough = (w > 0).sum(dim=1) > threshold
        w = w * dense_enough.unsqueeze(1).to(w.dtype)
    return (w.mean(dim=0) ** 2).sum()


def flops_weight_at(step: int, weight: float, warmup: int) -> float:
    """lambda at optimizer step ``step`` (1-based): weight * min(1, (step / warmup)^2); no warm-up
    when ``warmup`` <= 0."""
    if warmup <= 0 or step >= warmup:
        return float(weight)
    return float(weight) * (max(step, 0) / warmup) ** 2
