"""``lsr train``: registered on :func:`lsr.cli.main`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from lsr.cli import _friendly_errors, main

# TrainSettings fields offered as options: (field, click type, help). Defaults are TrainSettings'
# own (lsr.encoders.sparse_training, imported only when the command runs).
_SETTINGS: list[tuple[str, Any, str]] = [
    ("steps", click.IntRange(min=1), "Optimizer steps (default: epochs x queries / batch size)."),
    ("epochs", click.FloatRange(min=0, min_open=True), "Passes over the training queries (when --steps is not given)."),
    ("batch_size", click.IntRange(min=1), "Queries per step."),
    ("group_size", click.IntRange(min=1), "Documents per query per step (a positive, then sampled candidates)."),
    ("lr", click.FloatRange(min=0), "Learning rate of the document model (0 freezes it: with --idf-trainable, "
     "only the query IDF table trains)."),
    ("warmup_ratio", click.FloatRange(min=0, max=1, max_open=True), "Linear learning-rate warm-up, share of the steps."),
    ("weight_decay", click.FloatRange(min=0), "AdamW weight decay."),
    ("loss", click.Choice(["kl", "margin-mse"]), "Ranking loss against the teacher scores."),
    ("raise_zero_weights", bool, "Let the loss raise a document's zero weights (relu with a straight-through "
     "gradient upwards), so that documents can learn query tokens they lack."),
    ("in_batch_negatives", bool, "KL over every document of the step (the other queries' groups at teacher score 0 "
     "unless among the query's candidates), not only the query's group."),
    ("teacher_scale", "scale", "Teacher scores (in [0, 1]) are multiplied by this; auto (default): matched to the "
     "initial model's within-group score spread."),
    ("flops_weight", click.FloatRange(min=0), "Lambda of the IDF-aware document FLOPS term."),
    ("flops_warmup", click.IntRange(min=0), "Steps over which lambda grows quadratically to --flops-weight."),
    ("flops_threshold", click.FloatRange(min=0), "Documents with at most this many non-zeros are exempt from FLOPS."),
    ("idf_trainable", bool, "Train the query IDF table too (its own --idf-lr)."),
    ("idf_lr", click.FloatRange(min=0, min_open=True), "Learning rate of the IDF table."),
    ("doc_max_length", click.IntRange(min=3), "Document truncation in tokens."),
    ("query_max_length", click.IntRange(min=3), "Query truncation in tokens (default: the tokenizer's limit)."),
    ("micro_batch", click.IntRange(min=1), "Documents per transformer forward."),
    ("seed", int, "Seed of the query order, sampling and dropout."),
    ("checkpoint_every", click.IntRange(min=0), "Checkpoint every this many steps (0: never); the last 2 are kept."),
    ("torch_threads", click.IntRange(min=1), "torch CPU threads."),
    ("device", str, "torch device (default: cuda if available, else cpu)."),
]


class _Scale(click.ParamType):
    """A positive number, or ``auto`` (None: TrainSettings matches it)."""

    name = "auto|FLOAT"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
            return None  # TrainSettings' default: matched
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is neither auto nor a number", param, ctx)
        if not number > 0 or number == float("inf"):
            self.fail(f"{value!r} must be > 0 (or auto)", param, ctx)
        return number


def _settings_options(fn: Any) -> Any:
    for name, kind, text in reversed(_SETTINGS):
        flag = "--" + name.replace("_", "-")
        if kind == "scale":
            kind = _Scale()
        if kind is bool:
            fn = click.option(flag, name, is_flag=True, default=None, help=text)(fn)
        else:
            fn = click.option(flag, name, type=kind, default=None, help=text)(fn)
    return fn


@main.command("train")
@click.argument("source", type=click.Path(exists=True, path_type=Path), metavar="DATASET_OR_CORPUS")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--init", required=True, help="Masked-LM checkpoint the document model starts from (directory or hub id).")
@click.option("--idf", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Query IDF table (idf.json; default: the --init directory's). `lsr idf CORPUS FILE` "
              "estimates one on your corpus.")
@click.option("--teachers", default="bm25", show_default=True,
              help="Teacher ensemble: bm25,splade=DIR,dense=DIR,maxsim=DIR,labels (a weight after @, e.g. "
                   "dense=DIR@2; equal by default; labels: the split's qrels as one more teacher, with --queries "
                   "train).")
@click.option("--queries", "queries", type=click.Choice(["train", "pseudo"]), default="train", show_default=True,
              help="train: a BEIR split's queries and labels; pseudo: queries made from the corpus, no labels.")
@click.option("--split", default="train", show_default=True,
              help="BEIR split trained on with --queries train (never test).")
@click.option("--depth", type=click.IntRange(min=1), default=50, show_default=True,
              help="Candidates taken from each teacher per query.")
@click.option("--pseudo-queries", type=click.IntRange(min=1), default=2000, show_default=True,
              help="Pseudo-queries made from the corpus (--queries pseudo).")
@click.option("--pseudo-seed", type=int, default=13, show_default=True,
              help="Seed of the pseudo-queries (and of the --max-queries sample).")
@click.option("--max-queries", type=click.IntRange(min=1), default=None,
              help="Train on a seeded sample of this many of the split's queries (--queries train).")
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Cache directory for teacher encodings and scores (default: ~/.cache/lsr); it is also the "
                   "dense and maxsim teachers' embedding cache (as lsr eval --embedding-cache).")
@click.option("--doc-vectors", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="The splade teacher's document vectors, from `lsr encode` of this corpus.")
@_settings_options
@_friendly_errors
def train_cmd(source: Path, out: Path, init: str, idf: Path | None, teachers: str, queries: str, split: str,
              depth: int, pseudo_queries: int, pseudo_seed: int, max_queries: int | None, cache: Path | None,
              doc_vectors: Path | None, **given: Any) -> None:
    """Train an inference-free sparse encoder on DATASET_OR_CORPUS into OUT.

    OUT gets the OpenSearch inference-free layout (model files, tokenizer, idf.json); evaluate it
    with `lsr eval DATASET -r inference-free -m OUT`. A killed run resumes from OUT/checkpoints
    when started again with the same arguments; teacher scores are cached (--cache).
    """
    from lsr.encoders.sparse_training import TrainSettings
    from lsr.train.api import train

    settings = TrainSettings(**{k: v for k, v in given.items() if v is not None})
    cache = cache if cache is not None else Path.home() / ".cache" / "lsr"
    summary = train(source, out, init=init, idf=idf, teachers=teachers, queries=queries, depth=depth, cache=cache,
                    doc_vectors=doc_vectors, split=split, pseudo_queries=pseudo_queries, pseudo_seed=pseudo_seed,
                    max_queries=max_queries, settings=settings, show_progress=True)
    shown = {k: summary.get(k) for k in ("steps", "resumed_from", "loss", "rank_loss", "flops", "doc_nonzeros",
                                         "docs_per_s", "teacher_scale")}
    click.echo(json.dumps({**shown, "data": summary["data"]}, indent=2))
    click.echo(f"wrote {out} (evaluate: lsr eval DATASET -r inference-free -m {out})", err=True)
