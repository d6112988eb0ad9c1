"""Building a benchmark dataset folder: duplicates, skip records, the skip threshold, manifest."""

from __future__ import annotations

import json

import benchfiles as bf
import pytest

from components.config import BenchmarkSource, PrepareConfig
from components.data.build import build_benchmark
from components.data.manifest import SkipThresholdError
from components.data.parquet import read_records, sha256_file


def test_hrbench_folder_with_skips_and_duplicates(tmp_path):
    (tmp_path / "raw").mkdir()
    bf.hrbench_tsv(tmp_path / "raw/hr_bench_4k.tsv")  # relative path: found under raw_dir
    src = BenchmarkSource(name="hrbench_4k", kind="hrbench", path="hr_bench_4k.tsv")
    prepare = PrepareConfig(max_skipped_fraction=0.5, rows_per_group=2)
    result = build_benchmark(src, prepare, tmp_path / "raw", tmp_path / "processed", progress=False)
    m = json.loads((tmp_path / "processed/hrbench_4k/manifest.json").read_text())
    assert m == result.manifest | {"schema_version": 1}
    assert m["splits"]["test"]["rows"] == 4
    reasons = {s["id"]: s["reason"] for s in m["skipped"]}
    assert set(reasons) == {"4", "5", "2"} and "duplicate id" in reasons["2"]
    assert m["skipped_fraction"] == pytest.approx(3 / 7, abs=1e-6)
    assert m["splits"]["test"]["sha256"] == sha256_file(tmp_path / "processed/hrbench_4k/test.parquet")
    assert m["source"]["kind"] == "hrbench" and m["source"]["max_image_pixels"] == prepare.max_image_pixels
    records = list(read_records(tmp_path / "processed/hrbench_4k/test.parquet"))
    assert [r.id for r in records] == ["0", "1", "2", "3"] and all(r.source == "hrbench_4k" for r in records)
    assert result.contact_sheet is not None and result.contact_sheet.stat().st_size > 1000


def test_too_many_skips_fail_with_a_clear_message(tmp_path):
    bf.mme_tsv(tmp_path / "mme.tsv")  # 1 good row, 1 truncated image
    src = BenchmarkSource(name="mme", kind="mme_realworld", path=str(tmp_path / "mme.tsv"))
    with pytest.raises(SkipThresholdError) as info:
        build_benchmark(
            src, PrepareConfig(max_skipped_fraction=0.05), tmp_path, tmp_path / "out", progress=False
        )
    msg = str(info.value)
    assert "dataset mme: 1 of 2 input rows skipped (50.0%)" in msg
    assert "prepare.max_skipped_fraction = 5.0%" in msg and "11:" in msg and "truncated" in msg
    assert str(tmp_path / "out/mme/manifest.json") in msg
    manifest = json.loads((tmp_path / "out/mme/manifest.json").read_text())
    assert manifest["skipped"][0]["id"] == "11"


def test_rebuild_replaces_the_folder(tmp_path):
    bf.vstar_parquet(tmp_path / "v.parquet")
    src = BenchmarkSource(name="vstar", kind="vstar", path=str(tmp_path / "v.parquet"), split="val")
    prepare = PrepareConfig(max_skipped_fraction=0.5)
    (tmp_path / "out/vstar").mkdir(parents=True)
    (tmp_path / "out/vstar/stale.parquet").write_text("old")
    build_benchmark(src, prepare, tmp_path, tmp_path / "out", progress=False)
    assert sorted(p.name for p in (tmp_path / "out/vstar").iterdir()) == [
        "contact_sheet.png",
        "manifest.json",
        "val.parquet",
    ]
