"""tools.scan_chunking's argument checks (its timings need a GPU)."""
from __future__ import annotations

import pytest

from tools import scan_chunking


@pytest.mark.parametrize("argv", [["--chunk-lens", "100"], ["--chunk-lens", "0"], ["--chunks", "0"]])
def test_bad_chunkings_exit_2_before_looking_for_a_gpu(argv, capsys):
    with pytest.raises(SystemExit) as e:
        scan_chunking.main(argv)
    assert e.value.code == 2 and "--chunk-lens multiples of 64" in capsys.readouterr().err
