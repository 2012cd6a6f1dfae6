"""tools.scan_chunking's argument checks (its timings need a GPU)."""
from __future__ import annotations

import pytest

from tools import scan_chunking


@pytest.mark.parametrize("argv", [["--chunk-lens", "100"], ["--chunk-lens", "0"], ["--chunks", "0"]])
def test_bad_chunkings_exit_2_before_looking_for_a_gpu(argv, capsys):
    with pytest.raises(SystemExit) as e:
        scan_chunking.main(argv)
    assert e.value.code == 2 and "--chunk-lens multiples of 64" in capsys.readouterr().err


@pytest.mark.parametrize("stages", ["1", "-1"])
def test_bad_stages_exit_2(stages, capsys):
    with pytest.raises(SystemExit) as e:
        scan_chunking.main(["--stages", stages])
    assert e.value.code == 2 and "--stages must be 0 or >= 2" in capsys.readouterr().err
