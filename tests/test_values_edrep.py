"""EDRepLoss's self-check against an independent computation: ``sampled_error`` is the relative
error of the loss ``sum_i (log Z_i - lin_i)`` on the checked rows, with ``log Z`` exact by brute
force (``torch.logsumexp``)."""
import pytest
import torch

from tgrep.nn import EDRepLoss


def test_sampled_error_is_the_relative_loss_error():
    g = torch.Generator().manual_seed(0)
    n = 30
    x = torch.randn(n, 6, generator=g, dtype=torch.float64) / 3
    y = torch.randn(n, 6, generator=g, dtype=torch.float64) / 3
    exact = torch.logsumexp(x @ y.T, 1)
    est = exact + 0.05 * torch.randn(n, generator=g, dtype=torch.float64)   # an estimate with errors
    lin = 0.3 * torch.randn(n, generator=g, dtype=torch.float64)
    has = torch.ones(n, dtype=torch.bool)
    has[3] = False                                                          # a row without target: skipped
    f = EDRepLoss(num_clusters=2, check_rows=n)
    out = f._check(x, y, est, lin, has)
    m = has
    want = float((est[m] - exact[m]).sum() / (exact[m] - lin[m]).sum().abs())
    assert out["rows"] == n - 1
    assert f.sampled_error == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert out["log_z_abs_error"] == pytest.approx(float((est[m] - exact[m]).abs().mean()), rel=1e-9)
    # a few rows: the same formula on the rows drawn
    out = f._check(x, y, est, lin, has, rows=5)
    assert out["rows"] == 5
