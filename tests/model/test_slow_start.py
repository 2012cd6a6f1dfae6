"""The slow-start experiment: its arms differ in the output layer only, and it runs end to end."""
from __future__ import annotations

import json

import pytest

from experiments import slow_start


def test_arms_run_and_differ_only_in_the_output_layer(tmp_path):
    data = tmp_path / "text"
    data.mkdir()
    for i in range(3):  # three documents, so that the run's validation split has one
        (data / f"d{i}.txt").write_text(" ".join(f"word{j % 50}" for j in range(400 * (i + 1))))
    out = tmp_path / "out"
    assert slow_start.main(["--data", str(data), "--out", str(out), "--depth", "1", "--width", "64", "--block-size", "16",
                            "--batch-size", "2", "--steps", "2", "--quiet"]) == 0
    arms = {r["arm"]: r for r in json.loads((out / "results.json").read_text())["arms"]}
    assert set(arms) == set(slow_start.ARMS) and (out / "loss.png").is_file()
    # The Library's logits start at the embedding's spread 1/sqrt(d) = 0.125 times a normalised stream
    # (their std ~0.125); without the scale they are sqrt(d) = 8 times larger; with GPT2's init 0.02 * sqrt(d).
    lib, unscaled, gpt_head = (arms[a]["logit_std_at_init"] for a in ("mosaic", "mosaic-unscaled", "mosaic-gpt-head"))
    assert abs(unscaled / lib - 8.0) < 0.05 * 8.0 and abs(gpt_head - 0.02 * 8.0) < 0.1 * 0.16
    # The same blocks: the residual stream after the first block differs only through the embedding's init.
    assert arms["mosaic"]["residual_rms_at_init"] == arms["mosaic-unscaled"]["residual_rms_at_init"]


@pytest.mark.parametrize("argv", [["--width", "100"], ["--steps", "5", "--total-steps", "4"], ["--depth", "0"]])
def test_bad_arguments(argv, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        slow_start.main(["--data", str(tmp_path), *argv])
    assert e.value.code == 2 and "error: --" in capsys.readouterr().err
