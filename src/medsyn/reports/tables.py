"""Metric tables from :func:`medsyn.metrics.evaluate.evaluate_predictions` results, and the
cross-run comparison with a paired test.

Results have the shape ``{"subjects": {id: {region: {metric: v}}}, "summary": {region: {metric:
{"mean", "std", "median", "n", "n_inf"}}}, "settings": {...}}``. Tables are
:class:`~medsyn.reports.document.Table` objects (rendered to HTML and Markdown alike).

Comparison (papers' style): one row per run, ``mean ± std`` over subjects, the best value of each
column in bold. The paired test is the Wilcoxon signed-rank test (``scipy.stats.wilcoxon``,
two-sided) over the subjects both runs evaluated, between the column's best run and each other
run. With n paired subjects the smallest two-sided p the exact test can give is 2 / 2ⁿ, so
n < 6 can never reach p < 0.05: the table says so rather than hide it.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from medsyn.reports.document import Table

#: which direction is better, per metric name; unknown metrics are never bolded
LOWER_IS_BETTER = frozenset({"mae", "mse", "rmse", "lpips"})
HIGHER_IS_BETTER = frozenset({"psnr", "ssim", "ssim3d", "ms_ssim", "uqi", "vif"})
REGION_ORDER = ("foreground", "tumour", "healthy")
MAIN_METRICS = ("mae", "psnr", "ssim")
SIGNIFICANCE = 0.05
METRIC_NAMES = {"mae": "MAE", "mse": "MSE", "psnr": "PSNR (dB)", "ssim": "SSIM", "ssim3d": "SSIM-3D", "uqi": "UQI",
                "ms_ssim": "MS-SSIM", "vif": "VIF", "lpips": "LPIPS"}


def direction(metric: str) -> str | None:
    if metric in LOWER_IS_BETTER:
        return "lower"
    if metric in HIGHER_IS_BETTER:
        return "higher"
    return None


def metric_title(metric: str) -> str:
    arrow = {"lower": " ↓", "higher": " ↑"}.get(direction(metric) or "", "")
    return METRIC_NAMES.get(metric, metric) + arrow


def fmt(v: Any) -> str:
    """A number for a table: 4 significant figures at most, thousands separated, ∞ and – spelled."""
    if v is None or v == "":
        return "–"
    if isinstance(v, str):
        if v in ("inf", "-inf"):
            return "∞" if v == "inf" else "−∞"
        return v
    v = float(v)
    if math.isnan(v):
        return "–"
    if math.isinf(v):
        return "∞" if v > 0 else "−∞"
    a = abs(v)
    if a == 0:
        return "0"
    if a >= 1e7 or a < 1e-3:
        return f"{v:.3e}"
    if a >= 1e4:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.4f}"


def fmt_p(p: float) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "–"
    return "< 0.001" if p < 1e-3 else f"{p:.3f}"


def mean_std(stats: dict[str, Any] | None) -> str:
    """``mean ± std`` (std omitted for one subject); ``(+k ∞)`` when k values were infinite."""
    if not stats:
        return "–"
    mean, std, n_inf = stats.get("mean"), stats.get("std"), stats.get("n_inf", 0)
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        text = "–"
    elif std is None or (isinstance(std, float) and math.isnan(std)):
        text = fmt(mean)
    else:
        text = f"{fmt(mean)} ± {fmt(std)}"
    if n_inf:
        text += f" (+{n_inf} ∞)"
    return text


def ordered_regions(names: Any) -> list[str]:
    names = list(dict.fromkeys(names))
    first = [r for r in REGION_ORDER if r in names]
    labels = sorted((r for r in names if r.startswith("label_")), key=lambda r: (len(r), r))
    return first + labels + [r for r in names if r not in first and r not in labels]


def region_title(region: str) -> str:
    return f"label {region.split('_', 1)[1]}" if region.startswith("label_") else region


# -------------------------------------------------------------------------- one run's tables


def summary_table(results: dict[str, Any]) -> Table:
    metrics = results["settings"]["metrics"]
    rows = []
    for region in ordered_regions(results["summary"]):
        vals = results["summary"][region]
        n = max((int(v.get("n", 0)) + int(v.get("n_inf", 0)) for v in vals.values()), default=0)
        rows.append([region_title(region), str(n), *[mean_std(vals.get(m)) for m in metrics]])
    return Table(["region", "subjects", *[metric_title(m) for m in metrics]], rows,
                 caption="Summary over subjects: mean ± std (sample std, ddof = 1)",
                 footnote="Empty regions (e.g. no tumour) are left out of a region's statistics; ∞ (a PSNR of an exact "
                          "match) is counted apart and not averaged.")


def subject_table(results: dict[str, Any], region: str = "foreground") -> Table:
    metrics = results["settings"]["metrics"]
    ranges = results["settings"].get("data_range_per_subject", {})
    rows = []
    for sid, regions in results["subjects"].items():
        vals = regions.get(region, {})
        rows.append([sid, fmt(ranges.get(sid)), *[fmt(vals.get(m)) for m in metrics]])
    return Table(["subject", "data range", *[metric_title(m) for m in metrics]], rows,
                 caption=f"Per subject, region {region_title(region)}")


def subject_region_table(results: dict[str, Any]) -> Table:
    metrics = results["settings"]["metrics"]
    rows = []
    for sid, regions in results["subjects"].items():
        for region in ordered_regions(regions):
            rows.append([sid, region_title(region), *[fmt(regions[region].get(m)) for m in metrics]])
    return Table(["subject", "region", *[metric_title(m) for m in metrics]], rows,
                 caption="Per subject and region (– = empty region)")


def settings_rows(results: dict[str, Any]) -> list[tuple[str, str]]:
    s = results["settings"]
    dr = s.get("data_range")
    masks = s.get("mask", {})
    mask_kinds = sorted(set(masks.values()))
    ranges = s.get("data_range_per_subject", {})
    rows = [
        ("modality", str(s.get("modality"))),
        ("units", str(s.get("units"))),
        ("data range", dr if isinstance(dr, str) else f"fixed: {fmt(dr)}"),
        ("data range per subject", ", ".join(f"{k}: {fmt(v)}" for k, v in ranges.items()) or "–"),
        ("foreground mask", "; ".join(mask_kinds) if len(mask_kinds) <= 3 else f"{len(mask_kinds)} kinds (see the JSON)"),
        ("regions", "foreground (the mask); tumour = label > 0; healthy = foreground without tumour; label k = label == k"),
        ("metrics", ", ".join(s.get("metrics", []))),
        ("PSNR of an exact match", str(s.get("psnr_identical", "inf"))),
        ("predictions", f"`{s.get('prediction_dir')}`"),
        ("reference", f"`{s.get('reference')}`"),
    ]
    return rows


def kv_table(rows: list[tuple[str, Any]], caption: str = "") -> Table:
    return Table([], [[k, str(v)] for k, v in rows], caption=caption, css_class="kv")


# ------------------------------------------------------------------------------- comparison


@dataclass
class PairedTest:
    region: str
    metric: str
    best: str
    other: str
    n: int
    median_diff: float  # other − best
    p: float
    note: str = ""


def _finite_values(results: dict[str, Any], region: str, metric: str) -> dict[str, float]:
    out = {}
    for sid, regions in results["subjects"].items():
        v = regions.get(region, {}).get(metric)
        if isinstance(v, (int, float)) and math.isfinite(v):
            out[sid] = float(v)
    return out


def paired_wilcoxon(best: dict[str, float], other: dict[str, float]) -> tuple[int, float, float, str]:
    """Wilcoxon signed-rank over the subjects in both → (n, median(other − best), p, note)."""
    from scipy.stats import wilcoxon

    common = sorted(set(best) & set(other))
    n = len(common)
    if n == 0:
        return 0, math.nan, math.nan, "no subject in common"
    a = np.array([best[s] for s in common])
    b = np.array([other[s] for s in common])
    d = b - a
    med = float(np.median(d))
    if not np.any(d != 0):
        return n, med, 1.0, "identical values"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = float(wilcoxon(b, a, alternative="two-sided").pvalue)
    note = f"smallest possible p at n = {n}: {2 / 2 ** n:.3g}" if n < 6 else ""
    return n, med, p, note


def _best_index(values: list[float], metric: str) -> int | None:
    d = direction(metric)
    finite = [(v, i) for i, v in enumerate(values) if v is not None and math.isfinite(v)]
    if d is None or not finite:
        return None
    return (min(finite) if d == "lower" else max(finite))[1]


def comparison(runs: list[tuple[str, str, dict[str, Any]]], *, main_only: bool = True) -> tuple[Table, list[PairedTest]]:
    """``runs``: (label, method, results). One row per run; columns region × metric.

    main_only: regions foreground/tumour/healthy and metrics MAE/PSNR/SSIM (those all runs have);
    otherwise every region and metric the runs share. The best mean per column is bold; a
    ``†`` marks runs that differ from the column's best with Wilcoxon p < 0.05.
    """
    regions = None
    metrics = None
    for _, _, res in runs:
        r = list(res["summary"])
        regions = r if regions is None else [x for x in regions if x in r]
        m = list(res["settings"]["metrics"])
        metrics = m if metrics is None else [x for x in metrics if x in m]
    regions = ordered_regions(regions or [])
    metrics = metrics or []
    if main_only:
        regions = [r for r in regions if r in REGION_ORDER]
        metrics = [m for m in metrics if m in MAIN_METRICS] or metrics
    columns = [(r, m) for r in regions for m in metrics]
    rows = [[label, method] for label, method, _ in runs]
    bold: set[tuple[int, int]] = set()
    tests: list[PairedTest] = []
    for j, (region, metric) in enumerate(columns):
        means = []
        for i, (_, _, res) in enumerate(runs):
            st = res["summary"].get(region, {}).get(metric)
            rows[i].append(mean_std(st))
            means.append(st.get("mean") if st else None)
        b = _best_index([m if isinstance(m, (int, float)) else None for m in means], metric)
        if b is None:
            continue
        bold.add((b, j + 2))
        best_vals = _finite_values(runs[b][2], region, metric)
        for i, (label, _, res) in enumerate(runs):
            if i == b:
                continue
            n, med, p, note = paired_wilcoxon(best_vals, _finite_values(res, region, metric))
            tests.append(PairedTest(region, metric, runs[b][0], label, n, med, p, note))
            if p == p and p < SIGNIFICANCE:
                rows[i][j + 2] += " †"
    head = ["run", "method", *[f"{metric_title(m)} {region_title(r)}" for r, m in columns]]
    table = Table(head, rows, bold=bold,
                  caption="Comparison: mean ± std over subjects; best per column in bold",
                  footnote=f"† differs from the column's best run, Wilcoxon signed-rank p < {SIGNIFICANCE} "
                           "(paired over subjects; see the paired tests).")
    return table, tests


def tests_table(tests: list[PairedTest]) -> Table:
    rows = [[region_title(t.region), metric_title(t.metric), t.best, t.other, str(t.n), fmt(t.median_diff), fmt_p(t.p),
             t.note] for t in tests]
    return Table(["region", "metric", "best run", "compared run", "paired subjects", "median difference (compared − best)",
                  "Wilcoxon p", "note"], rows,
                 caption="Paired tests: Wilcoxon signed-rank (two-sided, scipy) over subjects, best run vs each other run")
