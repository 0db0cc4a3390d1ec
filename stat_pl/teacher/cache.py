"""The persistent cache every teacher call goes through, so a rerun pays for nothing already answered.

One SQLite file (``teacher_cache.sqlite3``) in WAL mode per cache directory. Every answer is committed
the moment it is received, so a crash loses none already paid for; many threads (one connection behind
a lock) and many processes (SQLite's file locks with a generous busy timeout) may write at once.
``synchronous=NORMAL`` in WAL mode survives a crash of the process; only a power cut can lose the last
commits. A file SQLite cannot read is reported, renamed aside (never deleted) and a fresh cache started.

The key is the canonical JSON of (model, messages, n, temperature, max_tokens, seed) made by
:meth:`stat_pl.teacher.base.TeacherRequest.cache_key`; rows keep that JSON so a cache can be inspected
with ``sqlite3``. The API key is never part of it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

CACHE_FILE_NAME = "teacher_cache.sqlite3"
#: How long a writer waits for another process's lock before SQLite reports "database is locked".
BUSY_TIMEOUT_S = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    key_hash TEXT PRIMARY KEY,
    request TEXT NOT NULL,
    texts TEXT NOT NULL,
    created_at REAL NOT NULL
)
"""


def default_cache_dir() -> Path:
    """``$STAT_PL_CACHE/teacher``, else ``$XDG_CACHE_HOME/stat_pl/teacher``, else ``~/.cache/...``."""
    if os.environ.get("STAT_PL_CACHE"):
        return Path(os.environ["STAT_PL_CACHE"]) / "teacher"
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "stat_pl" / "teacher"


class TeacherCache:
    """Request key -> answer texts, persisted in ``<cache_dir>/teacher_cache.sqlite3``.

    Counters (``hits``, ``misses``, ``writes``) count this object's lookups and stores, for the
    summary tables of a run.
    """

    def __init__(self, cache_dir: str | Path) -> None:
        self.path = Path(cache_dir).expanduser() / CACHE_FILE_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.hits = 0
        self.misses = 0
        self.writes = 0
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = -1

    def __repr__(self) -> str:
        return f"TeacherCache({str(self.path)!r})"

    def __getstate__(self) -> dict[str, object]:
        """Pickle the location and counters only: a connection belongs to one process."""
        return {"path": self.path, "hits": self.hits, "misses": self.misses, "writes": self.writes}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._conn = None
        self._pid = -1

    @staticmethod
    def hash_key(key: str) -> str:
        return hashlib.sha256(key.encode("utf-8")).hexdigest()

    def get(self, key: str) -> list[str] | None:
        """The texts stored for ``key``, or None; counts a hit or a miss."""
        with self._lock:
            row = (
                self._connection()
                .execute("SELECT texts FROM answers WHERE key_hash = ?", (self.hash_key(key),))
                .fetchone()
            )
            if row is None:
                self.misses += 1
                return None
            self.hits += 1
            return list(json.loads(row[0]))

    def put(self, key: str, texts: list[str]) -> None:
        """Store and commit ``texts`` for ``key`` now (the first answer stored for a key wins)."""
        with self._lock:
            conn = self._connection()
            with conn:
                conn.execute(
                    "INSERT OR IGNORE INTO answers (key_hash, request, texts, created_at) VALUES (?, ?, ?, ?)",
                    (self.hash_key(key), key, json.dumps(texts, ensure_ascii=False), time.time()),
                )
            self.writes += 1

    def __len__(self) -> int:
        with self._lock:
            return self._connection().execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def counters(self) -> dict[str, int]:
        return {"cache_hits": self.hits, "cache_misses": self.misses, "cache_writes": self.writes}

    def _connection(self) -> sqlite3.Connection:
        """This process's connection, opened (and checked) on first use and again after a fork."""
        if self._conn is None or self._pid != os.getpid():
            self._conn = self._open_checked()
            self._pid = os.getpid()
        return self._conn

    def _open_checked(self) -> sqlite3.Connection:
        try:
            return self._open()
        except sqlite3.OperationalError:
            raise  # locked, busy, unreadable directory: not the file's fault, never move it
        except sqlite3.DatabaseError as err:
            aside = self._set_aside()
            log.warning(
                "teacher cache %s is corrupt (%s); moved it to %s and started a fresh cache", self.path, err, aside
            )
            return self._open()

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, check_same_thread=False, isolation_level=None)
        try:
            _enable_wal(conn)
            conn.execute("PRAGMA synchronous=NORMAL")
            (verdict,) = conn.execute("PRAGMA quick_check").fetchone()
            if verdict != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {verdict}")
            conn.execute(_SCHEMA)
        except sqlite3.DatabaseError:
            conn.close()
            raise
        conn.isolation_level = "DEFERRED"
        return conn

    def _set_aside(self) -> Path:
        """Rename the cache file (and its WAL/SHM companions) to ``*.corrupt-<time>-<pid>``."""
        suffix = f".corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        aside = self.path.with_name(self.path.name + suffix)
        for companion in ("", "-wal", "-shm"):
            source = self.path.with_name(self.path.name + companion)
            try:
                source.rename(self.path.with_name(self.path.name + companion + suffix))
            except FileNotFoundError:
                continue
        return aside


def _enable_wal(conn: sqlite3.Connection) -> None:
    """Switch to WAL mode, waiting out other processes doing the same.

    SQLite answers "database is locked" at once, without its busy timeout, when two connections
    change the journal mode of a new file together, so this waits and retries itself.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
