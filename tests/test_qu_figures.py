"""Qu et al.'s figures (Figs. 7–10): the example predictions segment-experiment keeps and
``medsyn qu figure`` drawing them and a synthetic set, on a tiny phantom run."""

from __future__ import annotations

import numpy as np
import pytest

from medsyn.cli.main import main
from medsyn.errors import ConfigError, OutputError
from test_qu_pipeline import _slice_cache, make_qu_dataset, tiny_cfg  # noqa: F401 (autouse fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    from medsyn.pipelines.qu import run_pipeline
    from medsyn.pipelines.qu_generate import generate
    from medsyn.pipelines.qu_segment import run_table1, run_table2

    root = tmp_path_factory.mktemp("qu-fig")
    data = make_qu_dataset(root / "data", subjects=("a", "b", "c"), labelled=("a", "b"))
    run = root / "run"
    run_pipeline(tiny_cfg(data, max_steps=1), run, progress=False)
    syn = root / "syn"
    generate(run, 8, None, syn, filter_mae=1.0, min_dice=0.0)
    t2 = run_table2(run, syn, root / "t2", experiments="1,2,15", steps=2, repeats=2, examples=99)
    t1 = run_table1(run, {"4SEG": syn}, root / "t1", steps=2, repeats=2, examples=2)
    return root, t1, t2


def test_examples_hold_the_segmenters_predictions_that_the_tables_score(tables):
    from medsyn.pipelines.qu_generate import lesion_dice

    root, t1, t2 = tables
    d = np.load(root / "t2" / "table2_examples.npz")
    n_test = t2["n_test"]
    # examples=99 > the test set: every test slice is kept, so the kept maps reproduce each row's Dice
    assert d["labels"].shape[0] == n_test == len(t2["examples"]["slices"])
    assert list(d["rows"]) == [1, 2, 15] and list(d["views"]) == ["t1n", "t2w"]  # per-modality segmenters
    assert d["predictions"].shape == (3, n_test, 2, *d["labels"].shape[1:]) and d["predictions"].dtype == np.uint8
    assert d["images"].shape == (n_test, 2, *d["labels"].shape[1:])
    for i, row in enumerate(t2["rows"]):  # the best repeat's maps (Sec. 3.1), as the table's Dice column
        dice = np.mean([[lesion_dice(d["predictions"][i, k, v], d["labels"][k]) for v in range(2)]
                        for k in range(n_test)])
        assert dice == pytest.approx(row["dice"], abs=1e-9)
    # Table 1: per test set its K slices with the largest lesions and the first segmenter's maps
    e = np.load(root / "t1" / "table1_examples.npz")
    assert list(e["sets"]) == ["real", "4SEG"] and t1["examples"]["sets"] == ["real", "4SEG"]
    for s in ("real", "4SEG"):
        lab = e[f"{s}/labels"]
        assert lab.shape[0] == 2 and e[f"{s}/predictions"].shape == (2, 2, *lab.shape[1:])
        assert all((lab[k] > 0).any() for k in range(2))
    assert all(o.startswith("synthetic:") for o in e["4SEG/origin"])


def test_qu_figure_draws_figs_7_to_10(tables, capsys):
    root, _, _ = tables
    for src, extra, name in ((root / "syn", ["--n", "3"], "fig7-8"), (root / "t1", [], "fig9"),
                             (root / "t2", ["--rows", "1,2", "--view", "t1n"], "fig10")):
        out = root / f"{name}.png"
        assert main(["qu", "figure", str(src), "--out", str(out), *extra]) == 0, capsys.readouterr().err
        assert out.read_bytes()[:8] == PNG
    # a folder without anything to draw, an unknown row or view: one line, exit 2
    assert main(["qu", "figure", str(root / "data"), "--out", str(root / "x.png")]) == 2
    assert "generate.json" in capsys.readouterr().err
    assert main(["qu", "figure", str(root / "t2"), "--out", str(root / "x.png"), "--rows", "7"]) == 2
    assert "--rows" in capsys.readouterr().err
    assert main(["qu", "figure", str(root / "t1"), "--out", str(root / "x.png"), "--view", "ct"]) == 2
    assert "--view" in capsys.readouterr().err
    assert not (root / "x.png").exists()


def test_examples_zero_writes_none_and_existing_examples_are_never_overwritten(tables):
    from medsyn.pipelines.qu_segment import run_table2

    root, _, _ = tables
    rec = run_table2(root / "run", root / "syn", root / "t2-none", experiments="1", steps=1, examples=0)
    assert "examples" not in rec and not (root / "t2-none" / "table2_examples.npz").exists()
    (root / "t2-old").mkdir()
    (root / "t2-old" / "table2_examples.npz").write_bytes(b"x")
    with pytest.raises(OutputError, match="table2_examples.npz"):
        run_table2(root / "run", root / "syn", root / "t2-old", experiments="1", steps=1)
    with pytest.raises(ConfigError, match="--examples"):
        run_table2(root / "run", root / "syn", root / "t2-neg", experiments="1", steps=1, examples=-1)
