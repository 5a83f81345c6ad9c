"""The ``lsr`` command line: index, search, evaluate, encode, fuse, report.

Each command parses its options, calls one API function and prints. Retriever options come from
the dataclasses of :mod:`lsr.retrievers.options` (one option per field, the same defaults as the
Python API); an option the chosen retriever does not have is refused. Heavy imports happen
inside commands so ``lsr --help`` stays instant. Logs and progress go to stderr, runs to a file
or stdout.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import click

from lsr import __version__
from lsr.retrievers.options import OPTIONS

logger = logging.getLogger("lsr")

RETRIEVER_NAMES = sorted(OPTIONS)


# ------------------------------------------------------------------------------ retriever options
def _parse_floats(ctx: Any, param: Any, value: str | None) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        return tuple(float(w) for w in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {value!r}") from None


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _default_text(value: Any) -> str:
    return "the model's" if value is None else str(value)


def _field_option(name: str, owners: list[tuple[str, dataclasses.Field]]) -> Callable:
    """One click option for an options field shared by ``owners`` (retriever name, field)."""
    f = owners[0][1]
    meta = f.metadata
    kind, choices = meta.get("kind"), meta.get("choices")
    mins = [o[1].metadata.get("min") for o in owners if o[1].metadata.get("min") is not None]
    lo = min(mins) if mins else None
    callback = None
    if choices:
        ptype: Any = click.Choice(choices)
    elif kind is int:
        ptype = click.IntRange(min=lo)
    elif kind is float:
        ptype = click.FloatRange(min=lo)
    elif f.name == "weights":
        ptype, callback = str, _parse_floats
    else:
        ptype = str
    defaults: dict[str, list[str]] = {}
    for retriever, field in owners:
        default = field.default if field.default is not dataclasses.MISSING else None
        if default is None and name.endswith("max_length"):
            text = "the tokenizer's limit" if retriever == "inference-free" and name.startswith("query") \
                else "the model's max_seq_length"
        else:
            text = "" if default is None else str(default)
        defaults.setdefault(text, []).append(retriever)
    shown = {d: rs for d, rs in defaults.items() if d}
    if len(defaults) == 1 and shown:
        where = f" [default: {next(iter(shown))}]"
    elif shown:
        where = " [default: " + "; ".join(f"{', '.join(rs)} {d}" for d, rs in shown.items()) + "]"
    else:
        where = ""
    retrievers = ", ".join(r for r, _ in owners)
    decls = [_flag(name)] + ([meta["short"]] if meta.get("short") else [])
    return click.option(*decls, name, type=ptype, default=None, callback=callback,
                        help=f"{meta.get('help', '')}{where} ({retrievers})")


def _option_owners(names: Sequence[str]) -> dict[str, list[tuple[str, dataclasses.Field]]]:
    owners: dict[str, list[tuple[str, dataclasses.Field]]] = {}
    for retriever in names:
        for f in dataclasses.fields(OPTIONS[retriever]):
            owners.setdefault(f.name, []).append((retriever, f))
    return owners


def retriever_options(names: Sequence[str] = tuple(RETRIEVER_NAMES), exclude: Sequence[str] = ()) -> Callable:
    """Decorator: ``--retriever`` and one option per field of the retrievers ``names``."""
    owners = {k: v for k, v in _option_owners(names).items() if k not in exclude}

    def decorate(fn: Callable) -> Callable:
        for name in reversed(list(owners)):
            fn = _field_option(name, owners[name])(fn)
        default = "bm25" if "bm25" in names else names[0]
        fn = click.option("--retriever", "-r", type=click.Choice(list(names)), default=default, show_default=True,
                          help="Retrieval model (its options are listed first by `-r NAME --help`).")(fn)
        fn.__lsr_option_fields__ = set(owners)  # type: ignore[attr-defined]
        return fn
    return decorate


def _given(ctx: click.Context, names: set[str], values: dict[str, Any]) -> dict[str, Any]:
    """The retriever options the user gave (None is never a value: every default is None)."""
    return {k: values.pop(k) for k in list(values) if k in names and values[k] is not None}


def build_retriever(retriever: str, given: dict[str, Any]) -> Any:
    """The retriever ``retriever`` from the options given on the command line."""
    from lsr.errors import ModelNotFoundError
    from lsr.retrievers.base import retriever_class

    if retriever != "hybrid":
        allowed = {f.name for f in dataclasses.fields(OPTIONS[retriever])}
        wrong = [_flag(k) for k in given if k not in allowed]
        if wrong:
            raise click.BadParameter(f"{', '.join(wrong)} {'does' if len(wrong) == 1 else 'do'} not apply to "
                                     f"--retriever {retriever}", param_hint="--retriever")
    try:
        return retriever_class(retriever).from_options(**given)
    except ModelNotFoundError as exc:
        raise click.BadParameter(str(exc), param_hint="--model") from exc
    except (ValueError, TypeError, OSError) as exc:
        raise click.BadParameter(str(exc), param_hint="--retriever options") from exc


class RetrieverCommand(click.Command):
    """A command whose help lists the options of the retriever given with ``-r`` first."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["lsr.retriever"] = _peek_retriever(args)
        return super().parse_args(ctx, args)

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        chosen = ctx.meta.get("lsr.retriever") or "bm25"
        mine = {f.name for f in dataclasses.fields(OPTIONS[chosen])} if chosen in OPTIONS else set()
        retriever_fields = getattr(self.callback, "__lsr_option_fields__", set())
        sections: dict[str, list[tuple[str, str]]] = {f"Options of --retriever {chosen}": [],
                                                      "Options": [], "Options of other retrievers": []}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if param.name in mine:
                sections[f"Options of --retriever {chosen}"].append(record)
            elif param.name in retriever_fields:
                sections["Options of other retrievers"].append(record)
            else:
                sections["Options"].append(record)
        for title, rows in sections.items():
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


def _peek_retriever(args: Sequence[str]) -> str | None:
    for i, a in enumerate(args):
        if a in ("-r", "--retriever") and i + 1 < len(args):
            return args[i + 1]
        if a.startswith("--retriever="):
            return a.split("=", 1)[1]
        if a.startswith("-r") and len(a) > 2:
            return a[2:]
    return None


# ------------------------------------------------------------------------------ shared options
def k_option(default: int, help: str = "Results per query.") -> Callable:
    return click.option("-k", "--k", "k", type=click.IntRange(min=1), default=default, show_default=True, help=help)


threads_option = click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
                              help="Search threads.")
tag_option = click.option("--tag", default=None, help="Run tag (default: the retriever or fusion name).")


def run_output_option(fn: Callable) -> Callable:
    return click.option("--output", "-o", type=click.Path(dir_okay=False, allow_dash=True), default="-",
                        show_default=True, help="TREC run file ('-' for stdout).")(fn)


def _configure_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)


def _friendly_errors(fn: Callable) -> Callable:
    """Data, format, model and file-system errors as one-line CLI errors (exit code 1, no traceback;
    ``-vv`` shows the traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from lsr.errors import LsrError

        try:
            return fn(*args, **kwargs)
        except click.ClickException:
            raise
        except BrokenPipeError:
            # the reader of stdout went away (`lsr search ... | head`): stop quietly, as Unix tools do,
            # and point stdout at /dev/null so the interpreter's last flush cannot fail again
            import os

            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
            except (OSError, ValueError):
                pass
            sys.exit(1)
        except (LsrError, ValueError) as exc:
            if logger.isEnabledFor(logging.DEBUG):
                raise
            raise click.ClickException(str(exc)) from exc
        except OSError as exc:
            if logger.isEnabledFor(logging.DEBUG):
                raise
            where = exc.filename if exc.filename is not None else ""
            raise click.ClickException(f"{where}: {exc.strerror or exc}" if where else str(exc)) from exc

    return wrapper


def _write_run(run: dict, output: str, tag: str) -> None:
    from lsr.io.runs import write_run

    if output == "-":
        write_run(run, sys.stdout, tag=tag)
    else:
        write_run(run, output, tag=tag)
        click.echo(f"wrote {sum(map(len, run.values()))} results for {len(run)} queries to {output}", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lsr")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug and tracebacks).")
def main(verbose: int) -> None:
    """lsr: learned-sparse and hybrid retrieval."""
    _configure_logging(verbose)


# ------------------------------------------------------------------------------ index
def _corpus_file(source: Path) -> Path:
    """The corpus file of INPUT: a BEIR directory's corpus.jsonl(.gz), else INPUT itself."""
    if source.is_dir():
        for name in ("corpus.jsonl", "corpus.jsonl.gz"):
            if (source / name).is_file():
                return source / name
        raise click.BadParameter(f"{source} is a directory without corpus.jsonl", param_hint="INPUT")
    return source


def _read_corpus(source: Path) -> Any:
    """The corpus of a BEIR directory, a JSONL(.gz) file or a Parquet file (:class:`lsr.io.readers.Corpus`)."""
    from lsr.io.readers import read_corpus

    return read_corpus(_corpus_file(source))


def _read_docs(source: Path) -> tuple[list[str], list[str]]:
    """Document ids and texts (title and text joined) of a corpus."""
    corpus = _read_corpus(source)
    return corpus.ids, corpus.all_contents()


@main.command("index", cls=RetrieverCommand)
@click.argument("input_path", metavar="INPUT", type=click.Path(exists=True, path_type=Path))
@click.argument("output", type=click.Path(path_type=Path))
@retriever_options()
@click.option("--overwrite/--no-overwrite", default=False, show_default=True,
              help="Replace an existing lsr index at OUTPUT.")
@click.option("--retriever-dir", is_flag=True, default=False,
              help="Write a frozen retriever directory (the format before collections) instead of a collection.")
@_friendly_errors
def index_cmd(input_path: Path, output: Path, retriever: str, overwrite: bool, retriever_dir: bool,
              **options: Any) -> None:
    """Index a corpus (BEIR directory, JSONL or Parquet) into a new collection OUTPUT (add to it with
    `lsr add`), or pre-encoded vectors into a retriever directory."""
    from lsr.retrievers.sparse import index_encoded, is_encoded

    given = _given(click.get_current_context(), set(options), options)
    if output.exists() and not overwrite and any(output.iterdir() if output.is_dir() else [output]):
        raise click.BadParameter(f"{output} already exists (use --overwrite to replace an lsr index)",
                                 param_hint="OUTPUT")
    t = time.perf_counter()
    if is_encoded(input_path):  # lsr encode shards, JsonVectorCollection or Seismic JSONL
        explicit = click.get_current_context().get_parameter_source("retriever") != click.core.ParameterSource.DEFAULT
        try:
            r = index_encoded(input_path, output, retriever if explicit else None,
                              overwrite=overwrite, show_progress=True, **given)
        except (ValueError, TypeError) as exc:
            raise click.BadParameter(str(exc), param_hint="INPUT/--retriever") from exc
        click.echo(f"indexed {r.inverted_index.n_docs} encoded documents ({r.inverted_index.nnz} postings) "
                   f"with {r.name} query encoding into {output} in {time.perf_counter() - t:.1f}s", err=True)
        return
    if not retriever_dir:
        from lsr.cli.collection import index_collection

        index_collection(input_path, output, retriever, given, overwrite, _read_corpus)
        return
    doc_ids, texts = _read_docs(input_path)
    r = build_retriever(retriever, given)
    r.index(doc_ids, texts, show_progress=True)
    r.save(output, overwrite=overwrite)
    click.echo(f"indexed {len(doc_ids)} documents with {retriever} into {output} "
               f"in {time.perf_counter() - t:.1f}s", err=True)


# ------------------------------------------------------------------------------ search
@main.command("search")
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--queries", "-q", "queries_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Queries file: JSONL (_id, text) or TSV (id<TAB>text), optionally .gz.")
@click.option("--query", "query_text", help="One query string (its id is 'q0' unless --query-id).")
@click.option("--query-id", default="q0", show_default=True, help="Id of the --query string in the run.")
@k_option(10)
@click.option("--filter", "filter_json", default=None,
              help='Collections: a metadata filter as JSON, e.g. \'{"lang": "en", "year": {"$gte": 2020}}\'.')
@click.option("--format", "fmt", type=click.Choice(["trec", "jsonl"]), default="trec", show_default=True,
              help="trec: a TREC run; jsonl: one object per hit (query_id, doc_id, rank, score, text, metadata).")
@threads_option
@run_output_option
@tag_option
@_friendly_errors
def search_cmd(index_dir: Path, queries_file: Path | None, query_text: str | None, query_id: str, k: int,
               filter_json: str | None, fmt: str, threads: int, output: str, tag: str | None) -> None:
    """Search INDEX_DIR (a collection or a retriever directory) and write a TREC run or JSONL hits."""
    from lsr.cli.collection import is_collection, search_collection, write_jsonl
    from lsr.io.readers import read_queries
    from lsr.retrievers.base import load_retriever

    if (queries_file is None) == (query_text is None):
        raise click.UsageError("give exactly one of --queries FILE or --query TEXT")
    queries = read_queries(queries_file) if queries_file else {query_id: query_text}
    if is_collection(index_dir):
        search_collection(index_dir, queries, k, threads, filter_json, fmt, output, tag)
        return
    if filter_json is not None:
        raise click.BadParameter(f"{index_dir} is a retriever directory: filters need a collection",
                                 param_hint="--filter")
    r = load_retriever(index_dir)
    qids = list(queries)
    res = r.search([queries[q] for q in qids], k=k, threads=threads, show_progress=queries_file is not None)
    if fmt == "jsonl":
        write_jsonl(res, qids, output)
        return
    _write_run(res.to_run(qids), output, tag or r.name)


# ------------------------------------------------------------------------------ eval
def _print_table(title: str, metrics: dict[str, float]) -> None:
    width = max(len(m) for m in metrics)
    click.echo(title, err=True)
    for m, v in metrics.items():
        click.echo(f"  {m:<{width}}  {v:.4f}", err=True)


@main.command("eval", cls=RetrieverCommand)
@click.argument("dataset", type=click.Path(exists=True, file_okay=False, path_type=Path))
@retriever_options()
@click.option("--output", "-o", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory for run.trec, metrics.json, per_query.tsv and config.json.")
@click.option("--split", default="test", show_default=True, help="Qrels split (qrels/<split>.tsv).")
@k_option(1000)
@threads_option
@click.option("--tune", is_flag=True,
              help="hybrid: tune the weights (on the dev split if the dataset has one, else by k-fold "
                   "cross-validation over the evaluated queries; the run written is then held-out only).")
@click.option("--folds", type=click.IntRange(min=2), default=5, show_default=True,
              help="--tune: cross-validation folds.")
@click.option("--keep-self-hits", is_flag=True, help="Keep documents whose id equals the query id "
              "(by default they are dropped, as BEIR does).")
@click.option("--save-index", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also save the built retriever to this directory.")
@_friendly_errors
def eval_cmd(dataset: Path, retriever: str, output: Path, split: str, k: int, threads: int, tune: bool,
             folds: int, keep_self_hits: bool, save_index: Path | None, **options: Any) -> None:
    """Index DATASET (a BEIR directory), search its split and evaluate with trec_eval metrics."""
    from lsr.eval.beir import evaluate_beir

    given = _given(click.get_current_context(), set(options), options)
    if not (dataset / "qrels" / f"{split}.tsv").is_file():
        have = sorted(p.stem for p in (dataset / "qrels").glob("*.tsv"))
        raise click.BadParameter(f"unknown split {split!r}: {dataset}/qrels has {', '.join(have) or 'no splits'}",
                                 param_hint="--split")
    if tune and retriever != "hybrid":
        raise click.BadParameter("--tune needs --retriever hybrid", param_hint="--tune")
    if tune and "weights" in given:
        raise click.UsageError("give --weights or --tune, not both")
    r = build_retriever(retriever, given)
    report = evaluate_beir(dataset, r, output, split=split, k=k, threads=threads, keep_self_hits=keep_self_hits,
                           tune=tune, folds=folds, save_index=save_index, show_progress=True,
                           options={key: list(v) if isinstance(v, tuple) else v for key, v in given.items()},
                           on_note=lambda note: click.echo(note, err=True))
    _print_table(f"{report.dataset} ({split}, {report.config['n_queries']} queries) with {retriever}: "
                 f"index {report.index_seconds:.1f}s, search {report.search_seconds:.1f}s", report.metrics)
    click.echo(f"wrote {output}/run.trec, metrics.json, per_query.tsv, config.json", err=True)


# ------------------------------------------------------------------------------ encode (learned sparse)
@main.command("encode", cls=RetrieverCommand)
@click.argument("input_path", metavar="INPUT", type=click.Path(exists=True, path_type=Path))
@click.argument("output", type=click.Path(file_okay=False, path_type=Path))
@retriever_options(("splade", "inference-free"), exclude=("doc_vectors",))
@click.option("--shard-size", type=click.IntRange(min=1), default=10_000, show_default=True,
              help="Documents per shard (the unit of resumption).")
@click.option("--format", "fmt", type=click.Choice(["shards", "jsonvector", "seismic"]), default="shards",
              show_default=True, help="shards: lsr's .npy shards in OUTPUT; jsonvector/seismic: shards in "
              "OUTPUT/shards plus OUTPUT/collection/*.jsonl and OUTPUT/export.json.")
@click.option("--scale", type=click.FloatRange(min=0, min_open=True), default=100.0, show_default=True,
              help="jsonvector: integer impact = round(weight * scale).")
@click.option("--restart", is_flag=True, help="Discard a partial run in OUTPUT instead of resuming it.")
@click.option("--ray", "use_ray", is_flag=True, help="Encode on Ray actors (needs lsr[ray]; docs/scale.md); "
              "the same shards as without it.")
@click.option("--ray-address", default=None, help="--ray: the cluster's address (default: start a local Ray).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="--ray: encoder actors [default: one per GPU of the cluster, else one per CPU].")
@_friendly_errors
def encode_cmd(input_path: Path, output: Path, retriever: str, fmt: str, scale: float, shard_size: int,
               restart: bool, use_ray: bool, ray_address: str | None, workers: int | None, **options: Any) -> None:
    """Encode a corpus (BEIR directory, JSONL or Parquet) into resumable shards in OUTPUT.

    A killed run resumes at the first unfinished shard when rerun with the same arguments.
    """
    from lsr.io.interchange import export_collection
    from lsr.io.shards import encode_corpus_to_shards, load_shards

    given = _given(click.get_current_context(), set(options), options)
    if not given.get("model"):
        raise click.BadParameter("encoding needs --model (a model directory or hub id)", param_hint="--model")
    if not use_ray and (ray_address is not None or workers is not None):
        raise click.BadParameter("--ray-address and --workers need --ray", param_hint="--ray")
    if use_ray:
        from lsr.distributed.cluster import require_ray

        try:
            require_ray()
        except ImportError as exc:
            raise click.ClickException(str(exc)) from None
    doc_ids, texts = _read_docs(input_path)
    encoder = build_retriever(retriever, given).encoder
    shards = output if fmt == "shards" else output / "shards"
    t = time.perf_counter()
    if use_ray:  # the model loads in each actor, not here
        from lsr.distributed.encode import encode_corpus_distributed

        encode_corpus_distributed(encoder, doc_ids, texts, shards, shard_size=shard_size, workers=workers,
                                  address=ray_address, show_progress=True, restart=restart)
    else:
        encoder.load_model()
        encode_corpus_to_shards(encoder, doc_ids, texts, shards, shard_size=shard_size, show_progress=True,
                                restart=restart)
    seconds = time.perf_counter() - t
    if fmt != "shards":
        ids, vectors = load_shards(shards)
        export_collection(output, ids, vectors, fmt=fmt, scale=scale, encoder=encoder.config())
    click.echo(f"encoded {len(doc_ids)} documents with {retriever} into {output} ({fmt}) in {seconds:.1f}s",
               err=True)


@main.command("idf")
@click.argument("input_path", metavar="INPUT", type=click.Path(exists=True, path_type=Path))
@click.argument("output", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--model", "-m", required=True, help="Model directory or hub id whose tokenizer counts the tokens.")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@_friendly_errors
def idf_cmd(input_path: Path, output: Path, model: str, overwrite: bool) -> None:
    """Estimate an inference-free query IDF table (idf.json) on a corpus (BEIR directory, JSONL or Parquet).

    Each token weighs BM25's idf over the corpus's documents, the formula of OpenSearch's MS MARCO
    table; give OUTPUT as --idf to eval, index or train (docs/training.md).
    """
    import os

    from lsr.collection.commit import write_atomic
    from lsr.encoders.inference_free import corpus_idf

    if output.exists():
        if os.path.samefile(_corpus_file(input_path), output):
            raise click.ClickException(f"{output} is the corpus being read: give another OUTPUT")
        if not overwrite:
            raise click.ClickException(f"{output} exists (give --overwrite to replace it)")
    try:  # before the counting, so that a bad OUTPUT fails at once
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise click.ClickException(f"{output}: cannot create its directory ({exc.strerror or exc})") from exc
    if not os.access(output.parent, os.W_OK):
        raise click.ClickException(f"{output}: its directory is not writable")
    _, texts = _read_docs(input_path)
    table = corpus_idf(model, texts, show_progress=True)
    try:
        write_atomic(output, (json.dumps(table) + "\n").encode("utf-8"))
    except OSError as exc:
        raise click.ClickException(f"{output}: cannot write ({exc.strerror or exc})") from exc
    click.echo(f"wrote the IDF of {len(table)} tokens over {len(texts)} documents to {output}", err=True)


# ------------------------------------------------------------------------------ fuse, report
@main.command("fuse")
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--norm", default="min-max", show_default=True,
              help="Normaliser: min-max, zmuv (z-score), l2, max, sum, tmm, rank, borda, none.")
@click.option("--fusion", default="wsum", show_default=True,
              help="Fusion: wsum, sum, mnz, anz, gmnz, max, min, med, wmnz, mixed, rrf, wrrf, isr, log_isr, "
                   "logn_isr, rbc, bordafuse, w_bordafuse.")
@click.option("--weights", default=None, callback=_parse_floats, help="One weight per run, comma-separated.")
@click.option("--depth", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Candidates taken from each run.")
@k_option(1000, "Documents per query in the fused run.")
@click.option("--floor", type=click.Choice(["zero", "min"]), default="zero", show_default=True,
              help="Normalised score of a document missing from a run (zero: ranx's; min: the run's lowest).")
@click.option("--lower-bounds", default=None, callback=_parse_floats,
              help="tmm: each run's known lowest score, comma-separated (e.g. 0,0,-1).")
@click.option("--rrf-k", type=click.FloatRange(min=0), default=60, show_default=True, help="RRF's k.")
@click.option("--tune", is_flag=True, help="Tune the weights on --qrels (instead of --weights); with --folds "
                                           "the run written is cross-validated.")
@click.option("--qrels", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="--tune: the relevance judgements to tune on.")
@click.option("--folds", type=click.IntRange(min=0), default=5, show_default=True,
              help="--tune: k-fold CV over the queries (0: tune on all of them: only for dev qrels).")
@click.option("--metric", default="ndcg@10", show_default=True, help="--tune: metric to maximise.")
@click.option("--search", type=click.Choice(["grid", "coordinate"]), default="grid", show_default=True,
              help="--tune: simplex grid or coordinate ascent.")
@click.option("--step", type=click.FloatRange(min=0, min_open=True, max=1), default=0.1, show_default=True,
              help="--tune: weight grid step.")
@click.option("--selection", type=click.Choice(["1se", "best"]), default="1se", show_default=True,
              help="--tune: 1se = the most even weights within one standard error of the best mean "
                   "(Breiman's one-SE rule); best = the highest mean.")
@click.option("--seed", type=int, default=0, show_default=True, help="--tune: fold shuffle seed.")
@click.option("--tuning-json", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="--tune: also write the tuned weights and fold scores as JSON.")
@run_output_option
@tag_option
@_friendly_errors
def fuse_cmd(runs: tuple[Path, ...], norm: str, fusion: str, weights: tuple[float, ...] | None, depth: int, k: int,
             floor: str, lower_bounds: tuple[float, ...] | None, rrf_k: float, tune: bool, qrels: Path | None,
             folds: int, metric: str, search: str, step: float, selection: str, seed: int,
             tuning_json: Path | None, output: str, tag: str | None) -> None:
    """Fuse TREC run files RUN1 RUN2 ... into one run (normalise, then combine)."""
    from lsr.fusion.combine import canonical_fusion
    from lsr.fusion.normalize import canonical_normalizer
    from lsr.fusion.tuning import fuse_runs
    from lsr.io.readers import read_qrels
    from lsr.io.runs import read_run

    try:
        norm, fusion = canonical_normalizer(norm), canonical_fusion(fusion)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--norm/--fusion") from exc
    if tune != (qrels is not None):
        raise click.UsageError("--tune and --qrels go together")
    if tune and weights is not None:
        raise click.UsageError("give --weights or --tune, not both")
    loaded = [read_run(p) for p in runs]
    for name, values in (("--weights", weights), ("--lower-bounds", lower_bounds)):
        if values is not None and len(values) != len(loaded):
            raise click.BadParameter(f"{len(values)} values for {len(loaded)} runs", param_hint=name)
    try:
        fused, notes, report = fuse_runs(
            loaded, norm=norm, method=fusion, weights=weights, depth=depth, k=k, floor=floor,
            lower_bounds=lower_bounds, rrf_k=rrf_k, qrels=read_qrels(qrels) if qrels else None, folds=folds,
            metric=metric, search=search, step=step, selection=selection, seed=seed)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    for note in notes:
        click.echo(note, err=True)
    if tuning_json is not None and report is not None:
        tuning_json.write_text(json.dumps({"runs": [str(p) for p in runs], "norm": norm, "fusion": fusion,
                                           "metric": metric, "search": search, "step": step,
                                           "selection": selection, **report}, indent=2) + "\n")
    _write_run(fused, output, tag or f"{norm}-{fusion}")


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


# Commands of their own modules register on ``main`` when imported (each keeps its heavy
# imports inside the command, so ``lsr --help`` stays instant).
from lsr.cli import collection as _collection  # noqa: E402,F401
from lsr.cli import train as _train  # noqa: E402,F401

if __name__ == "__main__":
    main()
