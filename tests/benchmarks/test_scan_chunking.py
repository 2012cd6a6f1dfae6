"""tools.scan_chunking's argument checks (its timings need a GPU)."""
from __future__ import annotations

import pytest

from tools import scan_chunking


@pytest.mark.parametrize("argv", [["--chunk-lens", "100"], ["--chunk-lens", "0"], ["--chunks", "0"]])
def test_bad_chunkings_exit_2_before_looking_for_a_gpu(argv, capsys):
    with pytest.raises(SystemExit) as e:
        scan_chunking.main(argv)
    assert e.value.code == 2 and "--chunk-lens multiples of 64" in capsys.readouterr().err


@pytest.mark.parametrize("stages", ["1", "-1", "0/1", "3/", "a", "2/3/4"])
def test_bad_stages_exit_2(stages, capsys):
    with pytest.raises(SystemExit) as e:
        scan_chunking.main(["--stages", stages])
    assert e.value.code == 2 and "--stages must be S or F/B" in capsys.readouterr().err


def test_stage_pairs():
    assert scan_chunking._stage_pair("3") == (3, 3)
    assert scan_chunking._stage_pair("0/3") == (0, 3)
    assert scan_chunking._stage_pair("0/1") is None


def test_bad_per_sm_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        scan_chunking.main(["--bwd-per-sm", "0"])
    assert e.value.code == 2 and "--bwd-per-sm must be >= 1" in capsys.readouterr().err
