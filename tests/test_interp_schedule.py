import pytest
import torch
import torch.nn.functional as F

from varbench.models.interp import INTERPOLATIONS, same_map, upsample
from varbench.models.schedule import scale_schedule


@pytest.mark.parametrize("kind", sorted(INTERPOLATIONS))
@pytest.mark.parametrize("s_in,s_out", [(2, 4), (2, 8), (3, 5), (4, 13), (5, 16)])
def test_operator_equals_f_interpolate(kind, s_in, s_out):
    x = torch.rand(6, 3, s_in, s_in, generator=torch.Generator().manual_seed(s_in * s_out))
    if kind == "area":
        want = F.adaptive_avg_pool2d(x, (s_out, s_out))
    else:
        extra = {} if kind.startswith("nearest") else {"align_corners": False}
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


def test_nearest_exact_samples_pixel_centres():
    # 3 -> 5: centres at (i + 0.5)·3/5 = 0.3, 0.9, 1.5, 2.1, 2.7 -> sources 0, 0, 1, 2, 2
    x = torch.arange(3.0).view(1, 1, 1, 3).expand(1, 1, 3, 3).contiguous()
    assert upsample("nearest-exact", x, 5)[0, 0, 0].tolist() == [0, 0, 1, 2, 2]
    assert upsample("nearest", x, 5)[0, 0, 0].tolist() == [0, 0, 1, 1, 2]  # floor(i·3/5): off-centre
    assert not same_map("nearest", "nearest-exact", [3, 5])


def test_area_and_nearest_duplicates_are_not_both_sampled(tmp_path):
    from tests.conftest import tiny_spec
    from varbench.sweeps.space import search_space, trial_config
    from varbench.sweeps.spec import load_spec

    kinds = ["nearest", "bilinear", "area", "nearest-exact"]
    # sides 2 -> 8 with K in 2..3: ratios 4, 2, 2, all integer: area = nearest = nearest-exact
    spec = load_spec(tiny_spec(tmp_path, name="ints", search={
        "width": {"low": 4, "high": 8}, "scales": {"low": 2, "high": 3}, "interp": kinds}))
    v = spec.cells.models[0]
    assert search_space(spec, v)["interp"].choices == ("nearest", "bilinear")
    # with K = 4 (sides 2, 3, 5, 8) they differ, so all stay; at K = 3 the duplicate
    # is recorded under the first name
    spec4 = load_spec(tiny_spec(tmp_path, name="mixed", search={
        "width": {"low": 4, "high": 8}, "scales": {"low": 2, "high": 4}, "interp": kinds}))
    assert search_space(spec4, v)["interp"].choices == tuple(kinds)
    for k, want in ((3, "nearest"), (4, "area")):
        cfg = trial_config(spec4, v, "mlp", 1.0, {"width": 8, "scales": k, "interp": "area"}, 0)
        assert cfg.interp == want
