"""The ``lsr`` command line: index, search and evaluate.

Commands are thin wrappers over the public API; heavy imports happen inside commands so
``lsr --help`` stays instant. Logs and progress go to stderr, runs to a file or stdout.
"""
from __future__ import annotations

import functools
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable

import click

from lsr import __version__
from lsr.hybrid.base import RETRIEVERS

logger = logging.getLogger("lsr")


def retriever_options(fn: Callable) -> Callable:
    """Options shared by every command that builds a retriever (each retriever reads its own)."""
    options = [
        click.option("--retriever", "-r", type=click.Choice(sorted(RETRIEVERS)), default="bm25", show_default=True,
                     help="Retrieval model."),
        click.option("--model", "-m", default=None, help="Model directory or Hugging Face hub id (learned models)."),
        click.option("--idf", type=click.Path(exists=True, dir_okay=False), default=None,
                     help="Query IDF table (inference-free); defaults to the model directory's idf.json."),
        click.option("--doc-max-length", type=click.IntRange(min=1), default=256, show_default=True,
                     help="Document truncation in tokens (learned models)."),
        click.option("--query-max-length", type=click.IntRange(min=1), default=64, show_default=True,
                     help="Query truncation in tokens (learned models)."),
        click.option("--batch-size", type=click.IntRange(min=1), default=None,
                     help="Encoding batch size (default: the encoder's)."),
        click.option("--device", default=None, help="torch device for encoders (default: cuda if available, else cpu)."),
        click.option("--k1", type=click.FloatRange(min=0), default=0.9, show_default=True, help="BM25 k1."),
        click.option("--b", "b", type=click.FloatRange(0, 1), default=0.4, show_default=True, help="BM25 b."),
        click.option("--index-type", type=click.Choice(["flat", "hnsw", "ivf", "ivfpq"]), default=None,
                     help="FAISS index for dense and muvera (default: flat, exact inner product)."),
        click.option("--embedding-cache", type=click.Path(file_okay=False), default=None,
                     help="Directory caching dense/multi-vector encodings by content hash (reruns are free)."),
        click.option("--fde-reps", type=click.IntRange(min=1), default=None, help="MUVERA repetitions R."),
        click.option("--fde-k-sim", type=click.IntRange(0, 30), default=None, help="MUVERA SimHash bits k_sim."),
        click.option("--fde-d-proj", type=click.IntRange(min=0), default=None,
                     help="MUVERA inner projection dimension (0: identity)."),
        click.option("--fde-final-dim", type=click.IntRange(min=1), default=None,
                     help="MUVERA final Count-sketch dimension (default: none)."),
        click.option("--candidates", type=click.IntRange(min=1), default=None,
                     help="MUVERA: FDE candidates re-ranked by exact MaxSim (default 100)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _build_retriever(retriever: str, **options: Any):
    from lsr.hybrid.base import retriever_class

    try:
        return retriever_class(retriever).from_options(**options)
    except (ValueError, FileNotFoundError, OSError) as exc:
        raise click.BadParameter(str(exc), param_hint="--retriever/--model") from exc


def _configure_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)


def _friendly_errors(fn: Callable) -> Callable:
    """Turn data and format errors into clean CLI errors (exit code 1, no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from lsr.eval.datasets import DataFormatError
        from lsr.index._format import IndexFormatError

        try:
            return fn(*args, **kwargs)
        except (DataFormatError, IndexFormatError, FileNotFoundError, FileExistsError) as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lsr")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def main(verbose: int) -> None:
    """lsr: learned-sparse and hybrid retrieval."""
    _configure_logging(verbose)


# ------------------------------------------------------------------------------ index
def _read_docs(source: Path, split: str) -> tuple[list[str], list[str]]:
    """Document ids and texts from a BEIR directory, a JSONL file or a Parquet file."""
    from lsr.eval.datasets import read_corpus

    if source.is_dir():
        corpus_file = source / "corpus.jsonl"
        if not corpus_file.is_file():
            raise click.BadParameter(f"{source} is a directory without corpus.jsonl", param_hint="INPUT")
        corpus = read_corpus(corpus_file)
    else:
        corpus = read_corpus(source)
    return corpus.ids, corpus.all_contents()


@main.command("index")
@click.argument("input_path", metavar="INPUT", type=click.Path(exists=True, path_type=Path))
@click.argument("output", type=click.Path(path_type=Path))
@retriever_options
@click.option("--overwrite/--no-overwrite", default=False, show_default=True,
              help="Replace an existing lsr index at OUTPUT.")
@_friendly_errors
def index_cmd(input_path: Path, output: Path, retriever: str, overwrite: bool, **options: Any) -> None:
    """Index a corpus (BEIR directory, JSONL or Parquet) into directory OUTPUT."""
    if output.exists() and not overwrite and any(output.iterdir() if output.is_dir() else [output]):
        raise click.BadParameter(f"{output} already exists (use --overwrite to replace an lsr index)",
                                 param_hint="OUTPUT")
    doc_ids, texts = _read_docs(input_path, "test")
    r = _build_retriever(retriever, **options)
    t = time.perf_counter()
    r.index(doc_ids, texts, show_progress=True)
    r.save(output, overwrite=overwrite)
    click.echo(f"indexed {len(doc_ids)} documents with {retriever} into {output} "
               f"in {time.perf_counter() - t:.1f}s", err=True)


# ------------------------------------------------------------------------------ search
@main.command("search")
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--queries", "-q", "queries_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Queries file: JSONL (_id, text) or TSV (id<TAB>text).")
@click.option("--query", "query_text", help="One query string (its id is 'q0' unless --query-id).")
@click.option("--query-id", default="q0", show_default=True, help="Id of the --query string in the run.")
@click.option("-k", "--k", "k", type=click.IntRange(min=1), default=10, show_default=True, help="Results per query.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True, help="Search threads.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, allow_dash=True), default="-", show_default=True,
              help="TREC run file ('-' for stdout).")
@click.option("--tag", default=None, help="Run tag (default: the retriever name).")
@_friendly_errors
def search_cmd(index_dir: Path, queries_file: Path | None, query_text: str | None, query_id: str, k: int,
               threads: int, output: str, tag: str | None) -> None:
    """Search INDEX_DIR and write a TREC run."""
    from lsr.eval.datasets import read_queries
    from lsr.eval.runs import write_run
    from lsr.hybrid.base import load_retriever

    if (queries_file is None) == (query_text is None):
        raise click.UsageError("give exactly one of --queries FILE or --query TEXT")
    queries = read_queries(queries_file) if queries_file else {query_id: query_text}
    r = load_retriever(index_dir)
    qids = list(queries)
    res = r.search([queries[q] for q in qids], k=k, threads=threads, show_progress=queries_file is not None)
    run = res.to_run(qids)
    if output == "-":
        write_run(run, sys.stdout, tag=tag or r.name)
    else:
        write_run(run, output, tag=tag or r.name)
        click.echo(f"wrote {sum(map(len, run.values()))} results for {len(run)} queries to {output}", err=True)


# ------------------------------------------------------------------------------ eval
def _print_table(title: str, metrics: dict[str, float]) -> None:
    width = max(len(m) for m in metrics)
    click.echo(title, err=True)
    for m, v in metrics.items():
        click.echo(f"  {m:<{width}}  {v:.4f}", err=True)


@main.command("eval")
@click.argument("dataset", type=click.Path(exists=True, file_okay=False, path_type=Path))
@retriever_options
@click.option("--output", "-o", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory for run.trec, metrics.json, per_query.tsv and config.json.")
@click.option("--split", default="test", show_default=True, help="Qrels split (qrels/<split>.tsv).")
@click.option("--depth", type=click.IntRange(min=1), default=1000, show_default=True, help="Results per query.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True, help="Search threads.")
@click.option("--keep-self-hits", is_flag=True, help="Keep documents whose id equals the query id "
              "(by default they are dropped, as BEIR does).")
@click.option("--save-index", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also save the built retriever to this directory.")
@_friendly_errors
def eval_cmd(dataset: Path, retriever: str, output: Path, split: str, depth: int, threads: int,
             keep_self_hits: bool, save_index: Path | None, **options: Any) -> None:
    """Index DATASET (a BEIR directory), search its split and evaluate with trec_eval metrics."""
    from lsr.eval.datasets import load_beir
    from lsr.eval.metrics import DEFAULT_METRICS, evaluate, remove_self_hits
    from lsr.eval.runs import read_run, write_run

    try:
        ds = load_beir(dataset, split=split)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--split") from exc
    r = _build_retriever(retriever, **options)
    t0 = time.perf_counter()
    r.index(ds.corpus.ids, ds.corpus.all_contents(), show_progress=True)
    t1 = time.perf_counter()
    if save_index is not None:
        r.save(save_index)
    qids = list(ds.queries)
    # one extra result so that dropping a self-hit still leaves `depth` results
    res = r.search([ds.queries[q] for q in qids], k=depth + (0 if keep_self_hits else 1), threads=threads,
                   show_progress=True)
    t2 = time.perf_counter()
    run = res.to_run(qids)
    if not keep_self_hits:
        run = remove_self_hits(run)
    from lsr.eval.runs import ranked

    run = {q: dict(ranked(docs)[:depth]) for q, docs in run.items()}
    output.mkdir(parents=True, exist_ok=True)
    write_run(run, output / "run.trec", tag=retriever)
    # metrics from the file as written, so they are exactly what trec_eval sees
    means, table = evaluate(ds.qrels, read_run(output / "run.trec"), DEFAULT_METRICS,
                            remove_self=not keep_self_hits, per_query=True)
    (output / "metrics.json").write_text(json.dumps(means, indent=2) + "\n")
    with open(output / "per_query.tsv", "w") as f:
        f.write("query_id\t" + "\t".join(DEFAULT_METRICS) + "\n")
        for q, values in table.items():
            f.write(q + "\t" + "\t".join(f"{values[m]:.6f}" for m in DEFAULT_METRICS) + "\n")
    config = {
        "lsr_version": __version__, "dataset": str(dataset), "split": split, "retriever": retriever,
        "options": {k: v for k, v in options.items() if v is not None}, "depth": depth, "threads": threads,
        "remove_self_hits": not keep_self_hits, "n_docs": len(ds.corpus), "n_queries": len(qids),
        "index_seconds": round(t1 - t0, 3), "search_seconds": round(t2 - t1, 3),
        "queries_per_second": round(len(qids) / max(t2 - t1, 1e-9), 1),
    }
    (output / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    _print_table(f"{ds.name} ({split}, {len(qids)} queries) with {retriever}: "
                 f"index {t1 - t0:.1f}s, search {t2 - t1:.1f}s", means)
    click.echo(f"wrote {output}/run.trec, metrics.json, per_query.tsv, config.json", err=True)


if __name__ == "__main__":
    main()
