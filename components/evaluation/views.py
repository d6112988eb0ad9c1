"""What is evaluated: question views (option order, cycle, repeat) and the fingerprint of a run.

Bias controls (MGPO.md: published V* scores move 20 points with option order):
- `shuffle_options`: each question's options are permuted by a generator seeded with
  (seed, record id), so the order is the same in every run and every mode, whatever the number
  or order of records;
- `circular`: the question is asked once per cyclic shift of that order (A B C D, B C D A, ...),
  and counts as right only if every view is right. Benchmarks that already ship their cycles as
  separate rows are not cycled again: their rows are grouped by question instead (HR-Bench: one
  row per permutation with `meta.cycle_category`; a question is its text, option set and image;
  a loader may also name the group itself in `meta.circular_group`). Without `circular` such
  rows count one by one, which is HR-Bench's own metric (the mean over its cycles);
- `samples` repeats at temperature > 0 report a mean and a standard deviation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

from components.data.record import Record, letter

GROUP_KEY = "circular_group"  # record.meta key naming a shipped cycle's question
CYCLE_KEY = "cycle_category"  # HR-Bench's per-row cycle name (cycle1..cycle4)
# Folders are hashed by content; a file above this size by its size, head and tail (a 7B model's
# 15 GB of weights would otherwise take minutes to hash before every evaluation).
FULL_HASH_LIMIT = 256 << 20
EDGE_BYTES = 4 << 20


@dataclass(frozen=True)
class View:
    """One way of asking one question: the record with its options in a given order."""

    record: Record
    """The record with options permuted and the answer letter remapped."""
    source_id: str
    group: str
    """The question this view belongs to (views of one group are scored together)."""
    cycle: int
    repeat: int
    order: tuple[int, ...]
    """order[i] = index in the published options of the option shown at position i."""


def permutation(record_id: str, n: int, seed: int, shuffle: bool) -> list[int]:
    order = list(range(n))
    if shuffle:
        # A str seed is hashed with SHA-512 by `random`, so this is stable across processes.
        random.Random(f"{seed}:{record_id}").shuffle(order)
    return order


def reorder(record: Record, order: list[int]) -> Record:
    """The record with options shown in `order` and the answer letter following its option."""
    options = [record.options[i] for i in order]
    answer = letter(order.index(record.answer_index))
    return dataclasses.replace(record, options=options, answer=answer)


def shipped_cycle(record: Record) -> tuple[str, int] | None:
    """(question group, cycle index) of a row that is one of a benchmark's shipped cycles."""
    meta = record.meta if isinstance(record.meta, dict) else {}
    if meta.get(GROUP_KEY):
        return str(meta[GROUP_KEY]), int(meta.get("cycle", 0))
    if meta.get(CYCLE_KEY):
        key = hashlib.sha256()
        for part in (record.question.strip(), *sorted(record.options)):
            key.update(part.encode() + b"\0")
        key.update(hashlib.sha256(bytes(record.image_bytes)).digest())
        digits = "".join(c for c in str(meta[CYCLE_KEY]) if c.isdigit())
        return "q-" + key.hexdigest()[:16], max(0, int(digits) - 1) if digits else 0
    return None


def views_of(record: Record, seed: int, shuffle: bool, circular: bool, repeats: int) -> list[View]:
    """Every view of one record: cycles (when circular) x repeats."""
    n = len(record.options)
    shipped = shipped_cycle(record) if circular else None
    # Shipped cycles are the published permutations: shuffling each row would break them.
    base = permutation(record.id, n, seed, shuffle and shipped is None)
    out = []
    for cycle in range(1 if (shipped or not circular) else n):
        order = base[cycle:] + base[:cycle]
        shown = reorder(record, order)
        group, index = shipped if shipped else (record.id, cycle)
        for repeat in range(repeats):
            out.append(View(shown, record.id, group, index, repeat, tuple(order)))
    return out


def hash_path(path: str | Path) -> str:
    """SHA-256 over a file or a folder's files (names and contents; see FULL_HASH_LIMIT)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        digest.update(str(f.relative_to(path) if f != path else f.name).encode() + b"\0")
        size = f.stat().st_size
        digest.update(str(size).encode() + b"\0")
        with open(f, "rb") as fh:
            if size <= FULL_HASH_LIMIT:
                while block := fh.read(1 << 20):
                    digest.update(block)
            else:
                digest.update(fh.read(EDGE_BYTES))
                fh.seek(size - EDGE_BYTES)
                digest.update(fh.read(EDGE_BYTES))
    return digest.hexdigest()


def fingerprint(**parts) -> str:
    """Short hash of JSON-able parts (sorted keys): what decides a prediction."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
