"""The readers' answers in SQLite (WAL journal, synchronous FULL): one row per (reader, trial).

An answer is committed before the server replies, so a reader's submitted answers survive a
killed server (SIGKILL) and the reader resumes at the first unanswered trial. The primary key
(reader, trial) makes a replayed or repeated submission fail instead of being stored twice.
Every request opens its own connection (SQLite serialises the writers; ``busy_timeout`` waits
for the lock), so readers answering at the same time lose nothing.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

DB = "answers.sqlite"

SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    reader TEXT NOT NULL,
    trial INTEGER NOT NULL,
    choice TEXT NOT NULL,          -- the image name the reader believes real
    ratings TEXT NOT NULL,         -- JSON {image name: 1..4}
    position INTEGER NOT NULL,     -- the trial's place in this reader's order (0-based)
    seconds REAL,                  -- time the reader spent on the trial, as the page measured it
    submitted REAL NOT NULL,       -- unix time
    PRIMARY KEY (reader, trial)
)
"""


class AlreadyAnswered(Exception):
    """The reader has answered this trial before (a replay or a double click)."""


def connect(study: str | Path) -> sqlite3.Connection:
    con = sqlite3.connect(Path(study) / DB, timeout=30.0, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    con.execute("PRAGMA busy_timeout=30000")
    con.execute(SCHEMA)
    return con


def add_answer(study: str | Path, reader: str, trial: int, choice: str, ratings: dict[str, int], position: int,
               seconds: float | None) -> None:
    con = connect(study)
    try:
        con.execute("INSERT INTO answers VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (reader, trial, choice, json.dumps(ratings, sort_keys=True), position, seconds, time.time()))
    except sqlite3.IntegrityError:
        raise AlreadyAnswered(f"reader {reader!r} has answered trial {trial} already") from None
    finally:
        con.close()


def answered(study: str | Path, reader: str) -> set[int]:
    con = connect(study)
    try:
        return {r[0] for r in con.execute("SELECT trial FROM answers WHERE reader = ?", (reader,))}
    finally:
        con.close()


def all_answers(study: str | Path) -> list[dict[str, Any]]:
    """Every answer, as dicts (reader, trial, choice, ratings, position, seconds, submitted)."""
    if not (Path(study) / DB).is_file():
        return []
    con = connect(study)
    try:
        rows = con.execute("SELECT reader, trial, choice, ratings, position, seconds, submitted FROM answers "
                           "ORDER BY reader, trial").fetchall()
    finally:
        con.close()
    return [{"reader": r[0], "trial": r[1], "choice": r[2], "ratings": json.loads(r[3]), "position": r[4],
             "seconds": r[5], "submitted": r[6]} for r in rows]
