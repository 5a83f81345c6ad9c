"""Inference-free training core: losses against hand arithmetic, the FLOPS schedule, the pooled head
against plain autograd, training = search scoring, overfitting a tiny set, kill-and-resume."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from conftest_splade import CORPUS, QRELS, QUERIES, TEXTS, reference_splade, tiny_mlm  # noqa: E402

import lsr.encoders.sparse_training as st  # noqa: E402
from lsr.encoders.sparse_losses import (flops_weight_at, idf_aware_flops, inference_free_scores,  # noqa: E402
                                        kl_distillation, margin_mse)
from lsr.encoders.sparse_training import TrainingData, TrainSettings, train_inference_free  # noqa: E402

__all__ = ["tiny_mlm"]


# ---------------------------------------------------------------------------- losses
def test_kl_by_hand():
    student = torch.tensor([[2.0, 1.0, 0.0], [0.5, -1.0, 9.0]])
    teacher = torch.tensor([[1.0, 0.0, 0.5], [0.2, 0.8, 0.0]])
    valid = torch.tensor([[True, True, True], [True, True, False]])  # second group has 2 documents
    scale = 2.0

    def softmax(xs):
        e = [math.exp(x) for x in xs]
        return [v / sum(e) for v in e]

    want = 0.0
    for s, t in (([2.0, 1.0, 0.0], [1.0, 0.0, 0.5]), ([0.5, -1.0], [0.2, 0.8])):
        p, q = softmax([scale * x for x in t]), softmax(s)
        want += sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))
    got = kl_distillation(student, teacher, valid, teacher_scale=scale)
    assert got.item() == pytest.approx(want / 2, rel=1e-6)
    assert kl_distillation(teacher * scale, teacher, valid, scale).item() == pytest.approx(0.0, abs=1e-7)


def test_margin_mse_by_hand():
    student = torch.tensor([[3.0, 1.0, 2.0], [1.0, 4.0, 0.0]])
    teacher = torch.tensor([[0.9, 0.1, 0.5], [0.5, 0.7, 0.0]])
    valid = torch.tensor([[True, True, True], [True, True, False]])
    scale = 10.0
    terms = [((3 - 1) - scale * (0.9 - 0.1)) ** 2, ((3 - 2) - scale * (0.9 - 0.5)) ** 2,
             ((1 - 4) - scale * (0.5 - 0.7)) ** 2]
    assert margin_mse(student, teacher, valid, scale).item() == pytest.approx(sum(terms) / 3, rel=1e-6)


def test_flops_by_hand_and_threshold():
    w = torch.tensor([[1.0, 0.0, 2.0, 0.0], [3.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 4.0]])
    # sum_j (mean_i w_ij)^2 = (4/3)^2 + (1/3)^2 + (2/3)^2 + (4/3)^2
    assert idf_aware_flops(w).item() == pytest.approx((16 + 1 + 4 + 16) / 9, rel=1e-6)
    # threshold 1: the third document (1 non-zero) is exempt, but still counts in N = 3
    assert idf_aware_flops(w, threshold=1).item() == pytest.approx((16 + 1 + 4 + 0) / 9, rel=1e-6)
    assert idf_aware_flops(w, threshold=2).item() == pytest.approx(0.0)


def test_flops_schedule():
    lam, T = 0.08, 100
    assert flops_weight_at(1, lam, T) == pytest.approx(lam * (1 / 100) ** 2)
    assert flops_weight_at(50, lam, T) == pytest.approx(lam * 0.25)
    assert flops_weight_at(100, lam, T) == pytest.approx(lam)
    assert flops_weight_at(5000, lam, T) == pytest.approx(lam)
    assert flops_weight_at(3, lam, 0) == pytest.approx(lam)


def test_scores_are_idf_times_doc_weight():
    q = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    idf = torch.tensor([2.0, 3.0, 0.5])
    d = torch.tensor([[[1.0, 5.0, 2.0], [0.0, 1.0, 4.0]], [[1.0, 5.0, 2.0], [7.0, 0.0, 1.0]]])
    want = [[2 * 1 + 0.5 * 2, 0.5 * 4], [3 * 5, 0.0]]
    np.testing.assert_allclose(inference_free_scores(q, idf, d).numpy(), want, rtol=1e-6)


def test_pooled_head_matches_plain_autograd():
    torch.manual_seed(0)
    hidden = torch.randn(3, 7, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=True)
    bias = (torch.randn(50) - 1.0).requires_grad_()
    lengths = [7, 4, 1]
    head = st._max_pool_head_function()
    out = torch.log1p(torch.relu(head.apply(hidden, weight, bias, lengths)))
    r = torch.randn(3, 50)
    grads = torch.autograd.grad((out * r).sum() + (out.mean(0) ** 2).sum(), (hidden, weight, bias))
    pad = torch.arange(7)[None, :] >= torch.tensor(lengths)[:, None]
    ref = torch.log1p(torch.relu((hidden @ weight.T + bias).masked_fill(pad[:, :, None], float("-inf")).amax(1)))
    ref_grads = torch.autograd.grad((ref * r).sum() + (ref.mean(0) ** 2).sum(), (hidden, weight, bias))
    np.testing.assert_allclose(out.detach().numpy(), ref.detach().numpy(), atol=1e-5)
    for g, rg in zip(grads, ref_grads):
        np.testing.assert_allclose(g.numpy(), rg.numpy(), atol=1e-5)


# ---------------------------------------------------------------------------- training = search
def test_document_weights_and_queries_match_search_time(tiny_mlm):
    from lsr.encoders.inference_free import InferenceFreeEncoder

    model = st.SparseDocumentModel(tiny_mlm, doc_max_length=20)
    model.mlm.eval()
    with torch.no_grad():
        w = model.forward(model.tokenize(TEXTS)).numpy()
    np.testing.assert_allclose(w, reference_splade(tiny_mlm, TEXTS, 20), atol=1e-4)
    enc = InferenceFreeEncoder(tiny_mlm, query_max_length=8)
    queries = list(QUERIES.values()) + ["heart heart the Heart!", "unknownword", ""]
    ids = st.query_token_ids(model.tokenizer, model.special_ids, queries, 8)
    batch = enc.encode_queries(queries)
    for i in range(len(queries)):
        got_ids, got_w = batch.row(i)
        keep = enc.idf[ids[i]] != 0  # the encoder drops tokens whose idf is 0
        np.testing.assert_array_equal(got_ids, ids[i][keep])
        np.testing.assert_array_equal(got_w, enc.idf[ids[i][keep]])


# ---------------------------------------------------------------------------- training runs
def _tiny_data(labelled: bool = True) -> TrainingData:
    doc_ids = list(CORPUS)
    texts = [f"{t} {x}".strip() for t, x in CORPUS.values()]
    queries, groups, teacher, positives = [], [], [], []
    for q, text in QUERIES.items():
        queries.append(text)
        groups.append(np.arange(len(doc_ids)))
        rel = np.array([QRELS[q].get(d, 0) for d in doc_ids], dtype=np.float32)
        teacher.append(rel / rel.max())
        positives.append(rel > 0)
    return TrainingData(queries, texts, groups, teacher, positives if labelled else None)


@pytest.fixture(scope="module")
def trainable_mlm(tmp_path_factory) -> Path:
    """The tiny MLM with the usual init scale and a decoder bias of +1: every entry starts active.
    (SPLADE's relu passes no gradient to an entry whose logit is negative for all of a document's
    tokens, so the random x20 model of conftest_splade cannot learn the terms it lacks.)"""
    from conftest_splade import build_tiny_mlm
    from transformers import BertForMaskedLM

    directory = build_tiny_mlm(tmp_path_factory.mktemp("trainable_mlm"))
    model = BertForMaskedLM.from_pretrained(str(directory))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(1 / 20)
        model.cls.predictions.bias.fill_(1.0)
    model.save_pretrained(str(directory))
    return directory


def _top1(model_dir: Path, idf: Path, texts: list[str]) -> list[str]:
    from lsr import InferenceFreeRetriever

    retriever = InferenceFreeRetriever(str(model_dir), doc_max_length=32, idf=str(idf))
    retriever.index(list(CORPUS), texts)
    res = retriever.search(list(QUERIES.values()), k=1)
    return [res.doc_ids[int(i)] for i in res.ids[:, 0]]


def test_matched_teacher_scale_equals_the_ratio_of_score_spreads(tiny_mlm):
    """With groups holding every candidate, the matched scale is mean std of the student's
    (search-time) scores over mean std of the teacher's, computed here from the independent SPLADE
    reference and the inference-free query encoder; twice the teacher scores halve it."""
    from lsr.encoders.inference_free import InferenceFreeEncoder

    data = _tiny_data(labelled=False)  # without labels a group is every candidate (labelled: one positive)
    settings = TrainSettings(group_size=len(data.doc_texts), doc_max_length=20)
    model = st.SparseDocumentModel(tiny_mlm, doc_max_length=20)
    enc = InferenceFreeEncoder(tiny_mlm, query_max_length=16)
    idf = torch.as_tensor(enc.idf[:model.n_out], dtype=torch.float32)
    q_ids = st.query_token_ids(model.tokenizer, model.special_ids, data.queries, 16)
    got = st.matched_teacher_scale(model, data, q_ids, idf, settings)
    docs = reference_splade(tiny_mlm, data.doc_texts, 20)
    queries = enc.encode_queries(data.queries)
    s_std, t_std = [], []
    for i in range(len(data.queries)):
        ids, w = queries.row(i)
        s_std.append(np.std(docs[:, ids] @ w))
        t_std.append(np.std(data.teacher[i]))
    assert got == pytest.approx(np.mean(s_std) / np.mean(t_std), rel=1e-4)
    doubled = TrainingData(data.queries, data.doc_texts, data.groups, [2 * t for t in data.teacher], data.positives)
    assert st.matched_teacher_scale(model, doubled, q_ids, idf, settings) == pytest.approx(got / 2, rel=1e-5)
    flat = TrainingData(data.queries, data.doc_texts, data.groups, [0 * t for t in data.teacher], data.positives)
    with pytest.raises(ValueError, match="teacher scores are equal"):
        st.matched_teacher_scale(model, flat, q_ids, idf, settings)


def test_in_batch_negatives_score_every_document_of_the_step(tiny_mlm, tmp_path, monkeypatch):
    """With in-batch negatives a query's KL runs over every document of the step: the student's
    scores are the search-time scores (independent SPLADE reference x the inference-free query
    vector), the teacher's are the query's own for its candidates and 0 for any other document."""
    import shutil

    from transformers import BertForMaskedLM

    from lsr.encoders.inference_free import InferenceFreeEncoder

    model_dir = tmp_path / "no-dropout"  # the tiny model without dropout, so a reference can match
    shutil.copytree(tiny_mlm, model_dir)
    mlm = BertForMaskedLM.from_pretrained(str(tiny_mlm))
    mlm.config.hidden_dropout_prob = mlm.config.attention_probs_dropout_prob = 0.0
    mlm.save_pretrained(str(model_dir))
    base = _tiny_data()
    n = len(base.doc_texts)
    groups = [np.roll(np.arange(n), -i)[:3] for i in range(len(base.queries))]  # 3 candidates each
    teacher = [np.asarray([0.9, 0.4, 0.1], np.float32) for _ in groups]
    data = TrainingData(base.queries, base.doc_texts, groups, teacher, None)
    seen = []
    real = st.kl_distillation

    def spy(student, teach, valid, scale):
        seen.append((student.detach().numpy().copy(), teach.numpy().copy(), valid.numpy().copy()))
        return real(student, teach, valid, scale)
    monkeypatch.setattr(st, "kl_distillation", spy)
    b = len(data.queries)
    settings = TrainSettings(steps=1, batch_size=b, group_size=2, in_batch_negatives=True, teacher_scale=5.0,
                             doc_max_length=20, query_max_length=16, checkpoint_every=0, torch_threads=1, seed=7)
    train_inference_free(data, model_dir, model_dir / "idf.json", tmp_path / "out", settings)
    (student, teach, valid), = seen
    rng = np.random.default_rng([7, 1, 0])  # the step's own sampling
    queries = st._step_queries(7, 0, b, b)
    docs = np.unique(np.concatenate([st._sample_group(data, int(q), 2, rng)[0] for q in queries]))
    assert student.shape == teach.shape == (b, docs.size) and valid.all()
    weights = reference_splade(model_dir, [data.doc_texts[d] for d in docs], 20)
    enc = InferenceFreeEncoder(model_dir, query_max_length=16)
    qv = enc.encode_queries([data.queries[q] for q in queries])
    for r, q in enumerate(queries):
        ids, w = qv.row(r)
        np.testing.assert_allclose(student[r], weights[:, ids] @ w, rtol=1e-4, atol=1e-5)
        own = dict(zip(groups[q].tolist(), teacher[q].tolist()))
        np.testing.assert_allclose(teach[r], [own.get(int(d), 0.0) for d in docs], rtol=1e-6)
    assert (teach == 0).any() and (teach > 0).sum() > b  # other queries' documents, and more than one own each
    with pytest.raises(ValueError, match="in_batch_negatives needs loss='kl'"):
        TrainSettings(in_batch_negatives=True, loss="margin-mse")


def test_tiny_model_overfits_and_loads_as_a_retriever(trainable_mlm, tmp_path):
    data = _tiny_data()
    settings = TrainSettings(steps=30, batch_size=4, group_size=6, lr=1e-2, warmup_ratio=0.0, teacher_scale=10.0,
                             flops_weight=1e-3, flops_warmup=10, doc_max_length=32, checkpoint_every=0, seed=3,
                             torch_threads=1)
    out = tmp_path / "out"
    idf = trainable_mlm / "idf.json"
    summary = train_inference_free(data, trainable_mlm, idf, out, settings)
    hist = summary["loss_history"]
    assert np.mean(hist[-5:]) < 0.2 * np.mean(hist[:5])
    assert (out / "idf.json").read_bytes() == idf.read_bytes()  # frozen: the same table
    best = [max(QRELS[q], key=QRELS[q].get) for q in QUERIES]
    assert _top1(trainable_mlm, idf, data.doc_texts) != best  # untrained, some query misses
    assert _top1(out, out / "idf.json", data.doc_texts) == best  # lsr's own retriever, built from OUT
    from lsr.encoders.inference_free import InferenceFreeEncoder

    enc = InferenceFreeEncoder(out, doc_max_length=32)  # plain transformers reads the same model
    np.testing.assert_allclose(enc.encode_documents(data.doc_texts).to_scipy().toarray(),
                               reference_splade(out, data.doc_texts, 32), atol=1e-4)


def test_killed_run_resumes_to_the_same_weights(tiny_mlm, tmp_path, monkeypatch):
    """Tolerance: exact (the resumed run repeats the same float operations); checked at atol 1e-7."""
    data = _tiny_data(labelled=False)
    settings = TrainSettings(steps=6, batch_size=3, group_size=3, lr=1e-3, idf_trainable=True, idf_lr=1e-2,
                             doc_max_length=24, checkpoint_every=2, flops_threshold=2, seed=5,
                             torch_threads=1)
    full = tmp_path / "full"
    train_inference_free(data, tiny_mlm, tiny_mlm / "idf.json", full, settings)

    killed = tmp_path / "killed"
    save = st._save_checkpoint

    def save_then_die(out, step, state, meta):
        save(out, step, state, meta)
        if step == 4:
            raise KeyboardInterrupt  # killed right after the step-4 checkpoint
    monkeypatch.setattr(st, "_save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_inference_free(data, tiny_mlm, tiny_mlm / "idf.json", killed, settings)
    monkeypatch.setattr(st, "_save_checkpoint", save)
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == ["step_2", "step_4"]
    summary = train_inference_free(data, tiny_mlm, tiny_mlm / "idf.json", killed, settings)
    assert summary["resumed_from"] == 4
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == ["step_4", "step_6"]

    from safetensors.torch import load_file

    a, b = load_file(str(full / "model.safetensors")), load_file(str(killed / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k].numpy(), b[k].numpy(), atol=1e-7, rtol=0, err_msg=k)
    assert json.loads((full / "idf.json").read_text()) == json.loads((killed / "idf.json").read_text())
    # trained idf differs from the initial table
    assert json.loads((full / "idf.json").read_text()) != json.loads((tiny_mlm / "idf.json").read_text())


def test_resume_refuses_other_settings_and_bad_data(tiny_mlm, tmp_path):
    data = _tiny_data()
    out = tmp_path / "out"
    train_inference_free(data, tiny_mlm, tiny_mlm / "idf.json", out,
                         TrainSettings(steps=1, batch_size=2, group_size=2, doc_max_length=16, checkpoint_every=1,
                                       torch_threads=1))
    with pytest.raises(ValueError, match="settings differs"):
        train_inference_free(data, tiny_mlm, tiny_mlm / "idf.json", out,
                             TrainSettings(steps=1, batch_size=2, group_size=3, doc_max_length=16))
    bad = _tiny_data()
    bad.groups[2] = np.array([0, 99])
    with pytest.raises(ValueError, match=r"groups\[2\]"):
        train_inference_free(bad, tiny_mlm, tiny_mlm / "idf.json", tmp_path / "bad", TrainSettings(steps=1))
    with pytest.raises(ValueError, match="TrainSettings.loss"):
        TrainSettings(loss="mse")


def test_raising_relu_passes_only_gradients_that_raise_a_clipped_weight():
    x = torch.tensor([2.0, -1.0, -1.0, 0.0, float("-inf")], requires_grad=True)
    y = st._raising_relu_function().apply(x)
    assert y.tolist() == [2.0, 0.0, 0.0, 0.0, 0.0]
    (y * torch.tensor([3.0, -2.0, 5.0, -1.0, -4.0])).sum().backward()
    # kept: the active input, and the clipped finite ones whose gradient says "raise me" (descent direction)
    assert x.grad.tolist() == [3.0, -2.0, 0.0, -1.0, 0.0]
    z = torch.tensor([2.0, -1.0], requires_grad=True)
    torch.relu(z).sum().backward()
    assert z.grad.tolist() == [1.0, 0.0]  # plain relu: nothing for the clipped one


def test_trainable_idf_stays_non_negative(tiny_mlm, tmp_path):
    """A large IDF learning rate drives some query weights below 0; each step projects them back to 0
    (a negative weight would reward a document for lacking the term), so OUT/idf.json has none."""
    data = _tiny_data()
    start = json.loads((tiny_mlm / "idf.json").read_text())
    settings = TrainSettings(steps=8, batch_size=3, group_size=3, lr=1e-4, idf_trainable=True, idf_lr=5.0,
                             doc_max_length=24, checkpoint_every=0, seed=3, torch_threads=1)
    train_inference_free(data, tiny_mlm, tiny_mlm / "idf.json", tmp_path / "out", settings)
    table = json.loads((tmp_path / "out" / "idf.json").read_text())
    assert min(table.values()) >= 0
    dropped = [t for t, w in start.items() if w > 0 and t not in table]  # clamped to 0: not written
    assert dropped, "the learning rate was meant to push some weight below 0"
    assert any(abs(table[t] - start[t]) > 1 for t in table if t in start)


def test_frozen_rows_are_encoded_once_and_train_what_fresh_encodings_train(tiny_mlm, tmp_path, monkeypatch):
    """lr = 0 encodes each document once (the model does not change) and keeps its row: the IDF
    table trained from those rows equals one trained re-encoding every step's documents, and the
    model's forward passes see exactly the steps' repeated documents fewer."""
    data = _tiny_data()
    settings = TrainSettings(steps=6, batch_size=3, group_size=3, lr=0.0, idf_trainable=True, idf_lr=0.5,
                             doc_max_length=24, checkpoint_every=0, seed=3, torch_threads=1)
    step_docs: list[list[int]] = []  # per step, the documents whose weights it asked for
    seen: list[int] = []  # the documents not encoded yet when asked for
    cached = st._FrozenRows.weights

    def counting(self, docs, tokens):
        step_docs.append(list(docs))
        seen.extend(d for d in docs if d not in self.rows)
        return cached(self, docs, tokens)

    forwarded: list[int] = []  # documents through the model's forward (teacher-scale pass included)
    forward = st.SparseDocumentModel.forward

    def counted_forward(self, seqs):
        forwarded.append(len(seqs))
        return forward(self, seqs)

    monkeypatch.setattr(st.SparseDocumentModel, "forward", counted_forward)
    monkeypatch.setattr(st._FrozenRows, "weights", counting)
    train_inference_free(data, tiny_mlm, tiny_mlm / "idf.json", tmp_path / "cached", settings)
    assert len(step_docs) == settings.steps  # every step's weights came from the kept rows
    assert sorted(seen) == sorted(set(seen)) == sorted({d for docs in step_docs for d in docs})
    repeated = sum(map(len, step_docs)) - len(seen)
    assert repeated > 0  # some steps reuse rows
    n_cached = sum(forwarded)

    def fresh(self, docs, tokens):  # the reference: every step's documents through the model
        with torch.no_grad():
            return self.model.forward([tokens[d] for d in docs])

    forwarded.clear()
    monkeypatch.setattr(st._FrozenRows, "weights", fresh)
    train_inference_free(data, tiny_mlm, tiny_mlm / "idf.json", tmp_path / "fresh", settings)
    assert sum(forwarded) - n_cached == repeated
    a = json.loads((tmp_path / "cached" / "idf.json").read_text())
    b = json.loads((tmp_path / "fresh" / "idf.json").read_text())
    assert a.keys() == b.keys() and a != json.loads((tiny_mlm / "idf.json").read_text())
    assert max(abs(a[t] - b[t]) for t in a) < 1e-5


def test_lr_zero_freezes_the_document_model(tiny_mlm, tmp_path):
    """lr = 0 trains only the IDF table: OUT's model weights equal the initial ones exactly."""
    from safetensors.torch import load_file

    data = _tiny_data()
    settings = TrainSettings(steps=4, batch_size=3, group_size=3, lr=0.0, idf_trainable=True, idf_lr=0.5,
                             doc_max_length=24, checkpoint_every=0, seed=3, torch_threads=1)
    train_inference_free(data, tiny_mlm, tiny_mlm / "idf.json", tmp_path / "out", settings)
    init, out = load_file(str(tiny_mlm / "model.safetensors")), load_file(str(tmp_path / "out" / "model.safetensors"))
    shared = set(init) & set(out)
    assert shared and all(np.array_equal(init[k].numpy(), out[k].numpy()) for k in shared)
    assert json.loads((tmp_path / "out" / "idf.json").read_text()) != json.loads((tiny_mlm / "idf.json").read_text())
    # OUT declares the document length its table was trained against, and is encoded at it
    from lsr.encoders.inference_free import InferenceFreeEncoder

    assert json.loads((tmp_path / "out" / "sentence_bert_config.json").read_text()) == {"max_seq_length": 24}
    assert InferenceFreeEncoder(tmp_path / "out").doc_max_length == 24
    with pytest.raises(ValueError, match="nothing to train"):
        TrainSettings(lr=0.0)
