import pytest
import torch

from varbench.models.attention import attention, block_causal_mask

SIDES = [1, 2, 3, 4]


def _ids(sides=SIDES):
    return torch.cat([torch.full((s * s,), i) for i, s in enumerate(sides)])


def _qkv(heads=2, dim=8, seed=0, grad=True):
    g = torch.Generator().manual_seed(seed)
    t = _ids().numel()
    return [torch.randn(3, heads, t, dim, generator=g).requires_grad_(grad) for _ in range(3)]


def test_mask_is_block_causal():
    ids = _ids()
    m = block_causal_mask(ids)
    for i in range(len(ids)):
        for j in range(len(ids)):
            assert bool(m[i, j]) == bool(ids[j] <= ids[i])


@pytest.mark.parametrize("backend", ["sdpa", "bmm", "auto"])
def test_backend_matches_reference_forward_and_backward(backend):
    ids = _ids()
    q, k, v = _qkv()
    ref = attention(q, k, v, ids, "reference")
    gref = torch.autograd.grad(ref.pow(2).sum(), (q, k, v))
    q2, k2, v2 = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    out = attention(q2, k2, v2, ids, backend)
    gout = torch.autograd.grad(out.pow(2).sum(), (q2, k2, v2))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(gout, gref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_flex_matches_reference_forward_on_cpu():
    ids = _ids()
    q, k, v = _qkv(grad=False)
    torch.testing.assert_close(
        attention(q, k, v, ids, "flex"), attention(q, k, v, ids, "reference"), atol=1e-5, rtol=1e-5
    )


def test_flex_backward_on_cpu_is_a_clear_error():
    ids = _ids()
    q, k, v = _qkv(grad=True)
    with pytest.raises(NotImplementedError, match="no backward on CPU"):
        attention(q, k, v, ids, "flex")


@pytest.mark.parametrize("backend", ["sdpa", "bmm", "flex"])
@pytest.mark.parametrize("start", [14, 5])  # the last scale's queries; scales 2.. (a split scale: 5)
def test_queries_of_the_last_tokens_only_match_the_full_pass(backend, start):
    ids = _ids()
    q, k, v = _qkv(grad=False)
    full = attention(q, k, v, ids, "reference")
    torch.testing.assert_close(attention(q[:, :, start:], k, v, ids, backend), full[:, :, start:],
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dim", [4, 8, 16, 20])  # transposed products (not multiples of BMM_ALIGN), plain
def test_bmm_gradients_are_exact_in_double(dim):
    """The hand-written backward against autograd's numerical derivative, masked."""
    ids = _ids([1, 2, 2])
    g = torch.Generator().manual_seed(dim)
    q, k, v = (torch.randn(2, 1, ids.numel(), dim, generator=g, dtype=torch.double)
               .requires_grad_(True) for _ in range(3))
    assert torch.autograd.gradcheck(lambda q, k, v: attention(q, k, v, ids, "bmm"), (q, k, v))


@pytest.mark.parametrize("backend", ["reference", "sdpa", "bmm"])
def test_full_skips_the_mask_where_every_query_sees_every_key(backend):
    """The last scale's queries see every key, so ``full`` gives the masked result;
    on queries that do not (all tokens) it would not, which is why callers decide."""
    ids = _ids()
    q, k, v = _qkv(grad=False)
    last = 16  # SIDES[-1] ** 2
    masked = attention(q[:, :, -last:], k, v, ids, backend)
    torch.testing.assert_close(attention(q[:, :, -last:], k, v, ids, backend, full=True), masked,
                               atol=1e-5, rtol=1e-5)
    assert not torch.allclose(attention(q, k, v, ids, backend, full=True),
                              attention(q, k, v, ids, backend), atol=1e-3)


def test_last_scale_of_a_prefix_is_its_own():
    """Sequence length -> tokens of its last scale: a prefix of whole scales (FlowAR's
    inference) counts its own last scale, not the model's."""
    from varbench.models.var import last_scale_tokens

    assert last_scale_tokens([2, 4, 8]) == {4: 4, 20: 16, 84: 64}


def test_auto_runs_bmm_only_on_unmasked_queries(monkeypatch):
    """bmm's measured rows are unmasked last-scale queries; a masked pass under auto
    goes to sdpa (bmm measured 0.9-1.3x sdpa there)."""
    import varbench.models.attention as A

    used = []
    for name in ("bmm", "sdpa"):
        real = A._IMPLS[name]
        monkeypatch.setitem(A._IMPLS, name, lambda *a, _n=name, _f=real: used.append(_n) or _f(*a))
    ids = _ids()
    q, k, v = (t[..., :8] for t in _qkv(heads=1, grad=False))
    attention(q, k, v, ids, "auto")
    attention(q[:, :, -16:], k, v, ids, "auto", full=True)
    assert used == ["sdpa", "bmm"]
