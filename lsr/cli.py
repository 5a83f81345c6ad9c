"""The ``lsr`` command line: index, search and evaluate.

Commands are thin wrappers over the public API; heavy imports happen inside commands so
``lsr --help`` stays instant. Logs and progress go to stderr, runs to a file or stdout.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import click

from lsr import __version__
from lsr.retrievers.base import RETRIEVERS

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
        click.option("--doc-vectors", type=click.Path(exists=True, file_okay=False), default=None,
                     help="splade/inference-free: index these `lsr encode` shards instead of encoding the corpus."),
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
                     help="MUVERA: FDE candidates re-ranked by exact MaxSim (default 50)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn



def _parse_weights(ctx: Any, param: Any, value: str | None) -> list[float] | None:
    if value is None:
        return None
    try:
        return [float(w) for w in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {value!r}") from None


def hybrid_options(fn: Callable) -> Callable:
    """Options of ``--retriever hybrid`` (ignored by the other retrievers)."""
    options = [
        click.option("--components", default=None,
                     help="hybrid: components as name[=model], comma-separated, e.g. "
                          "bm25,splade=models/splade-tiny,dense=models/all-MiniLM-L6-v2."),
        click.option("--norm", default="min-max", show_default=True,
                     help="hybrid: score normaliser (min-max, zmuv, l2, max, sum, tmm, rank, borda, none)."),
        click.option("--fusion", default="wsum", show_default=True,
                     help="hybrid: fusion method (wsum, sum, mnz, rrf, wrrf, max, min, anz, med, ...)."),
        click.option("--weights", default=None, callback=_parse_weights,
                     help="hybrid: one weight per component, comma-separated (default: equal)."),
        click.option("--fusion-depth", type=click.IntRange(min=1), default=1000, show_default=True,
                     help="hybrid: candidates taken from each component."),
        click.option("--prf", type=click.Choice(["none", "before", "after", "both"]), default="none",
                     show_default=True, help="hybrid: pseudo-relevance feedback and where to interpolate."),
        click.option("--tune", is_flag=True,
                     help="hybrid: tune the weights (on the dev split if the dataset has one, else by k-fold "
                          "cross-validation over the evaluated queries; the run written is then held-out only)."),
        click.option("--folds", type=click.IntRange(min=2), default=5, show_default=True,
                     help="hybrid --tune: cross-validation folds."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _build_retriever(retriever: str, **options: Any):
    from lsr.retrievers.base import retriever_class

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
        from lsr.errors import DataFormatError
        from lsr.errors import IndexFormatError

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
    from lsr.io.readers import read_corpus

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
    if _is_encoded_input(input_path):  # lsr encode shards, JsonVectorCollection or Seismic JSONL
        return _index_encoded(input_path, output, retriever, overwrite, options)
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
    from lsr.io.readers import read_queries
    from lsr.io.runs import write_run
    from lsr.retrievers.base import load_retriever

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
@hybrid_options
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
    from lsr.io.readers import load_beir
    from lsr.metrics import DEFAULT_METRICS, evaluate, remove_self_hits
    from lsr.io.runs import read_run, write_run

    try:
        ds = load_beir(dataset, split=split)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--split") from exc
    tune, folds = options.pop("tune", False), options.pop("folds", 5)
    if tune and retriever != "hybrid":
        raise click.BadParameter("--tune needs --retriever hybrid", param_hint="--tune")
    r = _build_retriever(retriever, **options)
    t0 = time.perf_counter()
    r.index(ds.corpus.ids, ds.corpus.all_contents(), show_progress=True)
    t1 = time.perf_counter()
    qids = list(ds.queries)
    # one extra result so that dropping a self-hit still leaves `depth` results
    held_out = _tune_hybrid(r, dataset, ds, folds, depth + 1, threads) if tune else None
    if save_index is not None:
        r.save(save_index)
    if held_out is None:
        res = r.search([ds.queries[q] for q in qids], k=depth + (0 if keep_self_hits else 1), threads=threads,
                       show_progress=True)
    t2 = time.perf_counter()
    run = res.to_run(qids) if held_out is None else held_out
    if not keep_self_hits:
        run = remove_self_hits(run)
    from lsr.io.runs import ranked

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
    if retriever == "hybrid":
        config["hybrid"] = r.config()
    (output / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    _print_table(f"{ds.name} ({split}, {len(qids)} queries) with {retriever}: "
                 f"index {t1 - t0:.1f}s, search {t2 - t1:.1f}s", means)
    click.echo(f"wrote {output}/run.trec, metrics.json, per_query.tsv, config.json", err=True)


# ------------------------------------------------------------------------------ encode (learned sparse)
def _is_encoded_input(path: Path) -> bool:
    from lsr.io.interchange import EXPORT_SIDECAR, looks_like_vector_jsonl
    from lsr.io.shards import is_shards_dir

    if path.is_dir():
        return is_shards_dir(path) or (path / EXPORT_SIDECAR).is_file()
    return path.suffix in {".jsonl", ".gz", ".json"} and looks_like_vector_jsonl(path)


def _index_encoded(path: Path, output: Path, retriever: str, overwrite: bool, options: dict[str, Any]) -> None:
    """Index pre-encoded vectors; the query encoder comes from the shards' record or --retriever/--model."""
    from lsr.io.interchange import read_collection
    from lsr.io.shards import is_shards_dir, read_progress
    from lsr.retrievers.base import retriever_class

    t = time.perf_counter()
    if is_shards_dir(path) and not options.get("model"):
        cfg = read_progress(path)["encoder"]
        kind = cfg.get("type")
        if kind not in {"splade", "inference-free"}:
            raise click.BadParameter(f"{path}: shards of a {kind!r} encoder; give --retriever and --model",
                                     param_hint="INPUT")
        cls = retriever_class(kind)
        args = {k: cfg[k] for k in ("doc_max_length", "query_max_length", "top_k", "min_weight") if k in cfg}
        if kind == "inference-free":
            args["idf"] = options.get("idf") or cfg.get("idf")
        args["batch_size"], args["device"] = options.get("batch_size"), options.get("device")
        try:
            encoder = cls.encoder_class()(cfg["model"], **args)
        except (ValueError, OSError) as exc:
            raise click.BadParameter(f"{path}: cannot rebuild the query encoder ({exc})", param_hint="INPUT") from exc
        r, retriever = cls(encoder), kind
    else:
        if retriever not in {"splade", "inference-free"}:
            raise click.BadParameter("encoded vectors need --retriever splade or inference-free (the query encoder)",
                                     param_hint="--retriever")
        r = _build_retriever(retriever, **{**options, "doc_vectors": None})
    if is_shards_dir(path):  # shard by shard into a build directory beside the output, then saved
        import shutil

        work = output.parent / f".{output.name}.build-{os.getpid()}"
        try:
            r.index_shards(path, work, show_progress=True)
            r.save(output, overwrite=overwrite)
            n_docs, nnz = r.inverted_index.n_docs, r.inverted_index.nnz
        finally:
            r.inverted_index = None
            shutil.rmtree(work, ignore_errors=True)
    else:
        doc_ids, vectors = read_collection(path, vocab=r.encoder.vocab)
        n_docs, nnz = len(doc_ids), vectors.nnz
        r.index_vectors(doc_ids, vectors)
        r.save(output, overwrite=overwrite)
    click.echo(f"indexed {n_docs} encoded documents ({nnz} postings) with {retriever} query "
               f"encoding into {output} in {time.perf_counter() - t:.1f}s", err=True)


@main.command("encode")
@click.argument("input_path", metavar="INPUT", type=click.Path(exists=True, path_type=Path))
@click.argument("output", type=click.Path(file_okay=False, path_type=Path))
@click.option("--retriever", "-r", type=click.Choice(["splade", "inference-free"]), default="splade",
              show_default=True, help="Document encoder family.")
@click.option("--model", "-m", required=True, help="Model directory or Hugging Face hub id.")
@click.option("--idf", type=click.Path(exists=True, dir_okay=False), default=None,
              help="inference-free: query IDF table (default: the model directory's idf.json).")
@click.option("--doc-max-length", type=click.IntRange(min=3), default=256, show_default=True)
@click.option("--query-max-length", type=click.IntRange(min=3), default=64, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Default 32 on CPU, 128 on GPU.")
@click.option("--device", default=None, help="torch device (default: cuda if available, else cpu).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch CPU threads.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto", show_default=True,
              help="auto: exact fp32 on CPU, bf16/fp16 autocast on GPU.")
@click.option("--top-k", type=click.IntRange(min=1), default=None, help="Keep each document's top-k terms.")
@click.option("--min-weight", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Drop document weights below this.")
@click.option("--shard-size", type=click.IntRange(min=1), default=10_000, show_default=True,
              help="Documents per shard (the unit of resumption).")
@click.option("--format", "fmt", type=click.Choice(["shards", "jsonvector", "seismic"]), default="shards",
              show_default=True, help="shards: lsr's .npy shards in OUTPUT; jsonvector/seismic: shards in "
              "OUTPUT/shards plus OUTPUT/collection/*.jsonl and OUTPUT/export.json.")
@click.option("--scale", type=click.FloatRange(min=0, min_open=True), default=100.0, show_default=True,
              help="jsonvector: integer impact = round(weight * scale).")
@click.option("--restart", is_flag=True, help="Discard a partial run in OUTPUT instead of resuming it.")
@_friendly_errors
def encode_cmd(input_path: Path, output: Path, retriever: str, model: str, idf: str | None, fmt: str,
               scale: float, shard_size: int, restart: bool, batch_size: int | None, **options: Any) -> None:
    """Encode a corpus (BEIR directory, JSONL or Parquet) into resumable shards in OUTPUT.

    A killed run resumes at the first unfinished shard when rerun with the same arguments.
    """
    from lsr.io.interchange import export_collection
    from lsr.io.shards import encode_corpus_to_shards, load_shards
    from lsr.retrievers.base import retriever_class

    doc_ids, texts = _read_docs(input_path, "test")
    cls = retriever_class(retriever)
    args = {k: v for k, v in options.items() if v is not None}
    if retriever == "inference-free":
        args["idf"] = idf
    try:
        encoder = cls.encoder_class()(model, batch_size=batch_size, **args)
        encoder.load_model()
    except (ValueError, OSError) as exc:
        raise click.BadParameter(str(exc), param_hint="--model") from exc
    shards = output if fmt == "shards" else output / "shards"
    t = time.perf_counter()
    try:
        encode_corpus_to_shards(encoder, doc_ids, texts, shards, shard_size=shard_size, show_progress=True,
                                restart=restart)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    seconds = time.perf_counter() - t
    if fmt != "shards":
        ids, vectors = load_shards(shards)
        export_collection(output, ids, vectors, fmt=fmt, scale=scale, encoder=encoder.config())
    click.echo(f"encoded {len(doc_ids)} documents with {retriever} into {output} ({fmt}) in {seconds:.1f}s",
               err=True)


# ------------------------------------------------------------------------------ hybrid: fuse, report
def _tune_hybrid(r: Any, dataset: Path, ds: Any, folds: int, k: int, threads: int) -> dict | None:
    """Tune a hybrid's weights: on qrels/dev.tsv when the dataset has it (returns None: the test
    queries are then searched with the tuned weights), else by k-fold CV over the evaluated
    queries (returns the held-out run)."""
    from lsr.io.readers import load_beir

    if (dataset / "qrels" / "dev.tsv").is_file():
        dev = load_beir(dataset, split="dev")
        res = r.tune(dev.queries, dev.qrels, threads=threads, show_progress=True)
        click.echo(f"tuned on {len(dev.queries)} dev queries: weights {res.weights} (dev {res.score:.4f})", err=True)
        return None
    cv = r.tune(ds.queries, ds.qrels, folds=folds, threads=threads, show_progress=True, k=k)
    for i, w in enumerate(cv.fold_weights):
        click.echo(f"fold {i + 1}: weights {w}  held-out {cv.heldout_scores[i]:.4f}", err=True)
    click.echo(f"{folds}-fold cross-validated ndcg@10 {cv.score:.4f}; weights on all queries {r.weights}", err=True)
    return cv.run


@main.command("fuse")
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--norm", default="min-max", show_default=True,
              help="Normaliser: min-max, zmuv (z-score), l2, max, sum, tmm, rank, borda, none.")
@click.option("--method", default="wsum", show_default=True,
              help="Fusion: wsum, sum, mnz, anz, gmnz, max, min, med, wmnz, mixed, rrf, wrrf, isr, log_isr, "
                   "logn_isr, rbc, bordafuse, w_bordafuse.")
@click.option("--weights", default=None, callback=_parse_weights, help="One weight per run, comma-separated.")
@click.option("--depth", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Candidates taken from each run.")
@click.option("--k", "k", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Documents per query in the fused run.")
@click.option("--floor", type=click.Choice(["zero", "min"]), default="zero", show_default=True,
              help="Normalised score of a document missing from a run (zero: ranx's; min: the run's lowest).")
@click.option("--lower-bounds", default=None, callback=_parse_weights,
              help="tmm: each run's known lowest score, comma-separated (e.g. 0,0,-1).")
@click.option("--rrf-k", type=click.FloatRange(min=0), default=60, show_default=True, help="RRF's k.")
@click.option("--tune", "tune_qrels", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Qrels to tune the weights on (instead of --weights); with --folds the run is cross-validated.")
@click.option("--folds", type=click.IntRange(min=0), default=5, show_default=True,
              help="--tune: k-fold CV over the queries (0: tune on all of them: only for dev qrels).")
@click.option("--metric", default="ndcg@10", show_default=True, help="--tune: metric to maximise.")
@click.option("--search", type=click.Choice(["grid", "coordinate"]), default="grid", show_default=True,
              help="--tune: simplex grid or coordinate ascent.")
@click.option("--step", type=float, default=0.1, show_default=True, help="--tune: weight grid step.")
@click.option("--selection", type=click.Choice(["1se", "best"]), default="1se", show_default=True,
              help="--tune: 1se = the most even weights within one standard error of the best mean "
                   "(Breiman's one-SE rule); best = the highest mean.")
@click.option("--seed", type=int, default=0, show_default=True, help="--tune: fold shuffle seed.")
@click.option("--tuning-json", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="--tune: also write the tuned weights and fold scores as JSON.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, allow_dash=True), default="-", show_default=True,
              help="Fused TREC run ('-' for stdout).")
@click.option("--tag", default=None, help="Run tag (default: <norm>-<method>).")
@_friendly_errors
def fuse_cmd(runs: tuple[Path, ...], norm: str, method: str, weights: list[float] | None, depth: int, k: int,
             floor: str, lower_bounds: list[float] | None, rrf_k: float, tune_qrels: Path | None, folds: int,
             metric: str, search: str, step: float, selection: str, seed: int, tuning_json: Path | None,
             output: str, tag: str | None) -> None:
    """Fuse TREC run files RUN1 RUN2 ... into one run (normalise, then combine)."""
    from lsr.io.readers import read_qrels
    from lsr.io.runs import read_run, write_run
    from lsr.fusion.combine import FUSIONS, RANK_BASED, canonical_fusion, fuse
    from lsr.fusion.normalize import canonical_normalizer

    try:
        norm, method = canonical_normalizer(norm), canonical_fusion(method)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--norm/--method") from exc
    loaded = [read_run(p) for p in runs]
    for name, values in (("--weights", weights), ("--lower-bounds", lower_bounds)):
        if values is not None and len(values) != len(loaded):
            raise click.BadParameter(f"{len(values)} values for {len(loaded)} runs", param_hint=name)
    if tune_qrels is not None and weights is not None:
        raise click.UsageError("give --weights or --tune, not both")
    params: dict[str, Any] = {"rrf_k": rrf_k} if method in ("rrf", "wrrf") else {}
    norm_params = None if lower_bounds is None else [{"lower_bound": b} for b in lower_bounds]
    common = dict(norm=norm, method=method, depth=depth, floor=floor, norm_params=norm_params, **params)
    tag = tag or f"{norm}-{method}"
    if tune_qrels is None:
        try:
            fused = fuse(loaded, weights=weights, k=k, **common)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from exc
    else:
        from lsr.fusion.tuning import WEIGHTABLE, cross_validate, tune_weights

        if method not in WEIGHTABLE:
            raise click.BadParameter(f"{method!r} has no weights to tune", param_hint="--method")
        qrels = read_qrels(tune_qrels)
        kw = dict(metric=metric, search=search, step=step, selection=selection, **common)
        if folds >= 2:
            cv = cross_validate(loaded, qrels, folds=folds, k=k, seed=seed, **kw)
            fused = cv.run
            for i, (w, h, t) in enumerate(zip(cv.fold_weights, cv.heldout_scores, cv.fold_tuning)):
                extra = "" if selection == "best" else f"  (best {t.best_weights}, {t.candidates} within 1 SE)"
                click.echo(f"fold {i + 1}: weights {w}  held-out {metric} {h:.4f}{extra}", err=True)
            click.echo(f"{folds}-fold cross-validated {metric}: {cv.score:.4f}", err=True)
            report = {"folds": folds, "seed": seed, "fold_weights": cv.fold_weights,
                      "fold_queries": cv.fold_queries, "train_scores": cv.train_scores,
                      "heldout_scores": cv.heldout_scores, "cv_score": cv.score,
                      "fold_best_weights": [t.best_weights for t in cv.fold_tuning],
                      "fold_best_train_scores": [t.best_score for t in cv.fold_tuning],
                      "fold_se": [t.se for t in cv.fold_tuning]}
        else:
            res = tune_weights(loaded, qrels, **kw)
            fused = fuse(loaded, weights=res.weights, k=k, **common)
            click.echo(f"tuned weights {res.weights}: {metric} {res.score:.4f} on the tuning queries", err=True)
            report = {"weights": res.weights, "score": res.score, "best_weights": res.best_weights,
                      "best_score": res.best_score, "se": res.se}
        if tuning_json is not None:
            tuning_json.write_text(json.dumps({"runs": [str(p) for p in runs], "norm": norm, "method": method,
                                               "metric": metric, "search": search, "step": step,
                                               "selection": selection, **report},
                                              indent=2) + "\n")
    if output == "-":
        write_run(fused, sys.stdout, tag=tag)
    else:
        write_run(fused, output, tag=tag)
        click.echo(f"wrote {sum(map(len, fused.values()))} results for {len(fused)} queries to {output}", err=True)


@main.command("report")
@click.argument("out_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--metric", "metrics", multiple=True, default=["ndcg@10"], show_default=True,
              help="Metric(s) to tabulate (repeat the option for several).")
@click.option("--output", "-o", type=click.Path(dir_okay=False, allow_dash=True), default="-", show_default=True,
              help="Markdown file ('-' for stdout).")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="PNG bar chart of the first metric (needs matplotlib: pip install 'lsr[report]').")
@_friendly_errors
def report_cmd(out_dirs: tuple[Path, ...], metrics: tuple[str, ...], output: str, plot: Path | None) -> None:
    """Gather the metrics.json of `lsr eval` output directories into one table (and chart).

    Each OUT_DIR is an eval directory or a folder holding some (searched recursively). Rows are
    retrievers (the directory name), columns datasets (config.json's dataset, else the parent
    directory's name); the best value of each column is bold."""
    from lsr.eval.report import collect, markdown_table, plot_bars

    table = collect(out_dirs)
    if not table:
        raise click.UsageError("no metrics.json found under the given directories")
    text = "\n\n".join(markdown_table(table, m) for m in metrics) + "\n"
    if output == "-":
        click.echo(text, nl=False)
    else:
        Path(output).write_text(text)
        click.echo(f"wrote {output}", err=True)
    if plot is not None:
        plot_bars(table, metrics[0], plot)
        click.echo(f"wrote {plot}", err=True)


if __name__ == "__main__":
    main()
