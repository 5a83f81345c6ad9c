"""``lsr report``: metrics of several ``lsr eval`` directories as one markdown table and a bar chart.

>>> table = {"bm25": {"scifact": {"ndcg@10": 0.6789}}, "hybrid": {"scifact": {"ndcg@10": 0.73}}}
>>> print(markdown_table(table, "ndcg@10"))
| ndcg@10 | scifact |
| --- | --- |
| bm25 | 0.6789 |
| hybrid | **0.7300** |
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Iterable

logger = logging.getLogger(__name__)

__all__ = ["collect", "markdown_table", "plot_bars"]

Table = dict[str, dict[str, dict[str, float]]]  # retriever -> dataset -> metric -> value


def _eval_dirs(root: Path) -> Iterable[Path]:
    if (root / "metrics.json").is_file():
        yield root
        return
    for metrics in sorted(root.rglob("metrics.json")):
        yield metrics.parent


def collect(out_dirs: Iterable[str | os.PathLike]) -> Table:
    """``{retriever: {dataset: {metric: value}}}`` from eval directories (or folders holding them).

    The retriever label is the directory's name; the dataset is config.json's ``dataset`` (its
    last path component), else the parent directory's name."""
    table: Table = {}
    for root in out_dirs:
        for d in _eval_dirs(Path(root)):
            try:
                metrics = json.loads((d / "metrics.json").read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise ValueError(f"{d / 'metrics.json'}: unreadable ({exc})") from exc
            dataset = d.parent.name
            cfg = d / "config.json"
            if cfg.is_file():
                try:
                    dataset = Path(json.loads(cfg.read_text()).get("dataset") or dataset).name
                except json.JSONDecodeError:
                    logger.warning("%s: unreadable config.json, dataset taken from the path", d)
            table.setdefault(d.name, {})[dataset] = {k: float(v) for k, v in metrics.items()}
    return table


def _datasets(table: Table) -> list[str]:
    return sorted({ds for row in table.values() for ds in row})


def markdown_table(table: Table, metric: str = "ndcg@10") -> str:
    """Rows retrievers (in input order), columns datasets; the best of each column in bold."""
    datasets = _datasets(table)
    best = {ds: max((row[ds][metric] for row in table.values() if metric in row.get(ds, {})), default=None)
            for ds in datasets}
    lines = [f"| {metric} | " + " | ".join(datasets) + " |", "| --- | " + " | ".join("---" for _ in datasets) + " |"]
    for name, row in table.items():
        cells = []
        for ds in datasets:
            v = row.get(ds, {}).get(metric)
            cells.append("" if v is None else f"**{v:.4f}**" if v == best[ds] else f"{v:.4f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_bars(table: Table, metric: str, path: str | os.PathLike) -> None:
    """Grouped bar chart (one group per dataset, one bar per retriever) saved as PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("lsr report --plot needs matplotlib: pip install 'lsr[report]'") from exc
    datasets, names = _datasets(table), list(table)
    width = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(datasets) * max(len(names), 1) * 0.5 + 2), 4.5))
    for i, name in enumerate(names):
        xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(datasets))]
        ax.bar(xs, [table[name].get(ds, {}).get(metric, 0.0) for ds in datasets], width, label=name)
    ax.set_xticks(range(len(datasets)), datasets)
    ax.set_ylabel(metric)
    ax.legend(fontsize="small", ncol=2)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
