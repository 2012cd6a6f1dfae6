"""The PyTorch peers of the v2 benchmark compute the op they stand in for."""
import torch

from benchmarks.bench_v2_ops import _dense, add_ratios, chunked_scan
from mosaic_kernels import reference as R


def test_chunked_and_dense_scans_match_the_reference():
    # float64 throughout (the peers cast to float32 inside): agreement to float32 rounding of a sum of
    # at most T terms of size <= 1 after normalisation, so 1e-5 is far above the error and far below any bug.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 150, 8, generator=g, dtype=torch.float64)      # T not a multiple of the chunk
    a = torch.rand(2, 3, 150, generator=g, dtype=torch.float64)
    a[0, 0, 40] = 0.0                                                   # a reset inside a chunk
    a[1, 2, 63:66] = 1.0                                                # a run of ones across a chunk edge
    scale = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    want = R.leaky_average(x, a, normalize=True, scale=scale)
    torch.testing.assert_close(chunked_scan(x, a, scale, chunk=16), want, atol=1e-5, rtol=0)
    torch.testing.assert_close(_dense(x, a) * scale[:, None, None], want, atol=1e-5, rtol=0)


def test_ratios_pair_each_row_with_the_full_op_and_flex_of_its_shape():
    rows = [dict(shape="a", provider="ours_full", fwd_bwd_ms=2.0, graph_ms=1.0),
            dict(shape="a", provider="ours_window", fwd_bwd_ms=0.5, graph_ms=0.1),
            dict(shape="a", provider="flex_window", fwd_bwd_ms=0.6, graph_ms=None),   # not capturable
            dict(shape="b", provider="ours_window", fwd_bwd_ms=1.0, graph_ms=0.5)]    # no full op timed
    add_ratios(rows)
    assert rows[1]["x_ours_full"] == 0.25 and rows[1]["x_ours_full_graph"] == 0.1
    assert abs(rows[1]["flex_window_over"] - 1.2) < 1e-12 and rows[1]["flex_window_over_graph"] is None
    assert rows[0]["flex_window_over"] is None                         # only the window rows get Flex's ratio
    assert rows[3]["x_ours_full"] is None and rows[3]["flex_window_over"] is None


def test_two_memory_table_is_the_models_band_table():
    """The benchmarks time the table the v2 block builds for its one call of 2H heads."""
    from benchmarks.bench_v2_ops import two_memory_table
    from mosaic_model.models.config import MosaicV2Config
    from mosaic_model.models.mosaic_v2 import band_table_of

    delays = torch.tensor([64, 200, 97])
    config = MosaicV2Config(n_head=3, n_embd=24, window=16)
    assert torch.equal(two_memory_table(3, 6, 300, 16, delays), band_table_of(config, 3, 300, delays, delays.device))
