"""Reports of runs: tables, figures and the HTML page of ``medsyn report``.

* :mod:`~medsyn.reports.html` — ``write_report``: the page, its Markdown twin and its PNGs;
* :mod:`~medsyn.reports.runs` — what a report reads from a run folder;
* :mod:`~medsyn.reports.tables` — metric tables, the cross-run comparison and its paired test;
* :mod:`~medsyn.reports.figures` — training curves, image grids, error-analysis plots;
* :mod:`~medsyn.reports.analysis` — error vs distance to the tumour, per intensity bin, worst slices;
* :mod:`~medsyn.reports.model_card` — ``MODEL_CARD.md`` in the run folder;
* :mod:`~medsyn.reports.document` — the block model rendered to HTML and Markdown;
* :mod:`~medsyn.reports.samples` — the PNG sample grids written during training.
"""
