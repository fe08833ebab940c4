"""``medsyn report``: one self-contained HTML page (and its Markdown twin) for one or more runs.

::

    medsyn report RUN_DIR [RUN_DIR ...] [--pred DIR ... --ref DATASET] [--subjects A,B] --out FOLDER

writes into FOLDER ``report.html`` (CSS inline, every image a data URI: the file alone is the report),
``report.md`` (the same content; figures linked), ``report_files/*.png`` (every figure) and
``report_files/predictions/<run>/`` (the volumes the report predicted), and ``MODEL_CARD.md`` into
each run folder.

Per run: overview and provenance, the resolved config, data and splits, training curves (every
logged scalar), the newest training sample grid, metric tables (summary mean ± std, per subject,
per region, with data range and mask), image grids per view for chosen subjects, error analysis
(error vs distance to the tumour, error per intensity bin, worst slices) and the model card. For
several runs: a comparison table (best in bold) with Wilcoxon signed-rank tests over subjects.

Where the predictions come from: ``--pred DIR`` (one per run, what ``medsyn predict`` wrote)
evaluated against ``--ref DATASET``; otherwise the report predicts the run's test subjects
(``splits.json`` "test", else "val"; or ``--subjects``) with the run's best checkpoint. A section
a run cannot fill (no test subject, no label, no confidence map, a method that does not predict
volumes) is replaced by a note saying why.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

from medsyn import __version__
from medsyn.config import readable_dict
from medsyn.data.dataset import split_notes
from medsyn.errors import ConfigError, DatasetError, MedsynError
from medsyn.io.image import atomic_write_bytes, make_output_dir
from medsyn.reports import figures, tables
from medsyn.reports.analysis import ErrorAnalysis, display_index, load_subject_volumes
from medsyn.reports.document import Code, Details, Document, Figure, Note, Section, Table, Text, slug, to_html, to_markdown
from medsyn.reports.model_card import model_card, write_model_card
from medsyn.reports.runs import RunInfo, load_run_info, unique_labels
from medsyn.training.crossval import first_fold_run, is_crossval_dir

#: subjects shown as image grids when the report chooses (best, median and worst by foreground MAE)
MAX_GRID_SUBJECTS = 3
WORST_SLICES = 10
#: a view is drawn only when its plane is at least this many voxels along both axes
MIN_VIEW_SIDE = 4
PRED_MARKER = ".medsyn-report-predictions"

Log = Callable[[str], None]


@dataclass
class RunEvaluation:
    """Where a run's predictions are and what evaluate_predictions said about them."""

    results: dict[str, Any] | None = None
    pred_dir: Path | None = None
    dataset: Any = None  # medsyn.data.dataset.Dataset of the references
    split: str = ""
    notes: list[str] = field(default_factory=list)
    predicted_here: bool = False
    seconds: float = 0.0


def units_of(modality: str | None, norm_kind: str | None = None) -> str:
    if modality and modality.lower() == "ct":
        return "HU"
    if norm_kind == "window":
        return "native units"
    return "MR intensity, a.u."


def _target_norm(info: RunInfo) -> dict[str, Any]:
    return (info.normalization or {}).get("target") or {}


def _data_range(info: RunInfo) -> str | float:
    """A fixed-window target (CT) has a fixed range (high − low); MR: per subject from the reference."""
    t = _target_norm(info)
    if t.get("kind") == "window" and "low" in t and "high" in t:
        return float(t["high"]) - float(t["low"])
    return "ref"


# -------------------------------------------------------------------------------- evaluation


def evaluate_run(info: RunInfo, pred_root: Path, *, pred_dir: Path | None, ref: str | Path | None,
                 subjects: list[str] | None, device: str, log: Log) -> RunEvaluation:
    """Predict (unless ``pred_dir``) and evaluate; a missing piece becomes a note, not an error."""
    from medsyn.data.dataset import discover
    from medsyn.metrics.evaluate import evaluate_predictions

    ev = RunEvaluation()
    if not info.predicts_volumes:
        why = ("this medsyn does not know the method" if info.spec is None
               else f"method {info.method!r} does not translate source volumes into a target volume")
        ev.notes.append(f"No prediction, metrics, image grids or error analysis: {why}.")
        return ev
    target = info.target
    manifest = None if ref is not None else info.data.get("manifest")
    ref_root = ref if ref is not None else info.data.get("root", "sample")
    try:
        ev.dataset = discover(ref_root, manifest)
    except DatasetError as e:
        if ref is not None:
            raise
        ev.notes.append(f"The run's dataset cannot be read ({e}); pass --ref DATASET.")
        return ev
    t0 = time.perf_counter()
    if pred_dir is not None:
        ev.pred_dir, ev.split = Path(pred_dir), "--pred"
    else:
        if subjects:
            ids, ev.split = list(subjects), "--subjects"
            unknown = [s for s in ids if s not in ev.dataset.subjects]
            if unknown:
                raise DatasetError(f"--subjects: {unknown[0]!r} is not in the dataset {ev.dataset.root} "
                                   f"(has: {', '.join(ev.dataset.ids()[:10])})")
        else:
            ids, ev.split = info.eval_subjects()
            if not ids:
                ev.notes.append("The run has no test or validation subjects (splits.json), so nothing was predicted; "
                                "pass --subjects A,B (or --pred DIR --ref DATASET) to evaluate other subjects.")
                return ev
            missing = [s for s in ids if s not in ev.dataset.subjects]
            if missing:
                ev.notes.append(f"{len(missing)} {ev.split} subject(s) are not in {ev.dataset.root} any more "
                                f"({', '.join(missing[:5])}); they are left out.")
                ids = [s for s in ids if s in ev.dataset.subjects]
        no_target = [s for s in ids if target not in ev.dataset.subjects[s].files]
        if no_target:
            ev.notes.append(f"{len(no_target)} subject(s) have no reference {target} and are not evaluated "
                            f"({', '.join(no_target[:5])}).")
            ids = [s for s in ids if s not in no_target]
        if not ids:
            ev.notes.append("No subject with a reference to evaluate.")
            return ev
        out = pred_root / slug(info.label)
        if out.exists() and (out / PRED_MARKER).is_file():
            shutil.rmtree(out)  # our own earlier predictions: stale subjects must not be evaluated
        make_output_dir(out)
        (out / PRED_MARKER).write_text("predictions written by medsyn report; the folder is replaced on the next report\n")
        try:
            from medsyn.inference.predict import load_run, predict_subjects

            if device == "auto":  # this machine's best, whatever device the run was trained on
                import torch

                device = "cuda" if torch.cuda.is_available() else "cpu"
            log(f"{info.label}: predicting {len(ids)} {ev.split} subject(s) with {info.method} on {device}")
            run = load_run(info.path, "best", device)
            predict_subjects(run, [ev.dataset.subjects[s] for s in ids], out, force=True, write_confidence=True)
        except MedsynError as e:
            ev.notes.append(f"Prediction failed: {e}")
            return ev
        ev.pred_dir, ev.predicted_here = out, True
    log(f"{info.label}: evaluating {ev.pred_dir}")
    ev.results = evaluate_predictions(ev.pred_dir, ev.dataset.root, target, data_range=_data_range(info),
                                      manifest=manifest, label="auto")
    ev.seconds = time.perf_counter() - t0
    return ev


def crossval_evaluation(cv_dir: Path, info: RunInfo, ref: str | Path | None) -> RunEvaluation:
    """A cross-validation folder's metrics table (``metrics.json``, every subject scored on the
    prediction of the fold that held it out) as a report evaluation."""
    from medsyn.data.dataset import discover
    from medsyn.metrics.evaluate import read_results
    from medsyn.training.crossval import METRICS, PRED

    ev = RunEvaluation(pred_dir=cv_dir / PRED, split="cross-validation")
    path = cv_dir / METRICS
    if not path.is_file():
        ev.notes.append(f"{path} is missing: the cross-validation has not finished; run `medsyn crossval` again.")
        return ev
    ev.results = read_results(path)
    cv = ev.results["settings"].get("crossval", {})
    ev.dataset = discover(ref if ref is not None else ev.results["settings"]["reference"])
    ev.notes.append(f"Cross-validation ({cv.get('scheme')}, {cv.get('folds')} folds of {cv.get('method')}): every "
                    "subject is predicted by the run that did not train on it; the metrics are read from "
                    f"`{path}`. Configuration and training curves shown are fold_00's.")
    return ev


# ---------------------------------------------------------------------------------- sections


def _overview(info: RunInfo, ev: RunEvaluation) -> list:
    spec = info.spec
    prov = info.provenance or {}
    steps = info.last_step()
    secs = info.train_seconds()
    rows = [
        ("method", f"`{info.method}`" + (f": {spec.summary}" if spec is not None else "")),
        ("paper", getattr(spec, "paper", None) or "–"),
        ("run folder", f"`{info.path}`"),
        ("task", f"{', '.join(info.sources) or '?'} → {info.target or '?'}"),
        ("steps logged", f"{steps}" + (f" ({secs / 60:.1f} min)" if secs else "") if steps is not None else "–"),
        ("weights used", _best_text(info)),
        ("medsyn", f"{prov.get('medsyn_version', '?')} (commit {(prov.get('git_commit') or 'unknown')[:12]})"),
        ("packages", ", ".join(f"{k} {v}" for k, v in (prov.get("packages") or {}).items()) or "–"),
        ("platform", f"{prov.get('platform', '?')}, Python {prov.get('python', '?')}"),
        ("config / data hash", f"{prov.get('config_hash', '?')} / {prov.get('data_manifest_hash', '?')}"),
    ]
    blocks: list = [tables.kv_table(rows)]
    blocks += [Note(n) for n in info.notes]
    return blocks


def _best_text(info: RunInfo) -> str:
    b = info.best or {}
    if not b:
        return "the newest checkpoint (no best.json)"
    if b.get("metric"):
        return f"{b.get('checkpoint')} (best validation {b['metric']} = {tables.fmt(b.get('value'))} at step {b.get('step')})"
    return f"{b.get('checkpoint')} (no validation: the last checkpoint)"


def _data_section(info: RunInfo) -> list:
    d = info.data
    rows = [
        ("dataset", f"`{d.get('root', '?')}`" + (f", manifest `{d['manifest']}`" if d.get("manifest") else "")),
        ("source → target", f"{', '.join(info.sources)} → {info.target}"),
        ("mask / label", f"{d.get('mask') or 'brainmask/bodymask if present, else computed'} / {d.get('label') or 'none'}"),
        ("sampling", f"{d.get('slice_axis', '?')} slices, {d.get('context_slices', '?')} context slices, patches "
                     f"{d.get('patch_size', '?')}, {d.get('patches_per_subject', '?')} per subject per epoch, "
                     f"foreground fraction {d.get('foreground_fraction', '?')}, augment {d.get('augment', '?')}"),
    ]
    norm = info.normalization or {}
    for m, recipe in (norm.get("sources") or {}).items():
        rows.append((f"normalisation {m}", _recipe(recipe) + " (fitted per image)"))
    t = norm.get("target")
    if t:
        rows.append((f"normalisation {norm.get('target_name', info.target)}", _recipe(t) + " (fitted on the training targets)"))
        rows.append(("target background / dtype", f"{tables.fmt(norm.get('target_background'))} / {norm.get('target_dtype', '?')}"))
    blocks: list = [tables.kv_table(rows, "Data")]
    if info.splits:
        srows = [[k, str(len(v)), ", ".join(v[:12]) + (f", … ({len(v) - 12} more)" if len(v) > 12 else "")]
                 for k, v in info.splits.items()]
        blocks.append(Table(["split", "subjects", "ids"], srows, caption="Splits (subject-level)"))
        for note in split_notes(info.splits):  # the same words as at the start of training
            blocks.append(Note(f"Splits: {note}."))
    else:
        blocks.append(Note("No splits.json: the split is unknown."))
    return blocks


def _recipe(r: dict[str, Any]) -> str:
    kind = r.get("kind", "?")
    if kind == "window":
        return f"window [{tables.fmt(r.get('low'))}, {tables.fmt(r.get('high'))}] → [−1, 1]"
    if kind == "percentile":
        return (f"percentiles {r.get('lower', '?')}–{r.get('upper', '?')} → [−1, 1]"
                + (f" (scale {tables.fmt(r.get('lo'))} – {tables.fmt(r.get('hi'))})" if not r.get("per_image", True) else ""))
    return ", ".join(f"{k} {v}" for k, v in r.items())


def _curves(info: RunInfo, files: Path, prefix: str) -> list:
    keys = info.curve_keys()
    if not keys:
        return [Note("No logged scalars (metrics.jsonl is missing or empty).")]
    path = figures.training_curves(info.records, keys, files / f"{prefix}-curves.png")
    n_val = sum(1 for r in info.records if any(k.startswith("val/") for k in r))
    blocks: list = [Figure(path, f"Every logged scalar against the generator step ({len(keys)} series: losses, learning "
                                 f"rates and {n_val} validation record(s)); losses are the mean over each logging interval.")]
    if not any(k.startswith("val/") for k in keys):
        blocks.append(Note("No validation metrics were logged (the run had no validation subjects or validation was off)."))
    samples = sorted((info.path / "samples").glob("*.png"))
    if samples:
        dst = files / f"{prefix}-train-sample.png"
        shutil.copyfile(samples[-1], dst)
        blocks.append(Figure(dst, f"Newest training sample grid `{samples[-1].name}` (network range, patches): "
                                  "source | prediction | target | |error| | confidence."))
    return blocks


def _metrics(ev: RunEvaluation) -> list:
    res = ev.results
    how = ("predicted by this report with the run's weights" if ev.predicted_here else f"read from `{ev.pred_dir}`")
    blocks: list = [Text(f"{len(res['subjects'])} subject(s) ({ev.split}); predictions {how}."),
                    tables.kv_table(tables.settings_rows(res), "Evaluation settings"),
                    tables.summary_table(res), tables.subject_table(res, "foreground")]
    blocks.append(Details("Every subject and region", [tables.subject_region_table(res)]))
    return blocks


def _choose_grid_subjects(res: dict[str, Any], asked: list[str] | None) -> tuple[list[str], str]:
    ids = list(res["subjects"])
    if asked:
        return [s for s in asked if s in res["subjects"]], "as asked with --subjects"
    if len(ids) <= MAX_GRID_SUBJECTS:
        return ids, "every evaluated subject"
    mae = {s: res["subjects"][s].get("foreground", {}).get("mae", np.nan) for s in ids}
    order = sorted((s for s in ids if mae[s] == mae[s]), key=lambda s: mae[s])
    if not order:
        return ids[:MAX_GRID_SUBJECTS], "the first subjects"
    picks = list(dict.fromkeys([order[0], order[len(order) // 2], order[-1]]))
    return picks, "best, median and worst subject by foreground MAE"


def _images_and_analysis(info: RunInfo, ev: RunEvaluation, files: Path, prefix: str,
                         asked: list[str] | None, log: Log) -> tuple[list, list]:
    res = ev.results
    target = info.target
    units = units_of(target, _target_norm(info).get("kind"))
    src_name = info.sources[0] if info.sources else None
    src_units = units_of(src_name) if src_name else "?"
    grid_ids, why = _choose_grid_subjects(res, asked)
    image_blocks: list = [Text(f"Subjects shown: {', '.join(grid_ids) or 'none'} ({why}). Columns: source | synthesis | "
                               f"reference | absolute error ({units}) | the method's confidence map where it has one; "
                               "tumour (label > 0) outlined (red; cyan on the error map) where a label exists. Axial and coronal views: "
                               "patient's right on the right; sagittal: anterior on the right.")]
    analysis = ErrorAnalysis()
    had_conf = False
    log(f"{info.label}: figures and error analysis for {len(res['subjects'])} subject(s)")
    for sid in res["subjects"]:
        subj = ev.dataset.subjects.get(sid)
        sv = load_subject_volumes(ev.pred_dir, subj, target, src_name) if subj is not None else None
        if sv is None:
            image_blocks.append(Note(f"{sid}: prediction or reference could not be read on one grid; left out of the figures."))
            continue
        analysis.add(sv)
        if sid not in grid_ids:
            continue
        had_conf |= sv.confidence is not None
        sub: list = []
        for view, axis in figures.VIEWS.items():
            plane = [n for a, n in enumerate(sv.ref.shape) if a != axis]
            if min(plane) < MIN_VIEW_SIDE:  # e.g. 2D slices stored as (X, Y, 1): only the axial view is an image
                sub.append(Note(f"{sid}: no {view} view (the image is {sv.ref.shape[0]}×{sv.ref.shape[1]}×{sv.ref.shape[2]})."))
                continue
            idx, reason = display_index(sv, axis)
            path = figures.view_grid(sv, view, idx, files / f"{prefix}-{slug(sid)}-{view}.png", target=target,
                                     units=units, source_units=src_units)
            sub.append(Figure(path, f"{sid}, {view} slice {idx} ({reason})."))
        if sv.label is None:
            sub.append(Note(f"{sid} has no label map: no tumour outline, tumour regions or distance analysis."))
        image_blocks.append(Section(f"Subject {sid}", sub, level=4))
    if not had_conf and grid_ids:
        image_blocks.append(Note(f"No confidence/difficulty map: method {info.method!r} does not provide one."))

    ablocks: list = []
    if analysis.n_with_tumour:
        p = figures.error_vs_distance(analysis.distance_table(), files / f"{prefix}-error-distance.png", units=units,
                                      n_subjects=analysis.n_with_tumour)
        ablocks.append(Figure(p, "Mean absolute error vs signed distance to the tumour surface (negative: inside the "
                                 "tumour; voxels of the foreground and the tumour; open-ended end bins), pooled over "
                                 "subjects; grey bars: voxel counts."))
    else:
        ablocks.append(Note("No evaluated subject has a tumour label: the error-vs-distance analysis is skipped."))
    irows = analysis.intensity_table()
    if irows:
        p = figures.error_vs_intensity(irows, files / f"{prefix}-error-intensity.png", units=units, target=target,
                                       n_subjects=analysis.n_subjects)
        ablocks.append(Figure(p, "Error per bin of the reference intensity (foreground voxels, up to 200,000 sampled per "
                                 "subject, 20 equal bins between the pooled 0.5th and 99.5th percentiles): mean |error| "
                                 "and mean signed error (bias); grey bars: voxel counts."))
    worst = analysis.worst_slices(WORST_SLICES)
    if worst:
        rows = [[w["subject"], str(w["index"]), tables.fmt(w["mae"]), str(w["foreground_voxels"]), str(w["tumour_voxels"])]
                for w in worst]
        ablocks.append(Table(["subject", "axial slice", f"MAE ({units})", "foreground voxels", "tumour voxels"], rows,
                             caption=f"The {len(worst)} worst axial slices by foreground MAE",
                             footnote="Slices whose foreground is under 10 % of the subject's largest slice are not ranked."))
    return image_blocks, ablocks


def _run_section(i: int, info: RunInfo, ev: RunEvaluation, files: Path, asked: list[str] | None, log: Log) -> Section:
    prefix = f"{i + 1:02d}-{slug(info.label)}"
    subs = [Section("Overview", _overview(info, ev), level=3)]
    shown = readable_dict(info.cfg) if info.cfg is not None else info.config  # an older config.yaml: no CT window in an MR recipe
    subs.append(Section("Configuration", [Text("The resolved configuration (`config.yaml`: every default written out; a "
                                                "normalisation lists the fields its kind reads)."),
                                           Details("config.yaml", [Code(yaml.safe_dump(shown, sort_keys=False), "yaml")])],
                        level=3))
    subs.append(Section("Data and splits", _data_section(info), level=3))
    subs.append(Section("Training curves", _curves(info, files, prefix), level=3))
    if ev.results is not None:
        subs.append(Section("Metrics", [Note(n) for n in ev.notes] + _metrics(ev), level=3))
        images, analysis = _images_and_analysis(info, ev, files, prefix, asked, log)
        subs.append(Section("Images", images, level=3))
        subs.append(Section("Error analysis", analysis, level=3))
    else:
        subs.append(Section("Metrics, images and error analysis", [Note(n) for n in ev.notes]
                            or [Note("Not evaluated.")], level=3))
    card = write_model_card(info, ev.results, eval_split=ev.split)
    subs.append(Section("Model card", [Text(f"Written to `{card}`."),
                                       Details("MODEL_CARD.md", [Code(model_card(info, ev.results, eval_split=ev.split), "markdown")])],
                        level=3))
    return Section(f"Run {info.label}", subs, level=2)


def _runs_overview(infos: list[RunInfo], evs: list[RunEvaluation]) -> Section:
    rows = []
    for info, ev in zip(infos, evs):
        fg = (ev.results or {}).get("summary", {}).get("foreground", {})
        rows.append([info.label, info.method, f"{', '.join(info.sources)} → {info.target}", str(info.last_step() or "–"),
                     str(len(ev.results["subjects"])) + f" ({ev.split})" if ev.results else "–",
                     *[tables.mean_std(fg.get(m)) for m in ("mae", "psnr", "ssim")]])
    cols = ["run", "method", "task", "steps", "evaluated subjects", *[f"{tables.metric_title(m)} foreground" for m in ("mae", "psnr", "ssim")]]
    return Section("Runs", [Table(cols, rows, caption="The runs in this report (foreground: mean ± std over subjects)")])


def _comparison(infos: list[RunInfo], evs: list[RunEvaluation]) -> Section | None:
    if len(infos) < 2:
        return None
    done = [(i, e) for i, e in zip(infos, evs) if e.results is not None]
    blocks: list = []
    if len(done) < 2:
        return Section("Comparison", [Note("Fewer than two runs were evaluated: no comparison table.")])
    targets = {i.target for i, _ in done}
    if len(targets) > 1:
        return Section("Comparison", [Note(f"The runs synthesise different targets ({', '.join(sorted(map(str, targets)))}); "
                                           "their metrics are not comparable, so no comparison table is made.")])
    subject_sets = {frozenset(e.results["subjects"]) for _, e in done}
    if len(subject_sets) > 1:
        blocks.append(Note("The runs were evaluated on different subjects: means are over each run's own subjects, "
                           "paired tests over the subjects both runs have."))
    ranges = {str(e.results["settings"].get("data_range")) for _, e in done}
    if len(ranges) > 1:
        blocks.append(Note("The runs use different data-range conventions; PSNR/SSIM are not directly comparable."))
    runs = [(i.label, i.method, e.results) for i, e in done]
    table, tests = tables.comparison(runs, main_only=True)
    full, _ = tables.comparison(runs, main_only=False)
    full.caption = "Every shared region and metric: mean ± std over subjects; best per column in bold"
    blocks += [table, tables.tests_table(tests)]
    n_common = len(frozenset.intersection(*subject_sets))
    if n_common < 6:
        blocks.append(Note(f"Only {n_common} subject(s) are shared: with n < 6 the two-sided Wilcoxon signed-rank test "
                           "cannot give p < 0.05, whatever the differences. Evaluate on more subjects to test."))
    blocks.append(Details("All regions and metrics", [full]))
    return Section("Comparison", blocks)


# -------------------------------------------------------------------------------------- main


def _readable(path: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(path, 0o666 & ~umask)
    except OSError:
        pass


def write_report(run_dirs: list[Path], out: Path, *, pred_dirs: list[Path] | None = None, ref: str | Path | None = None,
                 subjects: list[str] | None = None, device: str = "auto", log: Log | None = None,
                 study: Path | None = None) -> Path:
    """Write ``out`` (HTML), ``out.md``, ``<stem>_files/`` and each run's ``MODEL_CARD.md``; return ``out``.

    pred_dirs: none, or one prediction folder per run (``<subject>/<target>.nii.gz``); ref: the
    reference dataset (default: each run's ``data.root``); subjects: the subjects to predict and
    show (default: the run's test split, else its validation split); study: a reader-study folder
    whose Table III becomes a section.
    """
    log = log or (lambda msg: None)
    run_dirs = [Path(p) for p in run_dirs]
    if not run_dirs:
        raise ConfigError("medsyn report: give at least one run folder")
    pred_dirs = [Path(p) for p in (pred_dirs or [])]
    if pred_dirs and len(pred_dirs) != len(run_dirs):
        raise ConfigError(f"--pred: got {len(pred_dirs)} prediction folder(s) for {len(run_dirs)} run(s); "
                          "give one --pred per run, in the same order, or none")
    for p in pred_dirs:
        if not p.is_dir():
            raise DatasetError(f"{p}: prediction folder not found (--pred)")
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"--out {out}: is a folder; give a file name such as {out / 'report.html'}")
    labels = unique_labels(run_dirs)
    # a cross-validation folder (medsyn crossval) stands for its folds: fold 0's config and curves,
    # the metrics table of all folds (metrics.json) and the pooled predictions
    crossval = {i: p for i, p in enumerate(run_dirs) if is_crossval_dir(p)}
    infos = [load_run_info(first_fold_run(p) if i in crossval else p, lab)
             for i, (p, lab) in enumerate(zip(run_dirs, labels))]
    made = [p for p in (out.parent / f"{out.stem}_files", out.parent) if not p.exists()]
    try:
        return _write_report(run_dirs, out, infos, labels, crossval, pred_dirs, ref, subjects, device, log, study)
    except BaseException:  # refused or interrupted: leave no half-made report folder behind
        for p in made:
            if p == out.parent:
                _rmdir_quietly(p)
            else:
                shutil.rmtree(p, ignore_errors=True)
        raise


def _rmdir_quietly(path: Path) -> None:
    try:
        path.rmdir()  # only when empty
    except OSError:
        pass


def _write_report(run_dirs: list[Path], out: Path, infos: list, labels: list[str], crossval: dict, pred_dirs: list[Path],
                  ref: str | Path | None, subjects: list[str] | None, device: str, log: Log, study: Path | None) -> Path:
    files = make_output_dir(out.parent / f"{out.stem}_files")
    for old in files.glob("*.png"):  # figures of an earlier report with the same name
        old.unlink()
    t0 = time.perf_counter()
    evs = [crossval_evaluation(crossval[i], info, ref) if i in crossval else
           evaluate_run(info, files / "predictions", pred_dir=pred_dirs[i] if pred_dirs else None, ref=ref,
                        subjects=subjects, device=device, log=log) for i, info in enumerate(infos)]
    sections = [_runs_overview(infos, evs)]
    comp = _comparison(infos, evs)
    if comp is not None:
        sections.append(comp)
    if study is not None:  # a reader study (medsyn reader-study): its Table III after the comparison
        from medsyn.study.analyse import analyse_study, report_section

        sections.append(report_section(analyse_study(study)))
    sections += [_run_section(i, info, ev, files, subjects, log) for i, (info, ev) in enumerate(zip(infos, evs))]
    title = f"medsyn report: {infos[0].label}" if len(infos) == 1 else f"medsyn report: {len(infos)} runs"
    subtitle = (f"Generated {time.strftime('%Y-%m-%d %H:%M')} by medsyn {__version__} in {time.perf_counter() - t0:.0f} s "
                f"from {', '.join(f'`{i.path}`' for i in infos)}.")
    doc = Document(title, subtitle, sections)
    atomic_write_bytes(out, to_html(doc).encode("utf-8"))
    md = out.with_suffix(".md") if out.suffix.lower() != ".md" else out.with_name(out.stem + ".report.md")
    atomic_write_bytes(md, to_markdown(doc, out.parent).encode("utf-8"))
    for p in [out, md, *files.glob("*.png")]:  # a report is for reading: the usual file mode, not the temp file's 0600
        _readable(p)
    log(f"wrote {out}, {md} and {files}/")
    return out


__all__ = ["write_report", "evaluate_run", "RunEvaluation"]
