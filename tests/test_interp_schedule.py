import pytest
import torch
import torch.nn.functional as F

from varbench.models.interp import INTERPOLATIONS, upsample
from varbench.models.schedule import scale_schedule


@pytest.mark.parametrize("kind", sorted(INTERPOLATIONS))
@pytest.mark.parametrize("s_in,s_out", [(2, 4), (2, 8), (3, 5), (4, 13), (5, 16)])
def test_operator_equals_f_interpolate(kind, s_in, s_out):
    x = torch.rand(6, 3, s_in, s_in, generator=torch.Generator().manual_seed(s_in * s_out))
    if kind == "area":
        want = F.adaptive_avg_pool2d(x, (s_out, s_out))
    else:
        extra = {} if kind == "nearest" else {"align_corners": False}
        want = F.interpolate(x, size=(s_out, s_out), mode=kind, **extra)
    got = upsample(kind, x, s_out)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_schedule_geometric_and_strict():
    assert scale_schedule(1, 16, 10)[0] == 1 and scale_schedule(1, 16, 10)[-1] == 16
    for a, b, k in [(2, 8, 2), (2, 8, 3), (2, 8, 7), (1, 16, 10), (4, 32, 5)]:
        s = scale_schedule(a, b, k)
        assert len(s) == k and s[0] == a and s[-1] == b
        assert all(x < y for x, y in zip(s, s[1:]))
    assert scale_schedule(2, 8, 3) == [2, 4, 8]


def test_schedule_rejects_impossible():
    with pytest.raises(ValueError):
        scale_schedule(2, 4, 4)
    with pytest.raises(ValueError):
        scale_schedule(4, 2, 2)
