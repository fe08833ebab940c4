"""``medsyn reader-study serve``: the reading web app (FastAPI, run by uvicorn).

Routes (TOKEN = a reader's personal token from readers.json; nothing is served without one):

    GET  /r/TOKEN                  the reading page (HTML; its script at /r/TOKEN/app.js)
    GET  /api/TOKEN/state          reader, progress, this reader's trial order, first unanswered position
    GET  /api/TOKEN/trial/POS      the POS-th trial of this reader: its images in this reader's order
    GET  /img/TOKEN/NAME.png       one image of the study (NAME: 32 hex digits of a study image)
    POST /api/TOKEN/answer         {"trial": i, "choice": NAME, "ratings": {NAME: 1..4, …}, "seconds": s}

Statuses: 403 for an unknown token (the same for every wrong token), 404 for an unknown trial or
image, 400 for a malformed answer (every image of the trial rated 1–4, the choice one of them),
409 for a trial answered already (a replay is never stored twice). Every page and answer is
served with ``Cache-Control: no-store`` and ``Referrer-Policy: no-referrer`` (the token is in the
URL). Trial order and image order are shuffled per reader (and per trial), deterministically
from the study's seed, so a reader who comes back sees the same order and resumes at the first
unanswered trial.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from medsyn.study import store
from medsyn.study.create import IMAGE_DIR, read_study

NAME_RE = re.compile(r"^[0-9a-f]{32}$")
HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff",
           "X-Frame-Options": "DENY"}


def _rng(seed: int, *keys: str | int) -> np.random.Generator:
    words = [int.from_bytes(hashlib.sha256(str(k).encode()).digest()[:8], "little") for k in keys]
    return np.random.default_rng(np.random.SeedSequence([seed & 0xFFFF_FFFF, *words]))


class Study:
    """A study folder as the server sees it: public trials, tokens, per-reader orders."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.public, self.tokens = read_study(self.folder)
        self.trials = {t["trial"]: t["images"] for t in self.public["trials"]}
        self.images = {name for imgs in self.trials.values() for name in imgs}
        self.seed = int(self.public["seed"])
        store.connect(self.folder).close()  # create the database (WAL) before the first reader

    def reader(self, token: str) -> str | None:
        """The reader whose token this is (constant-time comparison against every token)."""
        found = None
        for name, t in self.tokens.items():
            if hmac.compare_digest(t.encode(), token.encode()):
                found = name
        return found

    def order(self, reader: str) -> list[int]:
        return [int(i) for i in _rng(self.seed, "trials", reader).permutation(sorted(self.trials))]

    def images_for(self, reader: str, trial: int) -> list[str]:
        imgs = self.trials[trial]
        return [imgs[i] for i in _rng(self.seed, "images", reader, trial).permutation(len(imgs))]


def make_app(folder: str | Path) -> Any:
    """The FastAPI application serving study ``folder``."""
    study = Study(folder)
    app = FastAPI(title="medsyn reader study", docs_url=None, redoc_url=None, openapi_url=None)
    page = resources.files("medsyn.study").joinpath("reader.html").read_text()
    script = resources.files("medsyn.study").joinpath("reader.js").read_text()

    def error(status: int, msg: str) -> JSONResponse:
        return JSONResponse({"error": msg}, status_code=status, headers=HEADERS)

    def forbidden() -> JSONResponse:
        return error(403, "unknown or expired link: ask the study organiser for your personal link")

    def state(reader: str) -> dict[str, Any]:
        order = study.order(reader)
        done = store.answered(study.folder, reader)
        nxt = next((i for i, t in enumerate(order) if t not in done), len(order))
        return {"reader": reader, "title": study.public["title"], "n_trials": len(order), "done": len(done),
                "next": nxt, "scale": study.public["scale"]}

    @app.get("/")
    def root() -> Response:
        return Response("This reader study is served through personal links only.\n", status_code=403,
                        media_type="text/plain", headers=HEADERS)

    @app.get("/r/{token}")
    def reading_page(token: str) -> Response:
        if study.reader(token) is None:
            return forbidden()
        return HTMLResponse(page.replace("{{TOKEN}}", token), headers={**HEADERS, "Content-Security-Policy":
                                           "default-src 'self'; img-src 'self'; style-src 'self' 'unsafe-inline'"})

    @app.get("/r/{token}/app.js")
    def reading_script(token: str) -> Response:
        if study.reader(token) is None:
            return forbidden()
        return Response(script, media_type="text/javascript", headers=HEADERS)

    @app.get("/api/{token}/state")
    def get_state(token: str) -> Response:
        reader = study.reader(token)
        return forbidden() if reader is None else JSONResponse(state(reader), headers=HEADERS)

    @app.get("/api/{token}/trial/{position}")
    def get_trial(token: str, position: int) -> Response:
        reader = study.reader(token)
        if reader is None:
            return forbidden()
        order = study.order(reader)
        if not 0 <= position < len(order):
            return error(404, f"no trial at position {position}; positions run from 0 to {len(order) - 1}")
        trial = order[position]
        return JSONResponse({"position": position, "trial": trial, "images": study.images_for(reader, trial),
                             "answered": trial in store.answered(study.folder, reader)}, headers=HEADERS)

    @app.get("/img/{token}/{filename}")
    def get_image(token: str, filename: str) -> Response:
        if study.reader(token) is None:
            return forbidden()
        name = filename[:-4] if filename.endswith(".png") else ""
        if not NAME_RE.match(name) or name not in study.images:
            return error(404, "no such image")
        data = (study.folder / IMAGE_DIR / f"{name}.png").read_bytes()
        return Response(data, media_type="image/png", headers=HEADERS)

    @app.post("/api/{token}/answer")
    async def post_answer(token: str, request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return error(400, "the answer is not JSON; expected {trial, choice, ratings}")
        return await run_in_threadpool(answer, token, body)

    def answer(token: str, body: Any) -> Response:
        reader = study.reader(token)
        if reader is None:
            return forbidden()
        if not isinstance(body, dict):
            return error(400, "expected a JSON object {trial, choice, ratings}")
        trial, choice, ratings, seconds = body.get("trial"), body.get("choice"), body.get("ratings"), body.get("seconds")
        if isinstance(trial, bool) or not isinstance(trial, int) or trial not in study.trials:
            return error(400, f"'trial': {trial!r} is not a trial of this study")
        imgs = study.trials[trial]
        if not isinstance(ratings, dict) or set(ratings) != set(imgs):
            return error(400, f"'ratings': rate every image of trial {trial} ({len(imgs)} images), no others")
        if any(isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 4 for v in ratings.values()):
            return error(400, "'ratings': every rating is an integer from 1 (clearly synthetic) to 4 (most realistic)")
        if choice not in imgs:
            return error(400, f"'choice': pick the one image of trial {trial} you believe is real")
        if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0):
            return error(400, "'seconds': a non-negative number or null")
        position = study.order(reader).index(trial)
        try:
            store.add_answer(study.folder, reader, trial, choice, {k: int(v) for k, v in ratings.items()}, position,
                             None if seconds is None else float(seconds))
        except store.AlreadyAnswered as e:
            return error(409, f"{e}; answers are final")
        return JSONResponse({"stored": True, **state(reader)}, status_code=201, headers=HEADERS)

    return app


def serve(folder: str | Path, *, host: str = "127.0.0.1", port: int = 8765, log: Any = print) -> None:
    """Run the app with uvicorn until interrupted; prints where it listens and each reader's link."""
    import uvicorn

    study = Study(folder)
    shown = "localhost" if host in ("127.0.0.1", "::1", "localhost") else host
    local = host in ("127.0.0.1", "::1", "localhost")
    log(f"serving the reader study {study.folder} on http://{shown}:{port} — "
        + ("this machine only (127.0.0.1); pass --host 0.0.0.0 to let readers on your network in"
           if local else f"listening on {host}: anyone who can reach this address and holds a link can read"))
    for reader, token in study.tokens.items():
        log(f"  {reader}: http://{shown}:{port}/r/{token}")
    uvicorn.run(make_app(folder), host=host, port=port, log_level="warning")
