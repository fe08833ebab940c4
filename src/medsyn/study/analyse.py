"""``medsyn reader-study analyse``: MedGAN's Table III for a study, with agreement and paired tests.

For every method (``reference`` = the real images):

* **score**: mean ± std (population) of the 1–4 realism ratings its images received;
* **% judged real**: of the trials answered, the share in which the reader picked this method's
  image as the real one (for ``reference``: the readers' accuracy);

overall and per reader. Inter-reader agreement: Fleiss' κ of the *choice* (which method's image
was picked), over the trials every reader answered, with the methods as categories; and Fleiss'
κ of the ratings (categories 1–4) over the images of those trials. Paired tests between methods:
Wilcoxon signed-rank of the ratings, paired by (reader, trial) — the two images were seen side by
side by the same reader.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from medsyn.errors import DatasetError
from medsyn.study import store
from medsyn.study.create import PRIVATE, REFERENCE, read_study


def fleiss_kappa(counts: np.ndarray) -> float:
    """Fleiss' κ of a (items, categories) table of how many raters put each item in each category
    (every item rated by the same number n ≥ 2 of raters). NaN when undefined (one category only)."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[0] == 0:
        return math.nan
    n = counts.sum(axis=1)
    if not np.all(n == n[0]) or n[0] < 2:
        raise ValueError("Fleiss' kappa needs the same number (≥ 2) of ratings for every item")
    n = n[0]
    p_j = counts.sum(axis=0) / counts.sum()
    p_i = (np.square(counts).sum(axis=1) - n) / (n * (n - 1))
    p_bar, p_e = p_i.mean(), np.square(p_j).sum()
    return math.nan if p_e == 1 else float((p_bar - p_e) / (1 - p_e))


def _summary(scores: dict[str, list[int]], picks: dict[str, int], n_trials: int, methods: list[str]) -> dict[str, Any]:
    out = {}
    for m in methods:
        s = np.asarray(scores.get(m, []), dtype=np.float64)
        out[m] = {"score_mean": float(s.mean()) if s.size else math.nan, "score_std": float(s.std()) if s.size else math.nan,
                  "n_ratings": int(s.size), "judged_real_pct": 100.0 * picks.get(m, 0) / n_trials if n_trials else math.nan,
                  "judged_real": int(picks.get(m, 0))}
    return out


def analyse_study(folder: str | Path) -> dict[str, Any]:
    """Table III, agreement and paired tests (see the module doc) as a JSON-ready dict."""
    from medsyn.reports.tables import paired_wilcoxon

    folder = Path(folder)
    public, _ = read_study(folder)
    try:
        private = json.loads((folder / PRIVATE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DatasetError(f"{folder / PRIVATE}: the study's manifest is missing or unreadable ({e}); "
                           "analyse needs it to map images to methods") from None
    method_of = {name: m for t in private["trials"] for name, m in t["images"].items()}
    methods = [REFERENCE] + [m for m in private["methods"]]
    answers = store.all_answers(folder)
    readers = list(public["readers"])
    per_reader: dict[str, Any] = {}
    all_scores: dict[str, list[int]] = {}
    all_picks: dict[str, int] = {}
    for r in readers:
        mine = [a for a in answers if a["reader"] == r]
        scores: dict[str, list[int]] = {}
        picks: dict[str, int] = {}
        for a in mine:
            for name, v in a["ratings"].items():
                scores.setdefault(method_of[name], []).append(v)
            picks[method_of[a["choice"]]] = picks.get(method_of[a["choice"]], 0) + 1
        per_reader[r] = {"n_trials": len(mine), "methods": _summary(scores, picks, len(mine), methods)}
        for m, v in scores.items():
            all_scores.setdefault(m, []).extend(v)
        for m, v in picks.items():
            all_picks[m] = all_picks.get(m, 0) + v
    overall = _summary(all_scores, all_picks, len(answers), methods)
    # agreement over the trials every (active) reader answered
    active = [r for r in readers if per_reader[r]["n_trials"]]
    by_trial: dict[int, list[dict[str, Any]]] = {}
    for a in answers:
        by_trial.setdefault(a["trial"], []).append(a)
    full = sorted(t for t, lst in by_trial.items() if len(active) >= 2 and {a["reader"] for a in lst} == set(active))
    agreement: dict[str, Any] = {"readers": active, "trials": len(full)}
    if full:
        choice_counts = np.array([[sum(method_of[a["choice"]] == m for a in by_trial[t]) for m in methods] for t in full])
        rating_counts = np.array([[sum(a["ratings"][name] == v for a in by_trial[t]) for v in (1, 2, 3, 4)]
                                  for t in full for name in by_trial[t][0]["ratings"]])
        agreement["fleiss_kappa_choice"] = fleiss_kappa(choice_counts)
        agreement["fleiss_kappa_ratings"] = fleiss_kappa(rating_counts)
    else:
        agreement["note"] = "agreement needs at least two readers who answered the same trials"
    # paired tests between methods on the ratings, paired by (reader, trial)
    paired: dict[str, dict[str, float]] = {m: {} for m in methods}
    for a in answers:
        for name, v in a["ratings"].items():
            paired[method_of[name]][f"{a['reader']}:{a['trial']}"] = float(v)
    tests = []
    for m1, m2 in itertools.combinations(methods, 2):
        n, med, p, note = paired_wilcoxon(paired[m1], paired[m2])
        tests.append({"a": m1, "b": m2, "n": n, "median_b_minus_a": med, "p": p, "note": note})
    return {"study": str(folder), "title": public["title"], "n_trials": public["n_trials"], "n_answers": len(answers),
            "methods": methods, "overall": overall, "per_reader": per_reader, "agreement": agreement,
            "paired_tests": tests,
            "definitions": {"score": "mean ± std of the 1–4 realism ratings (4 = most realistic)",
                            "judged_real_pct": "share of answered trials in which the method's image was picked as real",
                            "paired_tests": "Wilcoxon signed-rank on ratings paired by (reader, trial), two-sided"}}


def _f(v: float, digits: int = 2) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def to_markdown(res: dict[str, Any]) -> str:
    """Table III (overall and per reader), agreement and paired tests as Markdown."""
    lines = [f"# Reader study: {res['title']}", "",
             f"{res['n_answers']} answers from {len(res['per_reader'])} reader(s), {res['n_trials']} trials.", "",
             "## Table III: realism score and images judged real", "",
             "| Method | Score (mean ± std) | Judged real (%) | n ratings |", "|---|---|---|---|"]
    for m in res["methods"]:
        o = res["overall"][m]
        lines.append(f"| {m} | {_f(o['score_mean'])} ± {_f(o['score_std'])} | {_f(o['judged_real_pct'], 1)} | {o['n_ratings']} |")
    lines += ["", "### Per reader", "", "| Reader | Trials | " + " | ".join(f"{m} score / % real" for m in res["methods"]) + " |",
              "|---|---|" + "---|" * len(res["methods"])]
    for r, v in res["per_reader"].items():
        cells = [f"{_f(v['methods'][m]['score_mean'])} / {_f(v['methods'][m]['judged_real_pct'], 1)}" for m in res["methods"]]
        lines.append(f"| {r} | {v['n_trials']} | " + " | ".join(cells) + " |")
    ag = res["agreement"]
    lines += ["", "## Inter-reader agreement", ""]
    if "fleiss_kappa_choice" in ag:
        lines.append(f"Fleiss' κ over {ag['trials']} trials answered by all {len(ag['readers'])} readers: choice of the "
                     f"real image {_f(ag['fleiss_kappa_choice'], 3)}, ratings {_f(ag['fleiss_kappa_ratings'], 3)}.")
    else:
        lines.append(ag.get("note", ""))
    lines += ["", "## Paired tests (ratings, Wilcoxon signed-rank, paired by reader and trial)", "",
              "| A | B | n | median (B − A) | p | note |", "|---|---|---|---|---|---|"]
    for t in res["paired_tests"]:
        lines.append(f"| {t['a']} | {t['b']} | {t['n']} | {_f(t['median_b_minus_a'])} | {_f(t['p'], 4)} | {t['note']} |")
    return "\n".join(lines) + "\n"


def report_section(res: dict[str, Any]) -> Any:
    """Table III, agreement and paired tests as a section of ``medsyn report`` (reports/document.py)."""
    from medsyn.reports.document import Section, Table, Text

    t3 = Table(["method", "score (mean ± std)", "judged real (%)", "n ratings"],
               [[m, f"{_f(o['score_mean'])} ± {_f(o['score_std'])}", _f(o["judged_real_pct"], 1), str(o["n_ratings"])]
                for m, o in ((m, res["overall"][m]) for m in res["methods"])],
               caption=f"Reader study: realism score (1–4) and share of trials judged real, {res['n_answers']} answers "
                       f"from {len(res['per_reader'])} reader(s) (MedGAN Table III)")
    per = Table(["reader", "trials", *[f"{m}: score / % real" for m in res["methods"]]],
                [[r, str(v["n_trials"]), *[f"{_f(v['methods'][m]['score_mean'])} / "
                                           f"{_f(v['methods'][m]['judged_real_pct'], 1)}" for m in res["methods"]]]
                 for r, v in res["per_reader"].items()], caption="Reader study, per reader")
    tests = Table(["A", "B", "n", "median (B − A)", "p"],
                  [[t["a"], t["b"], str(t["n"]), _f(t["median_b_minus_a"]), _f(t["p"], 4)] for t in res["paired_tests"]],
                  caption="Reader study: paired Wilcoxon signed-rank tests of the ratings (pairs: reader × trial)")
    ag = res["agreement"]
    agree = (f"Fleiss' κ over {ag['trials']} trials read by all readers: choice {_f(ag['fleiss_kappa_choice'], 3)}, "
             f"ratings {_f(ag['fleiss_kappa_ratings'], 3)}." if "fleiss_kappa_choice" in ag else ag.get("note", ""))
    return Section(f"Reader study: {res['title']}", [t3, per, Text(agree), tests])
