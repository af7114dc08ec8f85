#!/usr/bin/env python3
"""What ferry's SQLite capture triggers cost a writer, in instructions per
row, counted by valgrind's cachegrind on the sqlite3 CLI: deterministic, so
a shared, loaded machine does not blur a difference of a few per cent.

    python3 scripts/capture-cost.py FERRY_BINARY [ROWS]

Installs capture with `ferry run` on four empty tables (rowid-alias key;
the same with a UNIQUE column; a text key; no key), copies ferry's triggers
into fresh databases, and measures one bulk statement per operation (insert,
update of non-key columns, INSERT OR REPLACE of every existing key, delete)
against the same tables with only the three plain AFTER triggers of
ADR 0003 ("before"). Needs `valgrind` and `sqlite3` on the PATH.
"""
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time

TABLES = {
    "t": "CREATE TABLE t(id INTEGER PRIMARY KEY, a INTEGER NOT NULL, b TEXT NOT NULL, c REAL, d DATETIME)",
    "tu": "CREATE TABLE tu(id INTEGER PRIMARY KEY, a INTEGER NOT NULL, b TEXT NOT NULL UNIQUE, c REAL, d DATETIME)",
    "tt": "CREATE TABLE tt(id TEXT PRIMARY KEY, a INTEGER NOT NULL, b TEXT NOT NULL, c REAL, d DATETIME)",
    "tk": "CREATE TABLE tk(a INTEGER, b TEXT, c REAL, d DATETIME, id INT)",
}
NOW = "CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER)"


def install_capture(ferry, work):
    """Runs `ferry run` until its triggers are on every table, then stops it."""
    src = os.path.join(work, "src.db")
    with sqlite3.connect(src) as c:
        for ddl in TABLES.values():
            c.execute(ddl)
    pipeline = os.path.join(work, "p.toml")
    with open(pipeline, "w") as f:
        f.write(f'name = "cost"\n[source]\nurl = "sqlite:{src}"\n'
                f'[target]\nurl = "sqlite:{os.path.join(work, "dst.db")}"\n')
    run = subprocess.Popen([ferry, "run", pipeline], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, env={**os.environ, "FERRY_LOG": "warn"})
    deadline = time.time() + 60
    try:
        while time.time() < deadline:
            try:
                with sqlite3.connect(src) as c:
                    n = c.execute("SELECT count(*) FROM sqlite_schema WHERE type = 'trigger' "
                                  "AND name LIKE '\\_ferry\\_%\\_ai' ESCAPE '\\'").fetchone()[0]
                if n == len(TABLES):
                    return sqlite3.connect(src)
            except sqlite3.OperationalError:
                pass
            time.sleep(0.1)
        sys.exit("ferry did not install its triggers within 60 s")
    finally:
        run.send_signal(signal.SIGTERM)
        run.wait()


def after_objects(src, t):
    rows = src.execute(
        "SELECT type, sql FROM sqlite_schema WHERE (name LIKE ? ESCAPE '\\' OR name = ?) "
        "AND sql IS NOT NULL", (f"\\_ferry\\_{t}\\_%", f"_ferry_pending_{t}")).fetchall()
    return [s for ty, s in rows if ty == "table"] + [s for ty, s in rows if ty == "trigger"]


def before_objects(t):
    cols = ["a", "b", "c", "d", "id"] if t == "tk" else ["id", "a", "b", "c", "d"]
    img = lambda p: "||','||".join(f'quote({p}."{c}")' for c in cols)
    ins = lambda op, o, n: (f"INSERT INTO _ferry_changes(tbl, op, old_row, new_row, ts) "
                            f"VALUES ('{t}', '{op}', {o}, {n}, {NOW});")
    make = lambda s, ev, body: f'CREATE TRIGGER "_ferry_{t}_{s}" AFTER {ev} ON "{t}" FOR EACH ROW BEGIN {body} END'
    return [make("ai", "INSERT", ins("I", "NULL", img("NEW"))),
            make("au", "UPDATE", ins("U", img("OLD"), img("NEW"))),
            make("ad", "DELETE", ins("D", img("OLD"), "NULL"))]


def operations(t, rows):
    key = "'k' || printf('%08d', i)" if t == "tt" else "i"
    gen = f"WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM r WHERE i < {rows})"
    values = lambda a: f"SELECT {key}, i*{a}, printf('%060d', i), i/3.0, '2024-01-01 00:00:00' FROM r;"
    return {
        "insert": f"INSERT INTO {t}(id, a, b, c, d) {gen} {values(7)}",
        "update": f"UPDATE {t} SET a = a + 1, c = c * 2;",
        "replace": f"INSERT OR REPLACE INTO {t}(id, a, b, c, d) {gen} {values(9)}",
        "delete": f"DELETE FROM {t};",
    }


def instructions(script):
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "cachegrind.out")
        subprocess.run(["valgrind", "--tool=cachegrind", "--cache-sim=no",
                        f"--cachegrind-out-file={out}", "sqlite3", os.path.join(d, "x.db")],
                       input=script, text=True, capture_output=True, check=True)
        with open(out) as f:
            return next(int(l.split()[1]) for l in f if l.startswith("summary:"))


def per_row(src, t, objects, rows):
    """Instructions per row of each operation: the difference between a run
    with and without it, divided by the rows it touched."""
    setup = ("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;\n"
             + src.execute("SELECT sql FROM sqlite_schema WHERE name = '_ferry_changes'").fetchone()[0]
             + ";\n" + TABLES[t] + ";\n" + ";\n".join(objects) + ";\n")
    ops = operations(t, rows)
    base = instructions(setup)
    filled = instructions(setup + ops["insert"])
    out = {"insert": (filled - base) / rows}
    for op in ("update", "replace", "delete"):
        out[op] = (instructions(setup + ops["insert"] + ops[op]) - filled) / rows
    return out


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    ferry, rows = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 4000
    with tempfile.TemporaryDirectory() as work:
        src = install_capture(os.path.abspath(ferry), work)
        print(f"instructions per row ({rows} rows per statement), before → after (ratio)")
        for t in TABLES:
            before = per_row(src, t, before_objects(t), rows)
            after = per_row(src, t, after_objects(src, t), rows)
            print(f"{t}: " + ", ".join(
                f"{op} {before[op]:.0f} → {after[op]:.0f} ({after[op] / before[op]:.2f})"
                for op in ("insert", "update", "replace", "delete")))


if __name__ == "__main__":
    main()
