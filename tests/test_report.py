"""``medsyn report`` and ``medsyn bench``: integration on two tiny runs of different methods, and
unit checks of the tables (paired Wilcoxon test, best-in-bold), the error analysis and rendering.

The two runs (Nie et al.'s full method and the FCN baseline, a few steps each on the bundled
sample) and the report on both are made once per session by :func:`shared_report`, which
tests/test_report_browser.py reuses.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy.stats import wilcoxon

from medsyn.cli.main import main
from medsyn.reports import tables
from medsyn.reports.analysis import DISTANCE_EDGES_MM, ErrorAnalysis, SubjectVolumes, signed_distance_mm
from medsyn.reports.document import Document, Figure, Section, Table, Text, to_html, to_markdown

TRAIN, TEST = "BraTS-MET-00110-000", "BraTS-GLI-00000-000"
TINY = ["--set", "params.base_filters=4", "--set", "params.depth=2", "--set", "data.patch_size=[48,48]",
        "--set", "train.batch_size=2", "--set", f"data.train=[{TRAIN}]", "--set", "train.log_every=1",
        "--set", "train.sample_every=0", "--set", "inference.batch_size=64", "--set", "inference.overlap=0.0"]
# run A evaluates its test split; run B has no test split (val only, with validation records): the report falls back to val
RUNS = {
    "nie-full": ["configs/nie2018_brats_t1_t2.yaml", "--set", "data.val=[]", "--set", f"data.test=[{TEST}]"],
    "nie-fcn": ["configs/nie2018_fcn.yaml", "--set", f"data.val=[{TEST}]", "--set", "data.test=[]",
                "--set", "data.patches_per_subject=4"],
}

_CACHE: dict[str, Path] = {}


def shared_report(tmp_path_factory) -> dict[str, Path]:
    """Train both runs (3 steps each) and report on both; once per test session."""
    if not _CACHE:
        root = tmp_path_factory.mktemp("report")
        for name, args in RUNS.items():
            out = root / name
            assert main(["train", args[0], *TINY, *args[1:], "--max-steps", "3", "--out", str(out)]) == 0
            _CACHE[name] = out
        html = root / "out" / "report.html"
        assert main(["report", str(_CACHE["nie-full"]), str(_CACHE["nie-fcn"]), "--out", str(html.parent)]) == 0
        _CACHE["html"] = html
    return dict(_CACHE)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict[str, Path]:
    return shared_report(tmp_path_factory)


def _imgs(text: str) -> list[str]:
    return re.findall(r'<img src="([^"]*)"', text)


# ------------------------------------------------------------------------------ integration


def test_report_is_one_self_contained_page_with_pngs_and_markdown_beside_it(report):
    html = report["html"]
    text = html.read_text()
    srcs = _imgs(text)
    assert len(srcs) >= 2 * (1 + 3 + 2)  # per run: curves, 3 views, 2 error plots
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r'(src|href)="(https?:|file:|/)', text)  # nothing outside the file
    files = html.parent / "report_files"
    pngs = sorted(files.glob("*.png"))
    assert len(pngs) == len(srcs)
    md = html.with_suffix(".md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(links) == len(pngs) and all((html.parent / link).is_file() for link in links)


def test_each_run_has_config_data_curves_metrics_images_and_analysis(report):
    text = report["html"].read_text()
    for name in ("nie-full", "nie-fcn"):
        run = report[name]
        assert f"Run {name}" in text
        # every logged scalar is plotted
        keys = {k for line in (run / "metrics.jsonl").read_text().splitlines() for k in json.loads(line)} - {"step", "epoch", "time_s"}
        assert f"({len(keys)} series:" in text
        # the resolved config is shown
        assert f"method: {yaml.safe_load((run / 'config.yaml').read_text())['method']}" in text
    for heading in ("Configuration", "Data and splits", "Training curves", "Metrics", "Images", "Error analysis", "Model card"):
        assert text.count(f">{heading}</h3>") == 2, heading
    for view in ("axial", "coronal", "sagittal"):
        assert f"{TEST}, {view} slice" in text
    # metric tables per region, with the data range and mask stated
    for region in ("foreground", "tumour", "healthy", "label 1", "label 2", "label 3"):
        assert f"<td class=\"t\">{region}</td>" in text, region
    assert "data range per subject" in text and "computed from reference" in text
    assert "Summary over subjects: mean ± std" in text
    assert "worst axial slices by foreground MAE" in text
    # run B had no test split: the report fell back to its validation subjects, and plotted val/ curves
    assert "1 (val)" in text and "1 (test)" in text
    # Nie's D2 gives a confidence map; the FCN baseline has none, and the page says so
    assert (report["html"].parent / "report_files" / "predictions" / "nie-full" / TEST / "t2w_confidence.nii.gz").is_file()
    assert "method 'nie-fcn' does not provide one" in text
    assert "method 'nie-dual-attention' does not provide one" not in text


def test_model_card_written_into_each_run_folder(report):
    card = (report["nie-full"] / "MODEL_CARD.md").read_text()
    for part in ("## Method", "nie-dual-attention", "Nie et al., MICCAI 2018", "## Data", "## Evaluation",
                 "## Intended use", "Not for clinical use", "## Limits", "t1n → t2w"):
        assert part in card, part
    assert re.search(r"\| foreground \| [\d.,]+ \| [\d.]+ \| 0\.\d+ \|", card)
    assert "Model card" in (report["nie-fcn"] / "MODEL_CARD.md").read_text()


def test_two_methods_give_a_comparison_table_with_paired_tests(report):
    text = report["html"].read_text()
    assert "Comparison: mean ± std over subjects; best per column in bold" in text
    assert "Paired tests: Wilcoxon signed-rank" in text
    comp = text[text.index("Comparison: mean ± std"):text.index("Paired tests")]
    rows = re.findall(r"<tr>(.*?)</tr>", comp[comp.index("<tbody>"):])
    assert len(rows) == 2 and "nie-full" in rows[0] and "nie-fcn" in rows[1]
    assert comp.count("<strong>") == 9  # 3 regions × (MAE, PSNR, SSIM): one best each
    # one subject in common: the test is run and its limit stated
    assert "smallest possible p at n = 1" in text and "cannot give p &lt; 0.05" in text


def test_report_from_given_predictions_and_reference(report, tmp_path):
    pred = report["html"].parent / "report_files" / "predictions" / "nie-full"
    out = tmp_path / "given"
    assert main(["report", str(report["nie-full"]), "--pred", str(pred), "--ref", "sample", "--out", str(out)]) == 0
    text = (out / "report.html").read_text()
    assert f"predictions read from <code>{pred}</code>" in text
    a = re.search(r"MAE ↓ foreground.*?<td>([\d.,]+)</td>", report["html"].read_text(), re.S)
    assert a and a.group(1) in text  # the same numbers as when the report predicted itself
    assert not (out / "report_files" / "predictions").exists()


def test_report_degrades_with_a_note_where_a_run_lacks_something(report, tmp_path):
    # no test and no validation subjects
    bare = tmp_path / "no-test"
    shutil.copytree(report["nie-full"], bare, ignore=shutil.ignore_patterns("MODEL_CARD.md"))
    (bare / "splits.json").write_text(json.dumps({"train": [TRAIN], "val": [], "test": []}))
    # a method this medsyn does not know (e.g. a colleague's run), no metrics log, no samples
    alien = tmp_path / "alien"
    shutil.copytree(report["nie-fcn"], alien)
    cfg = yaml.safe_load((alien / "config.yaml").read_text())
    cfg["method"] = "someone-elses-gan"
    (alien / "config.yaml").write_text(yaml.safe_dump(cfg))
    (alien / "metrics.jsonl").unlink()
    shutil.rmtree(alien / "samples", ignore_errors=True)
    out = tmp_path / "r"
    assert main(["report", str(bare), str(alien), "--out", str(out)]) == 0
    text = (out / "report.html").read_text()
    assert "no test or validation subjects" in text
    assert "cannot rebuild the run&#x27;s method" in text or "cannot rebuild the run's method" in text
    assert "No logged scalars" in text
    assert "Fewer than two runs were evaluated" in text
    assert (bare / "MODEL_CARD.md").is_file() and (alien / "MODEL_CARD.md").is_file()


def test_report_user_errors_exit_2(report, tmp_path):
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r")]) == 2  # not a run folder
    assert main(["report", str(report["nie-full"]), str(report["nie-fcn"]), "--pred", str(tmp_path),
                 "--out", str(tmp_path / "r")]) == 2  # one --pred for two runs
    assert main(["report", str(report["nie-full"]), "--subjects", "nobody", "--out", str(tmp_path / "r")]) == 2
    assert not (tmp_path / "r").exists()  # refused before anything was made


def test_bench_says_which_side_is_the_bottleneck(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "configs/nie2018_brats_t1_t2.yaml", "--set", "params.base_filters=4", "--set", "params.depth=2",
                 "--set", "data.patch_size=[32,32]", "--set", "train.batch_size=2", "--device", "cpu", "--steps", "1",
                 "--batches", "3", "--no-inference", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["bottleneck"] in ("data", "model")
    assert res["data"]["samples_per_s"] > 0 and res["model"]["samples_per_s"] > 0
    assert res["model"]["samples_per_step"] == 4  # Nie et al.: one batch for the Ds, another for G (Sec. 2.3)
    assert res["machine"]["cpu_count"] >= 1
    assert "is the bottleneck" in capsys.readouterr().out


# ------------------------------------------------------------------------------------ units


def _results(values: dict[str, dict[str, float]], metrics=("mae", "psnr")) -> dict:
    """evaluate_predictions-shaped results from {subject: {metric: value}} (foreground only)."""
    from medsyn.metrics import summarize

    subjects = {s: {"foreground": dict(v)} for s, v in values.items()}
    return {"subjects": subjects, "summary": summarize(subjects), "settings": {"metrics": list(metrics)}}


def test_paired_wilcoxon_matches_scipy_and_bolds_the_best_in_each_direction():
    rng = np.random.default_rng(0)
    ids = [f"s{i}" for i in range(8)]
    good = {s: {"mae": 10 + rng.normal(), "psnr": 30 + rng.normal()} for s in ids}
    bad = {s: {"mae": good[s]["mae"] + 3 + 0.1 * i, "psnr": good[s]["psnr"] - 2 - 0.1 * i} for i, s in enumerate(ids)}
    table, tests = tables.comparison([("bad", "m1", _results(bad)), ("good", "m2", _results(good))])
    assert table.bold == {(1, 2), (1, 3)}  # lower MAE and higher PSNR, both from "good"
    assert all("†" in c for c in table.rows[0][2:])  # 8 subjects, all worse: p = 2/2^8 < 0.05
    mae_test = next(t for t in tests if t.metric == "mae")
    expected = wilcoxon([bad[s]["mae"] for s in ids], [good[s]["mae"] for s in ids]).pvalue
    assert mae_test.best == "good" and mae_test.other == "bad" and mae_test.n == 8
    assert mae_test.p == pytest.approx(expected) and mae_test.p == pytest.approx(2 / 2**8)
    assert mae_test.median_diff == pytest.approx(np.median([bad[s]["mae"] - good[s]["mae"] for s in ids]))


def test_paired_test_uses_common_finite_subjects_only():
    n, med, p, note = tables.paired_wilcoxon({"a": 1.0, "b": 2.0, "c": 3.0}, {"b": 2.0, "c": 3.0, "d": 9.0})
    assert (n, med, p) == (2, 0.0, 1.0) and note == "identical values"
    assert tables.paired_wilcoxon({"a": 1.0}, {"b": 1.0})[0] == 0
    res = _results({"a": {"mae": 1.0, "psnr": float("inf")}, "b": {"mae": 2.0, "psnr": 20.0}})
    assert tables._finite_values(res, "foreground", "psnr") == {"b": 20.0}
    assert "(+1 ∞)" in tables.summary_table(res).rows[0][3]


def test_signed_distance_and_error_vs_distance_bins():
    tum = np.zeros((20, 20, 20), bool)
    tum[8:12, 8:12, 8:12] = True
    d = signed_distance_mm(tum, (2.0, 2.0, 2.0))
    assert d[9, 9, 9] == -4.0 and d[8, 9, 9] == -2.0 and d[7, 9, 9] == 2.0 and d[5, 9, 9] == 6.0
    ref = np.full(tum.shape, 100.0)
    pred = ref + np.where(tum, 50.0, 10.0)  # error 50 inside the tumour, 10 outside
    fg = np.ones(tum.shape, bool)
    sv = SubjectVolumes("s", "t1n", ref, pred, ref, fg, (2.0, 2.0, 2.0), label=tum.astype(np.int32))
    ea = ErrorAnalysis()
    ea.add(sv)
    rows = ea.distance_table()
    assert len(rows) == len(DISTANCE_EDGES_MM) - 1
    inside = [r for r in rows if r["hi"] <= 0 and r["voxels"]]
    outside = [r for r in rows if r["lo"] >= 0 and r["voxels"]]
    assert inside and all(r["mae"] == 50.0 for r in inside)
    assert outside and all(r["mae"] == 10.0 for r in outside)
    assert sum(r["voxels"] for r in rows) == fg.sum()


def test_error_per_intensity_bin_and_worst_slices():
    rng = np.random.default_rng(1)
    ref = rng.uniform(0, 1000, (16, 16, 12))
    pred = ref * 1.1  # bias = 0.1 × intensity
    pred[:, :, 5] += 500  # one bad axial slice
    sv = SubjectVolumes("s", "t1n", ref, pred, ref, np.ones(ref.shape, bool), (1.0, 1.0, 1.0))
    ea = ErrorAnalysis()
    ea.add(sv)
    rows = ea.intensity_table()
    assert len(rows) == 20 and sum(r["voxels"] for r in rows) == ref.size
    for r in rows[1:-1]:  # bias = 0.1 × intensity, plus the bad slice's 500 on ~1/12 of each bin's voxels
        centre = (r["lo"] + r["hi"]) / 2
        assert r["bias"] == pytest.approx(0.1 * centre + 500 / 12, abs=40)
        assert r["mae"] == pytest.approx(r["bias"])  # every error is positive
    worst = ea.worst_slices(3)
    assert worst[0]["index"] == 5 and worst[0]["subject"] == "s"


def test_rendering_escapes_text_and_keeps_html_and_markdown_in_step(tmp_path):
    png = tmp_path / "f.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n")
    doc = Document("t <b>", "sub", [Section("A|B", [Text("x <script>alert(1)</script> `code`"),
                                                    Table(["name", "v"], [["a|b", "1.5"]], bold={(0, 1)}),
                                                    Figure(png, "cap")])])
    h = to_html(doc)
    assert "<script>" not in h and "&lt;script&gt;" in h and "<code>code</code>" in h
    assert "<td><strong>1.5</strong></td>" in h and 'src="data:image/png;base64,' in h
    md = to_markdown(doc, tmp_path)
    assert "| a\\|b | **1.5** |" in md and "![cap](f.png)" in md
