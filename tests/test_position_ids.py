"""Tests for longctx.position_ids: invariants, determinism, CREAM's truncated Gaussian, the mask trap."""

import math

import numpy as np
import pytest
import torch

from longctx.position_ids import (
    POSITION_ID_METHODS,
    cream_layout,
    cream_position_ids,
    make_position_ids,
    pose_position_ids,
    randpos_position_ids,
)

# (N, T) with T/N = 1, 2, 4, 8 plus a non-integer ratio and a tiny window
SHAPES = [(64, 64), (64, 128), (64, 256), (64, 512), (100, 350), (3, 24), (16, 128)]
SEEDS = range(60)


def _segments(ids: torch.Tensor) -> list[tuple[int, int]]:
    """Maximal runs of consecutive ids, as (start index, end index exclusive)."""
    steps = torch.diff(ids)
    breaks = (torch.nonzero(steps != 1).flatten() + 1).tolist()
    bounds = [0, *breaks, len(ids)]
    return list(zip(bounds[:-1], bounds[1:]))


def _check_common(ids: torch.Tensor, N: int, T: int) -> None:
    assert ids.dtype == torch.long and ids.dim() == 1
    assert len(ids) == N
    assert ids[0].item() == 0
    assert ids[-1].item() < T
    assert bool((torch.diff(ids) > 0).all()), "not strictly increasing"


# ------------------------------------------------------------------ invariants per method


@pytest.mark.parametrize("N,T", SHAPES)
def test_cream_invariants(N, T):
    for seed in SEEDS:
        for p in (0.0, 0.5, 1.0):
            lay = cream_layout(N, T, seed, p_continuity=p)
            ids = cream_position_ids(N, T, seed, p_continuity=p)
            assert torch.equal(ids, lay.position_ids())
            _check_common(ids, N, T)
            h, m, t = lay.head, lay.middle, lay.tail
            assert h >= 1 and m >= 1 and t >= 1 and h + m + t == N and h == t
            # head is 0..head-1, tail ends at T-1 and is contiguous, middle is contiguous
            assert torch.equal(ids[:h], torch.arange(h))
            assert torch.equal(ids[N - t :], torch.arange(T - t, T))
            mid = ids[h : h + m]
            assert torch.equal(mid, torch.arange(mid[0].item(), mid[0].item() + m))
            assert mid[0].item() == lay.middle_start
            # at most two jumps: head->middle and middle->tail
            assert len(_segments(ids)) <= 3
            if lay.continuity:
                assert h == min(4 * (T // N), (N - 1) // 2)
            else:
                assert h == N // 3


@pytest.mark.parametrize("N,T", SHAPES)
@pytest.mark.parametrize("num_chunks", [1, 2, 3])
def test_pose_invariants(N, T, num_chunks):
    for seed in SEEDS:
        ids = pose_position_ids(N, T, seed, num_chunks=num_chunks)
        _check_common(ids, N, T)
        jumps = int((torch.diff(ids) != 1).sum())
        assert jumps <= num_chunks - 1
        # each chunk is contiguous by construction of _segments; check the number of segments
        assert len(_segments(ids)) == jumps + 1


def test_pose_skip_reaches_the_whole_target():
    """u_1 ~ U{0..T-N}: over many seeds the last id covers both ends of its range."""
    N, T = 8, 32
    last = {pose_position_ids(N, T, s)[-1].item() for s in range(600)}
    assert min(last) == N - 1 and max(last) == T - 1


@pytest.mark.parametrize("N,T", SHAPES)
def test_randpos_invariants(N, T):
    for seed in SEEDS:
        ids = randpos_position_ids(N, T, seed)
        _check_common(ids, N, T)
        assert len(set(ids.tolist())) == N


def test_randpos_full_window_is_identity():
    assert torch.equal(randpos_position_ids(10, 10, 3), torch.arange(10))


# ------------------------------------------------------------------ determinism


@pytest.mark.parametrize("method", sorted(POSITION_ID_METHODS))
@pytest.mark.parametrize("N,T", [(64, 128), (64, 256), (64, 512)])
def test_same_seed_same_ids_different_seed_different_ids(method, N, T):
    a = make_position_ids(method, N, T, 123)
    b = make_position_ids(method, N, T, 123)
    assert torch.equal(a, b)
    # a Generator seeded the same way gives the same ids as the int seed
    g = torch.Generator().manual_seed(123)
    assert torch.equal(make_position_ids(method, N, T, g), a)
    outs = {tuple(make_position_ids(method, N, T, s).tolist()) for s in range(20)}
    assert len(outs) >= 15, f"{method}: seeds barely change the ids ({len(outs)} distinct of 20)"


def test_generator_advances_between_calls():
    g = torch.Generator().manual_seed(0)
    a = cream_position_ids(64, 512, g)
    b = cream_position_ids(64, 512, g)
    assert not torch.equal(a, b)


# ------------------------------------------------------------------ CREAM distributions


def _phi(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def _trunc_norm_cdf(x: float, mu: float, sd: float, lo: float, hi: float) -> float:
    if x <= lo:
        return 0.0
    if x >= hi:
        return 1.0
    za, zb = (lo - mu) / sd, (hi - mu) / sd
    return (_phi((x - mu) / sd) - _phi(za)) / (_phi(zb) - _phi(za))


def test_cream_middle_start_follows_truncated_gaussian():
    """KS test of the middle-block skip against the truncated normal CDF, computed here by hand.

    The paper's Gaussian in half-window units (x ~ N(1 + f, 3) on [2, 2f]) is, in tokens,
    X = x * N/2 ~ N((N + T)/2, (3N/2)^2) on [N, T], and skip = middle_start - head = floor(X - N).
    So P(skip <= k) = F_X(N + k + 1).
    """
    N, T, n = 256, 1024, 2000  # f = 4
    g = torch.Generator().manual_seed(2024)
    skips = np.array([cream_layout(N, T, g).skip for _ in range(n)])
    assert skips.min() >= 0 and skips.max() <= T - N

    f = T / N
    mu, sd = (1 + f) * N / 2, 3.0 * N / 2
    ks = np.arange(0, T - N + 1)
    emp = np.searchsorted(np.sort(skips), ks, side="right") / n
    theo = np.array([_trunc_norm_cdf(N + k + 1, mu, sd, N, T) for k in ks])
    d = float(np.max(np.abs(emp - theo)))
    assert d < 1.63 / math.sqrt(n), f"KS statistic {d:.4f} too large"  # 1% critical value

    # The public code's clipped, floored scheme puts every x < 3 (x in half-windows) on x = 2,
    # i.e. skip = 0: Phi((3 - 5)/3) = 25% of samples at f = 4. Properly truncated, P(skip = 0) is
    # P(N <= X < N + 1), about 0.1%, and the first half-window holds ~14%, not 25%.
    public_no_skip = _phi((3 - (1 + f)) / 3.0)
    assert 0.24 < public_no_skip < 0.26
    no_skip = float(np.mean(skips == 0))
    expected_no_skip = _trunc_norm_cdf(N + 1, mu, sd, N, T)
    assert expected_no_skip < 0.01
    assert no_skip < 0.02
    first_half_window = float(np.mean(skips < N // 2))
    expected_first = _trunc_norm_cdf(N + N // 2, mu, sd, N, T)
    assert abs(expected_first - 0.137) < 0.005
    assert abs(first_half_window - expected_first) < 0.03
    assert abs(first_half_window - public_no_skip) > 0.08
    # and no mass piles up at the far bound either (the code puts ~16% on x = 2f)
    assert float(np.mean(skips == T - N)) < 0.01

    # Power check: the same KS test rejects a numpy re-enactment of the public code's scheme
    # (np.interp on the untruncated CDF, floor to the half-window grid, uniform end draw).
    rng = np.random.default_rng(0)
    grid = np.linspace(2, 2 * f, 1000)
    cdf = np.array([_phi((v - (1 + f)) / 3.0) for v in grid])
    head = N // 3
    mid = N - 2 * head
    public = []
    for _ in range(n):
        alpha = int(np.interp(rng.random(), cdf, grid)) / 2
        end = rng.integers(int(head + (mid - 1) * alpha), int(alpha * N - head - 1) + 1)
        public.append(end - (mid - 1) - head)
    public = np.array(public)
    emp_pub = np.searchsorted(np.sort(public), ks, side="right") / n
    assert float(np.max(np.abs(emp_pub - theo))) > 0.2
    assert abs(float(np.mean(public == 0)) - public_no_skip) < 0.04


def test_cream_sigma_controls_spread():
    N, T = 64, 512
    g = torch.Generator().manual_seed(5)
    narrow = np.array([cream_layout(N, T, g, sigma=0.5).skip for _ in range(500)])
    wide = np.array([cream_layout(N, T, g, sigma=30.0).skip for _ in range(500)])
    centre = (T - N) / 2
    assert abs(narrow.mean() - centre) < 10 and narrow.std() < 0.5 * N / 2 * 1.2
    # sigma >> range: nearly uniform on [0, T - N] (std (T-N)/sqrt(12))
    assert abs(wide.std() - (T - N) / math.sqrt(12)) < 0.15 * (T - N) / math.sqrt(12)


@pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
def test_cream_coin_probability(p):
    n = 2000
    g = torch.Generator().manual_seed(7)
    frac = np.mean([cream_layout(256, 1024, g, p_continuity=p).continuity for _ in range(n)])
    assert abs(frac - p) < 4 * math.sqrt(p * (1 - p) / n)


def test_cream_branch_head_lengths():
    # continuity: 4 * (T // N); relativity: N // 3
    assert cream_layout(4096, 32768, 0, p_continuity=1.0).head == 32
    assert cream_layout(4096, 32768, 0, p_continuity=0.0).head == 4096 // 3
    assert cream_layout(4096, 1000 * 4096 // 3, 0, p_continuity=1.0).head == 4 * 333


def test_cream_bad_parameters():
    with pytest.raises(ValueError, match="p_continuity"):
        cream_position_ids(64, 256, 0, p_continuity=1.5)
    with pytest.raises(ValueError, match="sigma"):
        cream_position_ids(64, 256, 0, sigma=0)


# ------------------------------------------------------------------ registry / validation


def test_registry_names():
    assert set(POSITION_ID_METHODS) == {"cream", "pose", "randpos"}


def test_make_position_ids_forwards_kwargs():
    ids = make_position_ids("pose", 64, 512, 1, num_chunks=4)
    assert int((torch.diff(ids) != 1).sum()) <= 3
    a = make_position_ids("cream", 64, 512, 1, sigma=1.0, p_continuity=1.0)
    assert torch.equal(a, cream_position_ids(64, 512, 1, sigma=1.0, p_continuity=1.0))


def test_unknown_method_names_method_and_allowed():
    with pytest.raises(ValueError) as e:
        make_position_ids("yarn", 64, 256, 0)
    msg = str(e.value)
    assert "yarn" in msg and "cream" in msg and "pose" in msg and "randpos" in msg


@pytest.mark.parametrize("method", sorted(POSITION_ID_METHODS))
def test_bad_lengths_name_the_argument(method):
    with pytest.raises(ValueError, match=r"N \(train\.seq_len\).*T \(target_length\)"):
        make_position_ids(method, 512, 256, 0)
    with pytest.raises(ValueError, match=r"N \(train\.seq_len\) must be >= 3"):
        make_position_ids(method, 2, 256, 0)
    # the functions validate on their own too
    with pytest.raises(ValueError, match="target_length"):
        POSITION_ID_METHODS[method](512, 256, 0)


def test_pose_bad_num_chunks():
    with pytest.raises(ValueError, match="num_chunks"):
        pose_position_ids(8, 64, 0, num_chunks=9)
    with pytest.raises(ValueError, match="num_chunks"):
        pose_position_ids(8, 64, 0, num_chunks=0)


def test_bad_generator_type():
    with pytest.raises(TypeError):
        randpos_position_ids(8, 64, "seed")


# ------------------------------------------------------------------ the transformers mask trap


def with_mask(ids, pos):
    return {"input_ids": ids[None], "position_ids": pos[None], "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}


def test_first_chunk_reaches_last_chunk_only_with_explicit_mask(tiny_llama):
    """With jumping ids, attention_mask=None and no cache (use_cache=False, the training setting)
    transformers 5.x splits the sample into "packed" sequences; an all-ones attention_mask (what
    longctx.training.batching.batch_inputs passes for position-id methods) keeps it one."""
    N = 12
    pos = torch.cat([torch.arange(0, 5), torch.arange(50, 57)])  # one jump, last id 56 < 64
    assert len(pos) == N
    torch.manual_seed(1)
    ids_a = torch.randint(0, 128, (N,))
    ids_b = ids_a.clone()
    ids_b[1] = (ids_a[1] + 1) % 128  # change one token in the first chunk

    with torch.no_grad():
        la = tiny_llama(**with_mask(ids_a, pos), use_cache=False).logits[0, -1]
        lb = tiny_llama(**with_mask(ids_b, pos), use_cache=False).logits[0, -1]
        assert (la - lb).abs().max() > 1e-4, "first chunk must influence the last chunk"

        # the trap: no mask + a jump in position_ids = two packed sequences
        na = tiny_llama(input_ids=ids_a[None], position_ids=pos[None], use_cache=False).logits[0, -1]
        nb = tiny_llama(input_ids=ids_b[None], position_ids=pos[None], use_cache=False).logits[0, -1]
        assert torch.allclose(na, nb, atol=1e-6), "no mask: chunks cannot see each other"

        # sanity: with contiguous ids and no mask, there is no split
        cont = torch.arange(N)[None]
        ca = tiny_llama(input_ids=ids_a[None], position_ids=cont, use_cache=False).logits[0, -1]
        cb = tiny_llama(input_ids=ids_b[None], position_ids=cont, use_cache=False).logits[0, -1]
        assert (ca - cb).abs().max() > 1e-4

        # the masked run differs from the no-mask run: the latter saw only the second chunk
        assert (la - na).abs().max() > 1e-4
        # with the mask, use_cache (eval default True) does not change the result
        lc = tiny_llama(**with_mask(ids_a, pos), use_cache=True).logits[0, -1]
        assert torch.allclose(la, lc, atol=1e-5)
