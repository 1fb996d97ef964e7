"""LongBench (v1): data loading, the official prompts, truncation and metrics.

LongBench: Bai et al., "LongBench: A Bilingual, Multitask Benchmark for Long Context
Understanding", ACL 2024 (arXiv 2308.14508); code github.com/THUDM/LongBench. This module
re-implements, without its extra dependencies (jieba, fuzzywuzzy, rouge):

* ``DATASET2PROMPT`` / ``DATASET2MAXLEN``: ``config/dataset2prompt.json`` and
  ``config/dataset2maxlen.json`` for the English and code tasks, verbatim;
* ``DATASET2METRIC`` and ``score_longbench``: ``eval.py``'s ``dataset2metric`` and
  ``scorer`` (max over the reference answers, first line only for trec/triviaqa/samsum/lsht,
  mean x 100 rounded to 2 decimals);
* the metrics of ``metrics.py``: ``qa_f1_score`` with ``normalize_answer``, ``rouge_score``
  (ROUGE-L F of the ``rouge`` 1.0.1 package, re-implemented below), ``classification_score``,
  ``retrieval_score``, ``count_score``, ``code_sim_score`` (``fuzzywuzzy.fuzz.ratio``,
  re-implemented with ``difflib.SequenceMatcher`` as fuzzywuzzy does without
  python-Levenshtein);
* ``pred.py``'s prompt handling: ``template.format(**record)``, truncation in the middle to
  ``max_length`` tokens (first half + last half), and no chat template for trec, triviaqa,
  samsum, lsht, lcc, repobench-p ("chat models are better off without build prompts on these
  tasks"). Unlike pred.py, which decodes the two halves and re-tokenises, we stay in token
  space, so the prompt really is at most ``max_length`` tokens.

Quirks of the official code are kept on purpose (scores must be comparable with published
LongBench numbers); each is marked "LongBench quirk".
"""

from __future__ import annotations

import difflib
import json
import re
import string
from collections import Counter
from pathlib import Path

LONGBENCH_HUB = "THUDM/LongBench"
# The main branch of THUDM/LongBench is a loading script (LongBench.py + data.zip), which
# `datasets` >= 4 no longer runs. The Hub's automatic Parquet conversion of the same data lives
# on this branch; pin a commit of it in params for full reproducibility.
LONGBENCH_REVISION = "refs/convert/parquet"
FIELDS = ("input", "context", "answers", "length", "dataset", "language", "all_classes", "_id")

DATASET2PROMPT = {
    "narrativeqa": "You are given a story, which can be either a novel or a movie script, and a question. Answer the question as concisely as you can, using a single phrase if possible. Do not provide any explanation.\n\nStory: {context}\n\nNow, answer the question based on the story as concisely as you can, using a single phrase if possible. Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:",
    "qasper": "You are given a scientific article and a question. Answer the question as concisely as you can, using a single phrase or sentence if possible. If the question cannot be answered based on the information in the article, write \"unanswerable\". If the question is a yes/no question, answer \"yes\", \"no\", or \"unanswerable\". Do not provide any explanation.\n\nArticle: {context}\n\n Answer the question based on the above article as concisely as you can, using a single phrase or sentence if possible. If the question cannot be answered based on the information in the article, write \"unanswerable\". If the question is a yes/no question, answer \"yes\", \"no\", or \"unanswerable\". Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:",
    "multifieldqa_en": "Read the following text and answer briefly.\n\n{context}\n\nNow, answer the following question based on the above text, only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
    "hotpotqa": "Answer the question based on the given passages. Only give me the answer and do not output any other words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given passages. Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
    "2wikimqa": "Answer the question based on the given passages. Only give me the answer and do not output any other words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given passages. Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
    "musique": "Answer the question based on the given passages. Only give me the answer and do not output any other words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given passages. Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
    "gov_report": "You are given a report by a government agency. Write a one-page summary of the report.\n\nReport:\n{context}\n\nNow, write a one-page summary of the report.\n\nSummary:",
    "qmsum": "You are given a meeting transcript and a query containing a question or instruction. Answer the query in one or more sentences.\n\nTranscript:\n{context}\n\nNow, answer the query based on the above meeting transcript in one or more sentences.\n\nQuery: {input}\nAnswer:",
    "multi_news": "You are given several news passages. Write a one-page summary of all news. \n\nNews:\n{context}\n\nNow, write a one-page summary of all the news.\n\nSummary:",
    "trec": "Please determine the type of the question below. Here are some examples of questions.\n\n{context}\n{input}",
    "triviaqa": "Answer the question based on the given passage. Only give me the answer and do not output any other words. The following are some examples.\n\n{context}\n\n{input}",
    "samsum": "Summarize the dialogue into a few short sentences. The following are some examples.\n\n{context}\n\n{input}",
    "passage_count": "There are some paragraphs below sourced from Wikipedia. Some of them may be duplicates. Please carefully read these paragraphs and determine how many unique paragraphs there are after removing duplicates. In other words, how many non-repeating paragraphs are there in total?\n\n{context}\n\nPlease enter the final count of unique paragraphs after removing duplicates. The output format should only contain the number, such as 1, 2, 3, and so on.\n\nThe final answer is: ",
    "passage_retrieval_en": "Here are 30 paragraphs from Wikipedia, along with an abstract. Please determine which paragraph the abstract is from.\n\n{context}\n\nThe following is an abstract.\n\n{input}\n\nPlease enter the number of the paragraph that the abstract is from. The answer format must be like \"Paragraph 1\", \"Paragraph 2\", etc.\n\nThe answer is: ",
    "lcc": "Please complete the code given below. \n{context}Next line of code:\n",
    "repobench-p": "Please complete the code given below. \n{context}{input}Next line of code:\n",
}

DATASET2MAXLEN = {
    "narrativeqa": 128, "qasper": 128, "multifieldqa_en": 64, "hotpotqa": 32, "2wikimqa": 32,
    "musique": 32, "gov_report": 512, "qmsum": 512, "multi_news": 512, "trec": 64,
    "triviaqa": 32, "samsum": 128, "passage_count": 32, "passage_retrieval_en": 32,
    "lcc": 64, "repobench-p": 64,
}

TASKS = tuple(DATASET2PROMPT)
# pred.py: "chat models are better off without build prompts on these tasks"
NO_CHAT_TEMPLATE = frozenset({"trec", "triviaqa", "samsum", "lsht", "lcc", "repobench-p"})
# eval.py: few-shot tasks whose prediction is cut to its first line before scoring
FIRST_LINE_TASKS = frozenset({"trec", "triviaqa", "samsum", "lsht"})


# ----------------------------------------------------------------------------- metrics


def normalize_answer(s: str) -> str:
    """Lower text and remove punctuation, articles and extra whitespace (SQuAD / LongBench)."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def _f1(prediction_tokens: list[str], ground_truth_tokens: list[str]) -> float:
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(prediction_tokens)
    recall = num_same / len(ground_truth_tokens)
    return 2 * precision * recall / (precision + recall)


def qa_f1_score(prediction: str, ground_truth: str, **kwargs) -> float:
    """Token F1 after ``normalize_answer`` (LongBench ``qa_f1_score``)."""
    return _f1(normalize_answer(prediction).split(), normalize_answer(ground_truth).split())


def _lcs_tokens(x: list[str], y: list[str]) -> list[str]:
    """One longest common subsequence of x and y, traced back exactly as ``rouge`` 1.0.1's
    ``_recon_lcs`` does (up if table[i-1][j] > table[i][j-1], else left), since with its
    set semantics which LCS is picked can change the union below."""
    n, m = len(x), len(y)
    table = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        xi, row, prev = x[i - 1], table[i], table[i - 1]
        for j in range(1, m + 1):
            row[j] = prev[j - 1] + 1 if xi == y[j - 1] else max(prev[j], row[j - 1])
    out = []
    i, j = n, m
    while i > 0 and j > 0:  # iterative version of rouge's recursive _recon
        if x[i - 1] == y[j - 1]:
            out.append(x[i - 1])
            i, j = i - 1, j - 1
        elif table[i - 1][j] > table[i][j - 1]:
            i -= 1
        else:
            j -= 1
    return out[::-1]


def rouge_l(prediction: str, ground_truth: str) -> float:
    """ROUGE-L F as computed by ``rouge.Rouge().get_scores(...)["rouge-l"]["f"]`` (rouge 1.0.1).

    That is summary-level ROUGE-L (Lin 2004, section 3.2): texts are split into sentences at
    every ".", each sentence whitespace-normalised and split on " "; for each reference
    sentence the LCS with every candidate sentence is taken, and the union of LCS words is
    accumulated over reference sentences. LongBench quirk (inherited from the package's
    default ``exclusive=True``): word counts and unions are over *sets* of words, so a
    repeated word counts once. F = 2PR / (P + R + 1e-8) with R = |union| / m, P = |union| / n
    where m, n are the numbers of distinct reference / candidate words. No lower-casing.
    Raises ValueError on empty input, like the package (callers turn that into 0).
    """

    def sentences(text):
        return [" ".join(s.split()) for s in text.split(".") if len(s) > 0]

    hyp, ref = sentences(prediction), sentences(ground_truth)
    if not hyp or not ref:
        raise ValueError("Collections must contain at least 1 sentence.")
    words = lambda sents: [w for s in sents for w in s.split(" ")]  # noqa: E731
    m, n = len(set(words(ref))), len(set(words(hyp)))
    union: set[str] = set()
    llcs = 0
    for ref_s in ref:
        before = len(union)
        for hyp_s in hyp:
            union |= set(_lcs_tokens(ref_s.split(" "), hyp_s.split(" ")))
        llcs += len(union) - before
    r, p = llcs / m, llcs / n
    return 2.0 * (p * r) / (p + r + 1e-8)


def rouge_score(prediction: str, ground_truth: str, **kwargs) -> float:
    """LongBench ``rouge_score``: ROUGE-L F, 0.0 where the rouge package would raise."""
    try:
        return rouge_l(prediction, ground_truth)
    except (ValueError, ZeroDivisionError):
        return 0.0


def classification_score(prediction: str, ground_truth: str, **kwargs) -> float:
    """LongBench ``classification_score`` (trec, lsht): 1/k if the right class is among the k
    class names found in the prediction.

    LongBench quirks kept: (1) a matched class that is a proper substring of the ground truth
    is dropped while iterating over the same list (so a following item may be skipped);
    (2) ``if em_match_list != 0`` is always true (a list is never 0), so the difflib fallback
    for predictions naming no class never runs and such predictions score 0.
    """
    all_classes = kwargs["all_classes"]
    em_match_list = [c for c in all_classes if c in prediction]
    for match_term in em_match_list:  # mutating while iterating: as in LongBench
        if match_term in ground_truth and match_term != ground_truth:
            em_match_list.remove(match_term)
    if ground_truth in em_match_list:
        return 1.0 / len(em_match_list)
    return 0.0


def retrieval_score(prediction: str, ground_truth: str, **kwargs) -> float:
    """LongBench ``retrieval_score``: share of the numbers in the prediction that equal the id
    in the ground truth "Paragraph <id>"."""
    ground_truth_id = re.findall(r"Paragraph (\d+)", ground_truth)[0]
    numbers = re.findall(r"\d+", prediction)
    if not numbers:
        return 0.0
    return sum(n == ground_truth_id for n in numbers) / len(numbers)


def count_score(prediction: str, ground_truth: str, **kwargs) -> float:
    """LongBench ``count_score``: share of the numbers in the prediction equal to the count."""
    numbers = re.findall(r"\d+", prediction)
    if not numbers:
        return 0.0
    return sum(n == str(ground_truth) for n in numbers) / len(numbers)


def fuzz_ratio(s1: str, s2: str) -> int:
    """``fuzzywuzzy.fuzz.ratio`` without python-Levenshtein: equal strings give 100, an empty
    one gives 0, else ``round(100 * difflib.SequenceMatcher(None, s1, s2).ratio())`` (Python's
    round, as fuzzywuzzy's ``utils.intr``)."""
    if s1 == s2:
        return 100
    if not s1 or not s2:
        return 0
    return int(round(100 * difflib.SequenceMatcher(None, s1, s2).ratio()))


def code_sim_score(prediction: str, ground_truth: str, **kwargs) -> float:
    """LongBench ``code_sim_score`` (lcc, repobench-p): fuzz ratio / 100 between the reference
    line and the first predicted line that is not a comment or a code fence (none: "")."""
    first = ""
    for line in prediction.lstrip("\n").split("\n"):
        if "`" not in line and "#" not in line and "//" not in line:
            first = line
            break
    return fuzz_ratio(first, ground_truth) / 100


DATASET2METRIC = {
    "narrativeqa": qa_f1_score, "qasper": qa_f1_score, "multifieldqa_en": qa_f1_score,
    "hotpotqa": qa_f1_score, "2wikimqa": qa_f1_score, "musique": qa_f1_score,
    "gov_report": rouge_score, "qmsum": rouge_score, "multi_news": rouge_score,
    "trec": classification_score, "triviaqa": qa_f1_score, "samsum": rouge_score,
    "passage_retrieval_en": retrieval_score, "passage_count": count_score,
    "lcc": code_sim_score, "repobench-p": code_sim_score,
}


def score_one(task: str, prediction: str, answers: list[str], all_classes) -> float:
    """Score of one prediction in [0, 1]: the best over the reference answers (eval.py)."""
    if task in FIRST_LINE_TASKS:
        prediction = prediction.lstrip("\n").split("\n")[0]
    metric = DATASET2METRIC[task]
    score = 0.0
    for ground_truth in answers:
        score = max(score, metric(prediction, ground_truth, all_classes=all_classes))
    return score


def score_longbench(task: str, predictions: list[str], answers_list: list[list[str]], all_classes) -> float:
    """LongBench ``scorer``: mean of per-example best-over-answers scores, x 100, 2 decimals.

    ``all_classes`` is the task's class list (trec) or None; as in eval.py one list serves the
    whole task. A list of per-record lists is accepted too.
    """
    if task not in DATASET2METRIC:
        raise KeyError(f"unknown LongBench task {task!r}; known: {sorted(DATASET2METRIC)}")
    if len(predictions) != len(answers_list) or not predictions:
        raise ValueError("need one prediction per record, and at least one")
    per_record = isinstance(all_classes, list) and all_classes and isinstance(all_classes[0], (list, type(None)))
    total = 0.0
    for k, (pred, answers) in enumerate(zip(predictions, answers_list)):
        total += score_one(task, pred, answers, all_classes[k] if per_record else all_classes)
    return round(100 * total / len(predictions), 2)


# ----------------------------------------------------------------------------- data


def load_longbench(task: str, source: str | Path | None = None, revision: str = LONGBENCH_REVISION,
                   limit: int | None = None) -> list[dict]:
    """Records of one LongBench task.

    ``source=None`` loads ``datasets.load_dataset("THUDM/LongBench", task, split="test",
    revision=revision)`` from the Hub. Otherwise ``source`` is a JSONL file in LongBench's
    format or a directory holding ``<task>.jsonl`` (the layout of LongBench's data.zip).
    Every record must have the fields ``FIELDS``.
    """
    if task not in DATASET2PROMPT:
        raise KeyError(f"unknown LongBench task {task!r}; known: {list(TASKS)}")
    if source is None:
        import datasets

        ds = datasets.load_dataset(LONGBENCH_HUB, task, split="test", revision=revision)
        records = [dict(r) for r in ds]
    else:
        path = Path(source)
        if path.is_dir():
            path = path / f"{task}.jsonl"
        with open(path, encoding="utf-8") as f:
            records = [json.loads(line) for line in f if line.strip()]
    for r in records:
        missing = [k for k in FIELDS if k not in r]
        if missing:
            raise ValueError(f"LongBench record {r.get('_id')} lacks fields {missing}")
    return records[:limit] if limit is not None else records


def middle_truncate(ids: list[int], max_length: int) -> list[int]:
    """LongBench's truncation: keep the first and last ``int(max_length / 2)`` tokens, since
    "the left and right side may contain crucial instructions" (pred.py)."""
    if len(ids) <= max_length:
        return list(ids)
    half = int(max_length / 2)
    return list(ids[:half]) + list(ids[-half:])


def longbench_prompts(records: list[dict], task: str, tokenizer, max_length: int,
                      use_chat_template: bool) -> list[dict]:
    """Token-exact LongBench prompts.

    ``max_length`` caps the task prompt itself (LongBench's model2maxlen, e.g. 31500 for a
    32k model): leave room for the chat template and ``max_new_tokens``. The chat template is
    applied (in token space, around the truncated prompt) only when ``use_chat_template`` and
    the task is not one of ``NO_CHAT_TEMPLATE``; otherwise the prompt gets the BOS token if
    the tokenizer has one. Returns dicts with ``prompt_ids``, ``answers``, ``all_classes``,
    ``max_new_tokens`` (plus ``_id`` and ``truncated``).
    """
    from longctx.evaluation.samples import prompt_frame

    template = DATASET2PROMPT[task]
    if use_chat_template and task not in NO_CHAT_TEMPLATE and getattr(tokenizer, "chat_template", None):
        frame = prompt_frame(tokenizer, True, "")
        prefix, suffix = frame.prefix_ids, frame.suffix_ids
    else:
        prefix = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        suffix = []
    out = []
    for r in records:
        # str.format on the template like pred.py; braces inside the context are safe because
        # they are in the substituted values, not in the template.
        text = template.format(**r)
        ids = tokenizer(text, add_special_tokens=False).input_ids
        body = middle_truncate(ids, max_length)
        out.append({
            "prompt_ids": prefix + body + suffix,
            "answers": list(r["answers"]),
            "all_classes": r["all_classes"],
            "max_new_tokens": DATASET2MAXLEN[task],
            "_id": r["_id"],
            "truncated": len(ids) > max_length,
        })
    return out
