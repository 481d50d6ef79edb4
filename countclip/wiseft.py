"""WiSE-FT (Wortsman et al., CVPR 2022): interpolate fine-tuned weights with the original ones.

theta(alpha) = (1 - alpha) * theta_base + alpha * theta_finetuned, every floating-point tensor of the
state dict (the logit scale and bias included, as the paper's code does); alpha = 0 is the base model,
1 the fine-tuned one, exactly (``torch.lerp`` is exact at both ends). The curve over alpha is the
trade-off between what fine-tuning taught (counting) and what it cost (zero-shot accuracy): this module
evaluates it, writes it as JSON and a markdown table, and plots it.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from countclip import storage
from countclip.config import ConfigError


def check_alpha(alpha: float) -> float:
    """alpha as a float, or ConfigError unless it is a number in [0, 1]."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= float(alpha) <= 1.0:
        raise ConfigError(f"WiSE-FT alpha must be a number in [0, 1] (0: the base model, 1: the fine-tuned one), got {alpha!r}")
    return float(alpha)


def parse_alphas(text: str) -> list[float]:
    """"0,0.25,0.5" -> [0.0, 0.25, 0.5]; ConfigError for anything else."""
    values = []
    for part in text.split(","):
        try:
            values.append(float(part))
        except ValueError:
            raise ConfigError(f"--alpha takes comma-separated numbers in [0, 1], e.g. 0,0.5,1; got {text!r}") from None
    return [check_alpha(v) for v in values]


def interpolate(base: Mapping[str, Tensor], finetuned: Mapping[str, Tensor], alpha: float) -> dict[str, Tensor]:
    """The WiSE-FT state dict at ``alpha``; ValueError when the two are not the same architecture."""
    alpha = check_alpha(alpha)
    if base.keys() != finetuned.keys():
        only = sorted(set(base) ^ set(finetuned))
        raise ValueError(f"base and fine-tuned models differ in their weights ({len(only)} names in one only, "
                         f"e.g. {only[:3]}): WiSE-FT needs two checkpoints of one architecture")
    mixed = {}
    for name, b in base.items():
        f = finetuned[name]
        if b.shape != f.shape:
            raise ValueError(f"base and fine-tuned {name} differ in shape: {tuple(b.shape)} vs {tuple(f.shape)}")
        if b.is_floating_point():
            mixed[name] = torch.lerp(b, f.to(b.dtype), alpha)
        elif torch.equal(b, f):
            mixed[name] = b.clone()
        else:
            raise ValueError(f"base and fine-tuned {name} are integer tensors that differ: they cannot be interpolated")
    return mixed


def wise_ft_curve(model: nn.Module, base: Mapping[str, Tensor], finetuned: Mapping[str, Tensor],
                  alphas: Sequence[float], evaluate: Callable[[nn.Module], dict], echo=print) -> list[dict]:
    """Load each interpolation into ``model`` and evaluate it; one row per alpha:
    {"alpha", **evaluate(model)} (evaluate returns count_accuracy, zeroshot_accuracy, zeroshot_by_task)."""
    alphas = [check_alpha(a) for a in alphas]
    rows = []
    for alpha in alphas:
        model.load_state_dict(interpolate(base, finetuned, alpha))
        row = {"alpha": alpha, **evaluate(model)}
        echo(f"[wise-ft] alpha {alpha:.2f}: count accuracy {row['count_accuracy']:.1%}, "
             f"zero-shot {row['zeroshot_accuracy']:.1%}")
        rows.append(row)
    return rows


def format_markdown(rows: list[dict]) -> str:
    """The trade-off table: one line per alpha, counting accuracy, mean zero-shot and each task's."""
    tasks = list(rows[0].get("zeroshot_by_task", {})) if rows else []
    head = ["alpha", "count accuracy", "zero-shot (mean)", *[f"zero-shot {t}" for t in tasks]]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        cells = [f"{r['alpha']:.2f}", f"{r['count_accuracy']:.1%}", f"{r['zeroshot_accuracy']:.1%}",
                 *[f"{r['zeroshot_by_task'][t]:.1%}" for t in tasks]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def tradeoff_png(rows: list[dict], title: str) -> bytes:
    """Left: counting and zero-shot accuracy against alpha; right: the trade-off curve itself."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    alphas = [r["alpha"] for r in rows]
    count = [100 * r["count_accuracy"] for r in rows]
    zeroshot = [100 * r["zeroshot_accuracy"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(alphas, count, "o-", label="counting (CountBench protocol)")
    left.plot(alphas, zeroshot, "s-", label="zero-shot (mean of tasks)")
    for task in rows[0].get("zeroshot_by_task", {}):
        left.plot(alphas, [100 * r["zeroshot_by_task"][task] for r in rows], ":", alpha=0.6, label=f"zero-shot {task}")
    left.set_xlabel("alpha (0: base, 1: fine-tuned)")
    left.set_ylabel("accuracy, %")
    left.legend(fontsize=7)
    right.plot(zeroshot, count, "o-")
    for a, x, y in zip(alphas, zeroshot, count):
        right.annotate(f"{a:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    right.set_xlabel("zero-shot accuracy, %")
    right.set_ylabel("counting accuracy, %")
    fig.suptitle(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def write_curve(rows: list[dict], out: str | Path, title: str, meta: dict | None = None, stem: str = "wise_ft") -> dict:
    """Write <out>/<stem>.json (rows and meta), .md (the table) and .png (the plot); return their paths."""
    out = str(out).rstrip("/")
    paths = {kind: f"{out}/{stem}.{kind}" for kind in ("json", "md", "png")}
    storage.write_text(paths["json"], json.dumps({**(meta or {}), "rows": rows}, indent=1))
    storage.write_text(paths["md"], f"{title}\n\n{format_markdown(rows)}")
    storage.write_bytes(paths["png"], tradeoff_png(rows, title))
    return paths
