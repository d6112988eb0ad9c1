"""Build the datasets `params.yaml` names: the synthetic benchmark and any real benchmarks.

Each dataset is written to `<paths.processed_dir>/<name>/`: one `<split>.parquet` per split,
`manifest.json` and `contact_sheet.png`. Writing goes to a hidden sibling folder that replaces
the old one only when complete, so an interrupted run never leaves a half dataset behind.
Memory stays flat: records stream from the generator or loader into row groups, and the
oracle and counters keep a few numbers per record.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from components.config import BenchmarkSource, PrepareConfig
from components.data.contact_sheet import contact_sheet
from components.data.loaders import Skipped, load_benchmark
from components.data.manifest import check_skips, skip_summary, split_entry, write_manifest
from components.data.oracle import OracleCheck, Views
from components.data.parquet import RecordWriter
from components.data.record import Record
from components.progress import progress_bar
from components.data.synthetic import generate_split, split_specs

SHEET_SAMPLES = 6


@dataclass
class BuildResult:
    name: str
    kind: str
    out_dir: Path
    manifest: dict
    seconds: float
    images: int
    contact_sheet: Path | None

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def _staging(out_root: Path, name: str) -> Path:
    tmp = out_root / f".{name}.partial"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def _publish(tmp: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)


def _sheet(samples: list[Record], folder: Path) -> Path | None:
    return contact_sheet(samples, folder / "contact_sheet.png") if samples else None


def build_synthetic(
    prepare: PrepareConfig, out_root: str | Path, views: Views, progress: bool = True
) -> BuildResult:
    """Generate every synthetic split, run the oracle on attribute questions, write the folder."""
    cfg = prepare.synthetic
    out_root = Path(out_root)
    tmp = _staging(out_root, cfg.name)
    oracle = OracleCheck(views)
    splits: dict[str, dict] = {}
    samples: list[Record] = []
    images = 0
    start = time.perf_counter()
    for spec in split_specs(cfg):
        with RecordWriter(tmp / f"{spec.name}.parquet", prepare.rows_per_group) as writer:
            bar = progress_bar(total=spec.count, desc=f"{cfg.name}/{spec.name}", unit="img", disable=not progress)
            for record in generate_split(cfg, prepare.seed, spec):
                record.validate()
                writer.write(record)
                oracle.add(record)
                if spec.name == "test" and len(samples) < SHEET_SAMPLES:
                    samples.append(record)
                images += 1
                bar.update()
            bar.close()
        splits[spec.name] = split_entry(writer)
    seconds = time.perf_counter() - start
    manifest = {
        "name": cfg.name,
        "kind": "synthetic",
        "generator": {
            "seed": prepare.seed,
            "rows_per_group": prepare.rows_per_group,
            "synthetic": cfg.model_dump(mode="json"),
        },
        "splits": splits,
        **skip_summary(images, [], prepare.max_skipped_fraction),
        "oracle": oracle.summary(),
    }
    write_manifest(tmp / "manifest.json", manifest)
    sheet = _sheet(samples, tmp)
    final = out_root / cfg.name
    _publish(tmp, final)
    return BuildResult(
        cfg.name, "synthetic", final, manifest, seconds, images, final / sheet.name if sheet else None
    )


def build_benchmark(
    src: BenchmarkSource,
    prepare: PrepareConfig,
    raw_dir: str | Path,
    out_root: str | Path,
    progress: bool = True,
) -> BuildResult:
    """Convert one real benchmark; skip and record bad rows; fail past the skip threshold."""
    out_root = Path(out_root)
    tmp = _staging(out_root, src.name)
    skipped: list[Skipped] = []
    seen: set[str] = set()
    samples: list[Record] = []
    start = time.perf_counter()
    items = load_benchmark(src.kind, src.path, src.name, src.split, raw_dir, prepare.max_image_pixels)
    with RecordWriter(tmp / f"{src.split}.parquet", prepare.rows_per_group) as writer:
        for item in progress_bar(items, desc=f"{src.name}/{src.split}", unit="row", disable=not progress):
            if isinstance(item, Skipped):
                skipped.append(item)
            elif item.id in seen:
                skipped.append(
                    Skipped(item.id, f"duplicate id {item.id!r} (the first one is kept)", src.split)
                )
            else:
                seen.add(item.id)
                writer.write(item)
                if len(samples) < SHEET_SAMPLES:
                    samples.append(item)
    seconds = time.perf_counter() - start
    manifest = {
        "name": src.name,
        "kind": src.kind,
        "source": {**src.model_dump(mode="json"), "max_image_pixels": prepare.max_image_pixels},
        "splits": {src.split: split_entry(writer)},
        **skip_summary(writer.rows, skipped, prepare.max_skipped_fraction),
    }
    write_manifest(tmp / "manifest.json", manifest)
    sheet = _sheet(samples, tmp)
    final = out_root / src.name
    _publish(tmp, final)
    check_skips(src.name, writer.rows, skipped, prepare.max_skipped_fraction, final / "manifest.json")
    return BuildResult(
        src.name, src.kind, final, manifest, seconds, writer.rows, final / sheet.name if sheet else None
    )
