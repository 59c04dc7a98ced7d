"""Mark mutants inside type annotations as skipped in a cosmic-ray session.

Every module here starts with ``from __future__ import annotations``: annotations are
never evaluated, so replacing the ``|`` of ``float | None`` by ``+`` (or any operator
inside an annotation) changes nothing a test could see. These equivalent mutants were
most of the survivors of the first run; skipping them leaves the report to the mutants
that matter.

    python mutation/skip_annotations.py SESSION.sqlite
"""

from __future__ import annotations

import ast
import sys
from functools import lru_cache
from pathlib import Path

from cosmic_ray.work_db import WorkDB, use_db
from cosmic_ray.work_item import WorkerOutcome, WorkResult


@lru_cache
def annotation_spans(path: Path) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """``((line, column), (end line, end column))`` of every annotation in a module (lines 1-based)."""
    tree = ast.parse(path.read_text(), str(path))
    annotations: list[ast.expr] = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns is not None:
            annotations.append(node.returns)
        elif isinstance(node, ast.arg) and node.annotation is not None:
            annotations.append(node.annotation)
        elif isinstance(node, ast.AnnAssign):
            annotations.append(node.annotation)
    return [((a.lineno, a.col_offset), (a.end_lineno or a.lineno, a.end_col_offset or 0)) for a in annotations]


def in_annotation(path: Path, start: tuple[int, int], end: tuple[int, int]) -> bool:
    return any(low <= tuple(start) and tuple(end) <= high for low, high in annotation_spans(path))


def main(session: str) -> int:
    skipped = 0
    with use_db(session, WorkDB.Mode.open) as db:
        for item in db.pending_work_items:
            if all(in_annotation(Path(m.module_path), m.start_pos, m.end_pos) for m in item.mutations):
                db.set_result(item.job_id, WorkResult(worker_outcome=WorkerOutcome.SKIPPED))
                skipped += 1
    print(f"{session}: {skipped} mutants inside type annotations skipped (never evaluated: equivalent)")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
