"""A decisive comparison: Wilson intervals, effective length, metric keys, difficulty knobs, report.

References are independent of the code under test: the Wilson bounds are the roots of the quadratic
that defines them (Wilson 1927), solved with numpy; the hand values come from the closed forms at
the edges (0/n: hi = z²/(n+z²); n/n: lo = n/(n+z²)).
"""

import math
import random

import numpy as np
import pytest
import yaml

from longctx.aggregate import effective_lengths, summarize
from longctx.evaluation.metric_key import MetricKey
from longctx.evaluation.needle import generate_needle
from longctx.evaluation.passkey import generate_passkey
from longctx.evaluation.samples import EvalSample
from longctx.evaluation.stats import Z95, effective_length, in_window_score, wilson_interval
from longctx.evaluation.suite import accuracy_metrics
from longctx.io import atomic_write_json
from longctx.report import summaries_as_show, training_budget, write_report
from tests.test_eval_tasks import build_tokenizer

# --------------------------------------------------------------------------- Wilson interval


def wilson_by_roots(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The p with (k/n - p)² = z² p (1 - p) / n: (1 + z²/n) p² - (2k/n + z²/n) p + (k/n)² = 0."""
    ph = k / n
    roots = np.roots([1 + z * z / n, -(2 * ph + z * z / n), ph * ph]).real
    return float(roots.min()), float(roots.max())


@pytest.mark.parametrize("k,n", [(1, 10), (5, 10), (9, 10), (3, 7), (25, 50), (44, 50), (49, 50), (1, 1000)])
def test_wilson_matches_quadratic_roots(k, n):
    assert wilson_interval(k, n) == pytest.approx(wilson_by_roots(k, n), abs=1e-12)


def test_wilson_hand_values_and_edges():
    z2 = Z95**2
    assert wilson_interval(0, 10) == (0.0, pytest.approx(z2 / (10 + z2)))  # 0.2775
    assert wilson_interval(10, 10) == (pytest.approx(10 / (10 + z2)), 1.0)  # 0.7225
    assert wilson_interval(50, 50)[0] == pytest.approx(0.92865, abs=1e-5)
    assert wilson_interval(5, 10) == (pytest.approx(0.23659, abs=1e-5), pytest.approx(0.76341, abs=1e-5))
    assert wilson_interval(0, 1) == (0.0, pytest.approx(z2 / (1 + z2)))
    for bad in ((0, 0), (3, 2), (-1, 5)):
        with pytest.raises(ValueError, match="wilson_interval"):
            wilson_interval(*bad)


def test_wilson_narrows_with_samples():
    widths = [hi - lo for lo, hi in (wilson_interval(round(0.8 * n), n) for n in (5, 50, 500))]
    assert widths[0] > widths[1] > widths[2] > 0


# --------------------------------------------------------------------------- effective length


def test_effective_length_definition():
    scores = {4096: 1.0, 8192: 0.95, 16384: 0.92, 32768: 0.4, 65536: 0.95}
    assert effective_length(scores, 0.9) == 16384  # 64k passes again, but the score did not *stay* above
    assert effective_length(scores, 0.99) == 4096
    assert effective_length({4096: 0.5, 8192: 1.0}, 0.9) == 0  # never reaches: fails at the shortest length
    assert effective_length({8192: 1.0, 4096: 1.0}, 0.9) == 8192  # always: the longest evaluated (a lower bound)
    assert effective_length({4096: 0.9}, 0.9 * 1.0) == 4096  # the threshold itself passes
    assert effective_length({4096: 1.0, 8192: float("nan"), 16384: 1.0}, 0.5) == 4096
    assert effective_length({}, 0.9) == 0


def test_in_window_score_is_mean_inside_native_window():
    assert in_window_score({4096: 1.0, 8192: 0.8, 16384: 0.0}, 8192) == pytest.approx(0.9)
    assert in_window_score({16384: 1.0}, 8192) is None


def test_aggregate_effective_lengths():
    base = {"info.native_window": 8192, "passkey.4096": 1.0, "passkey.4096.n": 50, "passkey.8192": 0.9,
            "passkey.8192.n": 50, "passkey.16384": 0.0, "passkey.16384.n": 50, "ppl.4096": 9.0}
    ext = {"passkey.4096": 1.0, "passkey.4096.n": 50, "passkey.8192": 0.88, "passkey.8192.n": 50,
           "passkey.16384": 0.86, "passkey.16384.n": 50}
    out = effective_lengths({"base": base, "extended": ext})
    assert out == {"passkey.in_window.base": 0.95, "passkey.threshold": 0.855,
                   "passkey.effective_length.base": 8192, "passkey.effective_length.extended": 16384}
    assert effective_lengths({"base": {k: v for k, v in base.items() if k != "info.native_window"}}) == {}
    summary = summarize({"base": base, "extended": ext})
    assert summary["passkey.16384.n.extended"] == 50 and summary["passkey.effective_length.extended"] == 16384


# --------------------------------------------------------------------------- metric keys


KEYS = [
    "passkey.16384", "passkey.16384.d0.5", "passkey.16384.d0.1.lo", "passkey.4096.hi.extended",
    "passkey.4096.d1.n.base", "ppl.16384.bucket3.extended", "ppl.8192", "needle.32768.d0.25",
    "passkey.effective_length.extended", "passkey.threshold", "passkey.in_window.base",
    "variable_tracking.8192.n", "longbench.hotpotqa.base", "check.greedy_agreement.extended",
    "info.native_window.base", "train.loss_first",
]


@pytest.mark.parametrize("key", KEYS)
def test_metric_key_round_trip(key):
    assert MetricKey.parse(key).format() == key
    k = MetricKey.parse(key)
    assert MetricKey.parse(k.format()) == k


def test_metric_key_fields():
    assert MetricKey.parse("passkey.16384.d0.5.lo.extended") == MetricKey("passkey", 16384, 0.5, None, "lo", "extended")
    assert MetricKey.parse("ppl.8192.bucket3.base") == MetricKey("ppl", 8192, detail="bucket3", model="base")
    assert MetricKey.parse("longbench.hotpotqa.extended") == MetricKey("longbench.hotpotqa", model="extended")
    assert MetricKey.parse("passkey.effective_length.base") == MetricKey("passkey", detail="effective_length", model="base")
    assert MetricKey("passkey", 4096, 0.1).format() == "passkey.4096.d0.1"  # the format suite.py always wrote
    assert MetricKey.parse("passkey.4096").is_cell and not MetricKey.parse("passkey.4096.lo").is_cell


def test_metric_key_errors_name_the_key():
    with pytest.raises(ValueError, match="passkey.4096.x0.5"):
        MetricKey.parse("passkey.4096.x0.5")
    with pytest.raises(ValueError, match="model"):
        MetricKey("passkey", 4096, model="finetuned")
    with pytest.raises(ValueError, match="bad task"):
        MetricKey("extended")


def _sample(task, length, depth, i):
    return EvalSample(task, length, depth, i, [1, 2], [3], "x")


def test_accuracy_metrics_with_intervals():
    samples = [_sample("passkey", 4096, d, i) for d in (0.2, 0.8) for i in range(5)]
    correct = [True, True, True, True, False, True, False, False, False, False]
    m = accuracy_metrics(samples, correct)
    assert m["passkey.4096"] == 5 / 10 and m["passkey.4096.n"] == 10
    assert (m["passkey.4096.lo"], m["passkey.4096.hi"]) == tuple(round(v, 4) for v in wilson_by_roots(5, 10))
    assert m["passkey.4096.d0.2"] == 0.8 and m["passkey.4096.d0.8.n"] == 5
    assert m["passkey.4096.d0.8.lo"] == pytest.approx(wilson_by_roots(1, 5)[0], abs=1e-4)


# --------------------------------------------------------------------------- difficulty knobs


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def test_passkey_distractors(tokenizer):
    from longctx.evaluation.passkey import DISTRACTOR_NAMES

    plain = generate_passkey(tokenizer, 1024, 0.5, 3, 7, False)
    assert generate_passkey(tokenizer, 1024, 0.5, 3, 7, False, distractors=0) == plain  # knob off = original task
    samples = generate_passkey(tokenizer, 1024, 0.5, 20, 7, False, distractors=4)
    assert [s.answer for s in samples[:3]] == [p.answer for p in plain]  # keys drawn as before: only the haystack changed
    for s in samples:
        values = s.meta["distractors"]
        assert len(values) == 4 and len(set(values)) == 4 and s.answer not in values
        assert len(s.input_ids) + len(s.answer_ids) == 1024
        text = tokenizer.decode(s.input_ids)
        assert text.count(f"The pass key is {s.answer}.") == 1 and text.count(" key is ") == 5
        for v, off in zip(values, s.meta["distractor_offsets"]):
            decoy = tokenizer.decode(s.input_ids[off:off + 6])
            assert decoy.startswith(" The ") and decoy.split()[1] in DISTRACTOR_NAMES
            assert f"key is {v}." in text
    with pytest.raises(ValueError, match="distractors"):
        generate_passkey(tokenizer, 1024, 0.5, 1, 7, False, distractors=99)


def test_passkey_depth_with_distractors(tokenizer):
    """The pass key starts at round(depth * haystack) where the haystack counts filler and distractors."""
    from longctx.evaluation.passkey import ANSWER_PREFIX, DEPTH_JITTER, INSTRUCTION, QUESTION, key_sentence
    from longctx.evaluation.samples import prompt_frame

    enc = lambda t: tokenizer(t, add_special_tokens=False).input_ids  # noqa: E731
    frame = prompt_frame(tokenizer, False, ANSWER_PREFIX)
    for depth in (0.0, 0.3, 1.0):
        s = generate_passkey(tokenizer, 2048, depth, 1, 3, False, distractors=3)[0]
        start = len(frame.prefix_ids) + len(enc(INSTRUCTION))
        haystack = len(s.input_ids) - start - len(enc(QUESTION)) - len(frame.suffix_ids) - len(enc(key_sentence("pass", s.answer)))
        assert s.meta["needle_offset"] == start + round(s.meta["needle_depth"] * haystack)
        assert abs(s.meta["needle_depth"] - depth) <= DEPTH_JITTER + 1e-12
        assert all(o < s.meta["needle_offset"] or o > s.meta["needle_offset"] for o in s.meta["distractor_offsets"])


def test_needle_several_needles(tokenizer):
    single = generate_needle(tokenizer, 2048, 0.5, 3, 11, False)
    assert generate_needle(tokenizer, 2048, 0.5, 3, 11, False, needles=1) == single  # knob off = original task
    for depth in (0.1, 0.5, 0.9):
        for s in generate_needle(tokenizer, 2048, depth, 4, 11, False, needles=4):
            assert len(s.input_ids) + len(s.answer_ids) == 2048
            hs = s.meta["haystack_start"]
            assert s.meta["needle_offset"] - hs == round(depth * s.meta["haystack_len"])  # the asked needle's depth
            dish, word = s.meta["needle"].split("=")
            others = [o.split("=") for o in s.meta["others"]]
            assert len(others) == 3 and all(d != dish and w != word for d, w in others)
            assert len({d for d, _ in others}) == 3
            offsets = s.meta["needle_offsets"]
            assert offsets[0] == s.meta["needle_offset"]
            for (d, w), off in zip([(dish, word), *others], offsets):
                sentence = f" The special ingredient of the {d} recipe is {w}."
                n = len(tokenizer(sentence, add_special_tokens=False).input_ids)
                assert tokenizer.decode(s.input_ids[off:off + n]) == sentence
    with pytest.raises(ValueError, match="needles"):
        generate_needle(tokenizer, 2048, 0.5, 1, 11, False, needles=0)


# --------------------------------------------------------------------------- report with data efficiency


def test_training_budget():
    assert training_budget({"train": {"steps": 10, "batch_size": 4, "grad_accum": 2}}) == 80
    assert training_budget({"train": {"steps": 0}}) == 0
    assert training_budget({"method": "pi"}) is None


def test_training_budget_reads_the_recipe():
    params = {"recipe": "paper", "recipes": {"paper": {"train": {"steps": 100, "grad_accum": 32}}},
              "train": {"steps": 10, "batch_size": 1, "grad_accum": 1}}
    assert training_budget(params) == 3200  # the recipe's steps x grad_accum, not train.steps


def _experiment(root, method, steps, scores, native=4096, target=8192, ppl=None):
    """A folder with params.yaml and metrics/summary.json as the pipeline writes them (n = 50 per cell)."""
    per = {"base": {"info.native_window": native}, "extended": {"info.native_window": native}}
    rng = random.Random(f"{method}{steps}")
    for model, accs in (("base", [1.0, 0.96, 0.1, 0.0]), ("extended", scores)):
        oks = {}
        for length, acc in zip((2048, 4096, 8192, 16384), accs):
            k = round(acc * 50)
            oks[length] = [True] * k + [False] * (50 - k)
            rng.shuffle(oks[length])
        samples = [_sample("passkey", n, 0.5, i) for n in oks for i in range(50)]
        per[model].update(accuracy_metrics(samples, [ok for n in oks for ok in oks[n]]))
        for length in (2048, 4096, 8192, 16384):
            per[model][f"ppl.{length}"] = (ppl or {}).get(length, 10.0 + length / 1024 / (1 + steps))
            for b in range(4):
                per[model][f"ppl.{length}.bucket{b}"] = 10.0 + b
    folder = root / f"{method}-{steps}"
    atomic_write_json(folder / "metrics" / "summary.json", summarize(per, {"steps": steps}))
    (folder / "params.yaml").write_text(yaml.safe_dump(
        {"method": method, "target_length": target, "train": {"steps": steps, "batch_size": 2, "grad_accum": 3}}))
    return folder


def test_report_data_efficiency_from_summaries(tmp_path):
    runs = [_experiment(tmp_path / "runs", "yarn", s, [1.0, 1.0, 0.98 if s else 0.5, 0.9 if s else 0.2]) for s in (0, 10)]
    runs += [_experiment(tmp_path / "runs", "pi", s, [1.0, 0.9, 0.3, 0.0]) for s in (0, 10, 100)]
    report = write_report(tmp_path / "report", show=summaries_as_show(runs), source="test folders")
    md = report.read_text()
    for png in ("data_efficiency.png", "passkey_by_method.png", "ppl_by_method.png", "ppl_by_position.png"):
        data = (tmp_path / "report" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000 and f"]({png})" in md
    section = md[md.index("## How little data"):]
    rows = {tuple(c.strip() for c in line.strip("|").split("|"))[:2]: tuple(c.strip() for c in line.strip("|").split("|"))[2:]
            for line in section.splitlines() if line.startswith("| pi") or line.startswith("| yarn")}
    # budget = steps x batch_size x grad_accum; threshold = 0.9 x mean(1.0, 0.96) = 0.882; ppl at 2 x 8192
    assert rows[("pi", "0")] == ("4096", "26.00") and rows[("pi", "600")] == ("4096", f"{10 + 16 / 101:.2f}")
    assert rows[("yarn", "0")] == ("4096", "26.00") and rows[("yarn", "60")] == ("16384", f"{10 + 16 / 11:.2f}")
    assert "passkey.threshold" not in md and "88%" in md  # the threshold is stated as a score
    assert "| yarn-10 |" in md and "≥ 16384" in md  # passed everywhere: a lower bound
    sep = [line for line in md.splitlines() if line.startswith("- 8192:")][0]
    assert sep.startswith("- 8192: best `yarn-10` (yarn) 98%") and "**separated from** `pi-" in sep
    assert "## Perplexity by position (16384 tokens)" in md and "### passkey by needle depth" in md



def test_report_budget_column_and_ppl_at_the_longest_shared_length(tmp_path):
    """Without 2 x target evaluated (target 16384, lengths to 16384) the data-efficiency view reads the
    perplexity at the longest length every run shares, and says so; each table shows the run's budget."""
    runs = [_experiment(tmp_path / "runs", "yarn", s, [1.0, 1.0, 0.9, 0.5], target=16384) for s in (0, 10)]
    md = write_report(tmp_path / "report", show=summaries_as_show(runs), source="test folders").read_text()
    assert "| budget | 2048 |" in md and "| yarn-10 |  | yarn | 16384 | 10 | — | 60 |" in md
    section = md[md.index("## How little data"):]
    assert "ppl at 16384 tokens" in section and "2 × target (" not in section
    assert f"| yarn | 60 | 8192 | {10 + 16 / 11:.2f} |" in section

def test_report_covers_every_task(tmp_path):
    """Tasks other than passkey/ppl get their own table; LongBench (no length) its own section."""
    summary = {"needle.8192.extended": 0.5, "needle.8192.lo.extended": 0.3, "needle.8192.hi.extended": 0.7,
               "needle.8192.n.extended": 20, "multikey.8192.extended": 0.25, "multikey.8192.base": 0.75,
               "longbench.hotpotqa.extended": 31.456, "longbench.hotpotqa.base": 28.0,
               "check.greedy_agreement.extended": 1.0, "info.native_window.extended": 4096}
    show = [{"rev": "a" * 40, "name": "main", "error": None, "experiments": None,
             "data": {"params": {"params.yaml": {"data": {"method": "yarn"}}},
                      "metrics": {"metrics/summary.json": {"data": summary}}}}]
    md = write_report(tmp_path, show=show).read_text()
    assert "## needle accuracy" in md and "**50%** [30–70]" in md and "## multikey accuracy" in md
    assert "## Scores without a length" in md and "| main | 1.0 | 31.46 |" in md and "| *base model* | — | 28.0 |" in md
    assert "info.native_window" not in md
    assert (tmp_path / "needle_by_method.png").exists() and (tmp_path / "multikey_by_method.png").exists()


def test_summaries_as_show_names_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="params.yaml"):
        summaries_as_show([tmp_path])


def test_wilson_is_within_unit_interval_everywhere():
    for n in (1, 2, 7, 50):
        for k in range(n + 1):
            lo, hi = wilson_interval(k, n)
            assert 0.0 <= lo <= k / n <= hi <= 1.0 and not math.isnan(lo + hi)


# --------------------------------------------------------------------------- end to end on a tiny model


def test_many_samples_past_the_target_with_intervals(tmp_path):
    """Passkey with distractors at lengths up to 4x the tiny model's window, 6 samples per cell batched 3 at a
    time: every cell gets its interval and sample count, and aggregate adds the effective length."""
    import torch
    from transformers import LlamaForCausalLM

    from longctx.aggregate import aggregate
    from longctx.evaluation.suite import evaluate_model, make_eval_samples
    from longctx.params import EvalParams, build
    from tests.conftest import tiny_llama_config

    tok = build_tokenizer()
    ep = build(EvalParams, {"lengths": [512, 1024, 2048], "seed": 1, "batch_size": 3, "greedy_check": 0,
                            "passkey": {"depths": [0.25, 0.75], "samples": 3, "lengths": None, "distractors": 2},
                            "perplexity": {"enabled": False}}, "eval")
    samples = make_eval_samples(tok, ep)
    assert len(samples) == 3 * 2 * 3 and all(len(s.meta["distractors"]) == 2 for s in samples)
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(vocab_size=len(tok), max_position_embeddings=512)).eval()
    metrics = evaluate_model(model, samples, ep, tokenizer=tok)
    for n in (512, 1024, 2048):
        assert metrics[f"passkey.{n}.n"] == 6 and metrics[f"passkey.{n}.d0.25.n"] == 3
        k = round(metrics[f"passkey.{n}"] * 6)
        assert (metrics[f"passkey.{n}.lo"], metrics[f"passkey.{n}.hi"]) == tuple(round(v, 4) for v in wilson_interval(k, 6))
    metrics["info.native_window"] = 512
    atomic_write_json(tmp_path / "eval_base.json", metrics)
    atomic_write_json(tmp_path / "eval_extended.json", metrics)
    summary = aggregate(tmp_path, tmp_path / "plots")
    threshold = summary["passkey.threshold"]
    assert threshold == round(0.9 * metrics["passkey.512"], 4)
    assert summary["passkey.effective_length.extended"] == effective_length(
        {n: metrics[f"passkey.{n}"] for n in (512, 1024, 2048)}, threshold)


def test_report_cli_joins_saved_exp_show_json(tmp_path):
    """tools/report.py --exp-json: `dvc exp show --json` saved by two GPU-host calls, joined into one report."""
    import importlib.util
    import json
    from pathlib import Path

    runs = [_experiment(tmp_path / "runs", m, 0, [1.0, 1.0, 0.9, 0.5]) for m in ("yarn", "pose")]
    files = []
    for i, entry in enumerate(summaries_as_show(runs)):
        entry.pop("folder")
        entry["rev"] = f"{i}" * 40
        files.append(tmp_path / f"call{i}.json")
        files[-1].write_text(json.dumps([entry]))
    spec = importlib.util.spec_from_file_location("report_cli", Path(__file__).parents[1] / "tools" / "report.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    cli.main(["--exp-json", *map(str, files), "--out", str(tmp_path / "out")])
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| yarn-0 | 0000000 | yarn |" in md and "| pose-0 | 1111111 | pose |" in md
    saved_in = md.split("saved in ")[1].split("`")[0]  # the joined files, as given on the command line
    assert "call0.json, " in saved_in and saved_in.endswith("call1.json")


def test_report_states_the_claims(tmp_path):
    """Each seed claim gets a verdict with its numbers: Entropy-ABF >= ABF > PI near 100 sequences, SelfExtend
    at 4 x window with flat perplexity, CREAM over PoSE at middle depths (native window 4096 here)."""
    root = tmp_path / "runs"
    runs = [_experiment(root, "entropy_abf", 17, [1.0, 1.0, 1.0, 0.96]),  # budget 17 x 2 x 3 = 102: the one read
            _experiment(root, "entropy_abf", 100, [1.0, 0.2, 0.0, 0.0]),  # budget 600: farther from 100
            _experiment(root, "abf", 17, [1.0, 1.0, 0.96, 0.5]),
            _experiment(root, "pi", 17, [1.0, 0.9, 0.3, 0.0]),
            _experiment(root, "selfextend", 0, [1.0, 1.0, 0.96, 0.94], ppl={4096: 10.0, 16384: 11.5}),
            _experiment(root, "cream", 17, [1.0, 1.0, 0.96, 0.9]),
            _experiment(root, "pose", 17, [1.0, 1.0, 0.5, 0.3])]
    md = write_report(tmp_path / "report", show=summaries_as_show(runs)).read_text()
    claims = md[md.index("## The papers' claims"):]
    assert ("**reproduces**: entropy_abf 16384 (`entropy_abf-17`, budget 102); abf 8192 (`abf-17`, budget 102); "
            "pi 4096 (`pi-17`, budget 102)." in claims)
    assert "with flat perplexity: **reproduces**: `selfextend-0` (selfextend) 94% [84–98]" in claims
    assert "perplexity 11.50 at 16384 vs 10.00 at 4096 (flat" in claims
    assert "**reproduces (95% intervals disjoint)**: cream `cream-17` 93% [86–97] (n = 100) vs pose `pose-17` 40%" in claims
    runs[4] = _experiment(root, "selfextend", 0, [1.0, 1.0, 0.96, 0.94], ppl={4096: 10.0, 16384: 13.0})
    md = write_report(tmp_path / "report", show=summaries_as_show(runs[4:5])).read_text()
    assert "flat perplexity: **does not reproduce**" in md and "(not flat: limit 1.2 ×)" in md
    assert "Entropy-ABF ≥ ABF > PI in passkey effective length after ~100 fine-tuning sequences: not measured" in md
    assert "CREAM better than PoSE at middle depths (0.25–0.75): not measured" in md


def test_passkey_samples_of_a_cell_are_independent_layouts(tokenizer):
    """Ten samples of one (length, depth) cell put the key at ten places within depth +- DEPTH_JITTER, not at one:
    with one place per cell the GPU headline scored every cell all-or-nothing (docs/RESULTS.md, eighth run)."""
    from longctx.evaluation.passkey import DEPTH_JITTER

    for depth in (0.0, 0.5, 1.0):
        samples = generate_passkey(tokenizer, 2048, depth, 10, 7, False)
        depths = [s.meta["needle_depth"] for s in samples]
        assert all(abs(d - depth) <= DEPTH_JITTER + 1e-12 and 0.0 <= d <= 1.0 for d in depths)
        assert len({s.meta["needle_offset"] for s in samples}) >= 8  # distinct places (rounding may merge a pair)
        assert max(depths) - min(depths) > DEPTH_JITTER / 4  # spread over the band, not bunched
