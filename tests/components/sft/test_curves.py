"""SFT loss curve files: the CSV DVC plots, the PNG MLflow keeps, an unlagged smoothing."""

from __future__ import annotations

import csv

from components.sft import curves


def history(n: int) -> list[dict]:
    return [
        {
            "step": i,
            "loss": 5.0 / i,
            "lr": 1e-3,
            "grad_norm": 1.0,
            "tokens": 100,
            "tokens_per_s": 50.0,
            "seconds": 2.0,
        }
        for i in range(1, n + 1)
    ]


def test_csv_and_png(tmp_path):
    rows = list(csv.DictReader(curves.write_steps_csv(history(12), tmp_path / "s.csv").open()))
    assert [int(r["step"]) for r in rows] == list(range(1, 13)) and set(rows[0]) == set(curves.COLUMNS)
    assert float(rows[1]["loss"]) == 2.5
    png = curves.plot_loss(history(12), tmp_path / "x" / "loss.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_smoothing_is_centred():
    assert curves.smooth([1, 2, 3, 4, 5], 3) == [1.5, 2.0, 3.0, 4.0, 4.5]
    assert curves.smooth([0, 0, 9, 0, 0], 1) == [0, 0, 9, 0, 0]
