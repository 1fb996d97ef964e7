"""Training-time position ids: fine-tune at the short window N, extend to the target T.

Every method here turns one training sequence of ``N`` tokens into ``N`` position ids that
cover the target window ``[0, T)``, so the model sees relative distances up to ``T - 1``
while the attention cost stays that of ``N`` tokens. All methods share the invariants

* a 1-D ``torch.long`` tensor of length ``N``;
* starts at 0, strictly increasing, last id ``< T``;
* chunk-wise contiguous: inside each chunk the ids are consecutive (only chunk boundaries jump),
  because the model must still see ordinary local ``+1`` steps (PoSE, CREAM);
* deterministic given a ``torch.Generator`` or an ``int`` seed.

Methods
-------
``cream``   CREAM, Wu, Zhao & Zheng, "Never Miss A Beat: An Efficient Recipe for Context Window
            Extension of Large Language Models with Consistent 'Middle' Enhancement",
            arXiv:2406.07138 (NeurIPS 2024), Sec. 3 (continuity/relativity indexing, truncated
            Gaussian middle sampling); reference code github.com/wutong4012/CREAM ``src/train.py``.
``pose``    PoSE, Zhu et al., "PoSE: Efficient Context Window Extension of LLMs via Positional
            Skip-wise Training", arXiv:2309.10400 (ICLR 2024), Sec. 3.2; reference code
            github.com/dwzhu-pku/PoSE ``src/train_pose.py``.
``randpos`` RandPos, Ruoss et al., "Randomized Positional Encodings Boost Length Generalization
            of Transformers", arXiv:2305.16843 (ACL 2023); the baseline CREAM and PoSE compare
            against.

The transformers 5.x trap (why training always passes an ``attention_mask``)
----------------------------------------------------------------------------
With ``attention_mask=None`` and no cache -- ``use_cache=False``, the training setting (with
``use_cache=True`` Llama builds a ``DynamicCache`` first and the check is skipped) --
transformers 5.x masking (``transformers.masking_utils._preprocess_mask_arguments`` ->
``find_packed_sequence_indices``) treats every place where consecutive ``position_ids`` differ
by anything other than 1 as the boundary between two *packed* sequences and builds a
block-diagonal causal mask. A skip-wise sample would then be cut into independent pieces and
the later chunks could not attend to the earlier ones -- exactly the long-range dependency the
method is supposed to teach. Passing an explicit all-ones 2-D ``attention_mask`` disables that
detection and keeps the sample ONE causal sequence; ``longctx.training.batching.batch_inputs`` passes
one whenever a position-id method is in use (tests/test_position_ids.py shows the trap).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

__all__ = [
    "CreamLayout",
    "POSITION_ID_METHODS",
    "cream_layout",
    "cream_position_ids",
    "make_position_ids",
    "pose_position_ids",
    "randpos_position_ids",
    "sample_truncated_normal",
]

GeneratorLike = torch.Generator | int

MIN_SEQ_LEN = 3  # CREAM needs a head, a middle and a tail of >= 1 token each


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _as_generator(generator: GeneratorLike) -> torch.Generator:
    """A CPU generator from a generator or an int seed (a bool is rejected: it is an int by accident)."""
    if isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, int) and not isinstance(generator, bool):
        g = torch.Generator(device="cpu")
        g.manual_seed(generator)
        return g
    raise TypeError(
        f"generator must be a torch.Generator or an int seed, got {type(generator).__name__}"
    )


def _check_lengths(N: int, T: int) -> None:
    """Validate the short window N (train.seq_len) and the target window T (target_length)."""
    for name, value in (("N (train.seq_len)", N), ("T (target_length)", T)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an int, got {value!r}")
    if N < MIN_SEQ_LEN:
        raise ValueError(f"N (train.seq_len) must be >= {MIN_SEQ_LEN}, got N={N}")
    if N > T:
        raise ValueError(
            f"N (train.seq_len) must be <= T (target_length), got N={N} > T={T}"
        )


def _randint(low: int, high: int, g: torch.Generator) -> int:
    """Uniform integer in the CLOSED interval [low, high]."""
    return int(torch.randint(low, high + 1, (1,), generator=g).item())


def _uniform(g: torch.Generator) -> float:
    """Uniform float64 in [0, 1)."""
    return float(torch.rand((), generator=g, dtype=torch.float64).item())


def _std_normal_cdf(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def sample_truncated_normal(
    mean: float, std: float, low: float, high: float, g: torch.Generator
) -> float:
    """One draw from N(mean, std^2) restricted to [low, high] and RENORMALISED.

    Inverse-CDF sampling: u ~ U(Phi(a), Phi(b)) with a, b the standardised bounds, then
    x = mean + std * Phi^{-1}(u). Every draw lands inside [low, high] and the density is the
    Gaussian one divided by Phi(b) - Phi(a), i.e. no probability mass piles up at the bounds.
    """
    if high <= low or std <= 0:
        return float(low)
    a = (low - mean) / std
    b = (high - mean) / std
    pa, pb = _std_normal_cdf(a), _std_normal_cdf(b)
    u = pa + (pb - pa) * _uniform(g)
    # ndtri is float64-accurate; clamp u away from {0, 1} where it would return +-inf
    u = min(max(u, 1e-300), 1.0 - 1e-16)
    x = mean + std * float(torch.special.ndtri(torch.tensor(u, dtype=torch.float64)).item())
    # rounding at the extreme tails can step a hair outside the interval
    return min(max(x, low), high)


# --------------------------------------------------------------------------------------------
# CREAM
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CreamLayout:
    """Where the three CREAM segments sit in the target window.

    ``head`` ids are ``[0, head)``, the middle ids ``[middle_start, middle_start + middle)``,
    the tail ids ``[T - tail, T)``; ``continuity`` says which indexing the coin picked.
    """

    N: int
    T: int
    head: int
    middle: int
    tail: int
    middle_start: int
    continuity: bool

    @property
    def skip(self) -> int:
        """Gap between the head's end and the middle's start (0: head and middle are adjacent)."""
        return self.middle_start - self.head

    def position_ids(self) -> torch.Tensor:
        return torch.cat(
            [
                torch.arange(0, self.head, dtype=torch.long),
                torch.arange(self.middle_start, self.middle_start + self.middle, dtype=torch.long),
                torch.arange(self.T - self.tail, self.T, dtype=torch.long),
            ]
        )


def cream_layout(N: int, T: int, generator: GeneratorLike, sigma: float = 3.0,
                 p_continuity: float = 0.5) -> CreamLayout:
    """Draw one CREAM segment layout; :func:`cream_position_ids` turns it into ids.

    See :func:`cream_position_ids` for the method; this is split out so that callers (and the
    tests) can see which branch the coin picked and where the middle landed.
    """
    _check_lengths(N, T)
    if not 0.0 <= p_continuity <= 1.0:
        raise ValueError(f"p_continuity must be in [0, 1], got {p_continuity}")
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    g = _as_generator(generator)

    # 1. The coin (paper Sec. 3.1/3.2; public code: random.randint(0, 1)).
    continuity = _uniform(g) < p_continuity
    if continuity:
        # Continuity indexing: a short head and tail of k = 4 * factor tokens, with the public
        # code's integer factor = T // N. Clamped so the middle keeps >= 1 token when N is
        # tiny (4 * factor >= N / 2 never happens at real sizes, e.g. N=4096, f=64 -> 256).
        head = min(4 * (T // N), (N - 1) // 2)
    else:
        # Relativity indexing: head and tail of a third of the window each.
        head = N // 3
    tail = head
    middle = N - head - tail

    # 2. Middle placement (paper Sec. 3.3, truncated Gaussian middle sampling). The public code
    # works in half-window units x (x * N/2 tokens): x ~ Gaussian(mu, sigma) on [2, 2f] with
    # mu = 9 (= 1 + f for its f = 8, i.e. the centre of [2, 2f]; we use 1 + f for any f) and
    # sigma = 3, and the middle must END before alpha * N - tail with alpha = x / 2.
    # In tokens: X = x * N / 2 ~ Gaussian(mean (N + T) / 2, std sigma * N / 2) on [N, T], and
    # the middle ends at X - tail - 1, i.e. starts at head + (X - N). The valid start range
    # [head, head + T - N] is exactly [N, T] shifted, so every X gives a legal layout.
    f = T / N
    mean_x = (1.0 + f) * N / 2.0  # = (N + T) / 2, the middle of the target window's skip range
    std_x = sigma * N / 2.0
    X = sample_truncated_normal(mean_x, std_x, float(N), float(T), g)
    skip = min(max(int(math.floor(X - N)), 0), T - N)
    return CreamLayout(
        N=N, T=T, head=head, middle=middle, tail=tail, middle_start=head + skip,
        continuity=continuity,
    )


def cream_position_ids(N: int, T: int, generator: GeneratorLike, sigma: float = 3.0,
                       p_continuity: float = 0.5) -> torch.Tensor:
    """CREAM position ids (Wu et al., arXiv:2406.07138, Sec. 3; code wutong4012/CREAM).

    The N tokens are split into head / middle / tail:

    * a fair coin (probability ``p_continuity`` for continuity) picks *relativity* indexing,
      head = tail = ``N // 3``, or *continuity* indexing, head = tail = ``4 * (T // N)``
      (the public code's ``4 * factor`` with integer ``factor = T // N``; clamped to
      ``(N - 1) // 2`` so the middle is never empty for tiny N);
    * head ids are ``0 .. head-1``; tail ids are the END of the target window,
      ``T - tail .. T-1`` (f * N = T);
    * the middle block (``N - head - tail`` consecutive ids) starts at ``head + skip`` where
      ``skip = floor(X - N)`` and X follows the paper's truncated Gaussian (Sec. 3.3) in token
      units: mean ``(1 + f) * N / 2 = (N + T) / 2``, std ``sigma * N / 2`` (sigma in half-window
      units, default 3 as in the code), truncated to ``[N, T]``. X is the public code's
      ``alpha * N`` bound (``alpha = x / 2``): the middle ends at ``X - tail - 1``.

    Differences from the public code (``CREAM()`` in ``src/train.py``), all deliberate:

    * **Proper truncation.** The code computes the UNtruncated CDF on ``linspace(2, 2f)`` and
      inverts it with ``np.interp``, which clips: every uniform draw below ``Phi((2-mu)/sigma)``
      or above ``Phi((2f-mu)/sigma)`` lands on the bound, and the result is then floored to an
      integer x. At f = 4 (mu = 5) about a quarter of the samples (x < 3: Phi(-2/3) = 0.25) get
      alpha = 1, i.e. the middle glued to the head with NO skip, and ~16% pile up on x = 2f.
      Here the Gaussian is restricted to the interval and renormalised (inverse-CDF sampling
      between Phi(a) and Phi(b)), so there is no mass at the bounds and P(skip = 0) ~ 0.1%.
    * **Continuous alpha.** x is not floored to the half-window grid {2, ..., 2f}.
    * **No second uniform draw.** The code then draws the middle end uniformly in
      ``[head + (len_middle - 1) * alpha, alpha * N - tail - 1]``; we place the middle end at the
      upper bound ``alpha * N - tail - 1`` so that the middle start itself follows the
      (discretised) truncated Gaussian. The continuous alpha supplies the spread the uniform
      draw gave the grid.
    * **mu = 1 + f** for any f (the code hard-codes mu = 9, which is 1 + f only for f = 8), and
      f = T / N as a float (the code uses ``T // N``) for the Gaussian.
    * The coin probability is exposed as ``p_continuity`` (the code: fixed 0.5, drawn once per
      ``datasets.map`` batch; here once per sample).
    """
    return cream_layout(N, T, generator, sigma=sigma, p_continuity=p_continuity).position_ids()


# --------------------------------------------------------------------------------------------
# PoSE
# --------------------------------------------------------------------------------------------


def pose_position_ids(
    N: int, T: int, generator: GeneratorLike, num_chunks: int = 2
) -> torch.Tensor:
    """PoSE position ids (Zhu et al., arXiv:2309.10400, Sec. 3.2; code dwzhu-pku/PoSE).

    The window is cut into ``num_chunks`` chunks c_0..c_{k-1} of lengths l_i >= 1 with
    sum l_i = N, and chunk i gets the ids ``{st_i + u_i, ..., st_i + u_i + l_i - 1}`` where
    ``st_i = sum_{j<i} l_j`` and the skipping bias terms follow the paper's recursion

        u_0 = 0,   u_i ~ U({u_{i-1}, ..., T - N})        (cumulative, non-decreasing)

    so ids are strictly increasing, chunk-contiguous and the last id ``N - 1 + u_{k-1} < T``.
    u_0 = 0 follows the code's revision ("lt = 0 ... makes the coverage possibility more
    uniform for large relative positions"); it also pins the first id at 0.

    Chunk lengths: the cut points are ``num_chunks - 1`` distinct integers drawn uniformly from
    ``{1, ..., N-1}`` (a uniform composition of N into positive parts). Deviation: the public
    code (two chunks only) draws the first chunk length from ``U{1, ..., (N+1)//2}``, i.e. the
    first chunk is never longer than half the window; here it is ``U{1, ..., N-1}``.
    """
    _check_lengths(N, T)
    if isinstance(num_chunks, bool) or not isinstance(num_chunks, int) or not 1 <= num_chunks <= N:
        raise ValueError(f"num_chunks must be an int in [1, N={N}], got {num_chunks!r}")
    g = _as_generator(generator)

    if num_chunks > 1:
        cuts = torch.randperm(N - 1, generator=g)[: num_chunks - 1] + 1
        cuts = torch.sort(cuts).values.tolist()
    else:
        cuts = []
    bounds = [0, *cuts, N]

    ids = torch.arange(N, dtype=torch.long)
    u = 0  # u_0 = 0: the first chunk starts at position 0
    for i in range(1, num_chunks):
        u = _randint(u, T - N, g)  # u_i ~ U({u_{i-1}, ..., T - N})
        ids[bounds[i] : bounds[i + 1]] += u
    return ids


# --------------------------------------------------------------------------------------------
# RandPos
# --------------------------------------------------------------------------------------------


def randpos_position_ids(N: int, T: int, generator: GeneratorLike) -> torch.Tensor:
    """RandPos position ids (Ruoss et al., arXiv:2305.16843; CREAM's/PoSE's baseline).

    Sorted distinct positions drawn uniformly from ``[0, T)``, with the first pinned to 0:
    0 plus ``N - 1`` distinct draws from ``{1, ..., T-1}``. Deviation: the RandPos code in the
    CREAM/PoSE repositories samples all N from ``range(T)`` and does not pin 0; pinning keeps the
    "starts at 0" invariant shared by every method here (the model always sees the BOS-like
    first token at position 0, as at inference).
    """
    _check_lengths(N, T)
    g = _as_generator(generator)
    rest = torch.randperm(T - 1, generator=g)[: N - 1] + 1
    rest = torch.sort(rest).values
    return torch.cat([torch.zeros(1, dtype=torch.long), rest.to(torch.long)])


# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------

POSITION_ID_METHODS: dict[str, Callable[..., torch.Tensor]] = {
    "cream": cream_position_ids,
    "pose": pose_position_ids,
    "randpos": randpos_position_ids,
}


def make_position_ids(
    method: str, N: int, T: int, seed_or_generator: GeneratorLike, **kw
) -> torch.Tensor:
    """Dispatch to a method of :data:`POSITION_ID_METHODS` by name.

    Raises ``ValueError`` naming the method and the allowed values for an unknown ``method``,
    and naming the argument (``N``/train.seq_len, ``T``/target_length) for bad lengths.
    Extra keyword arguments go to the method (``sigma``, ``p_continuity`` for cream,
    ``num_chunks`` for pose).
    """
    if method not in POSITION_ID_METHODS:
        raise ValueError(
            f"unknown position-id method {method!r}; allowed: {sorted(POSITION_ID_METHODS)}"
        )
    _check_lengths(N, T)
    return POSITION_ID_METHODS[method](N, T, seed_or_generator, **kw)
