"""Passkey prompts, teacher-forced scoring against greedy generation, perplexity, dynamic-RoPE order independence."""

import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast
from tokenizers import Tokenizer, models, pre_tokenizers

from longctx.evaluation.passkey import FILLER, generate_passkey
from longctx.evaluation.perplexity import perplexity_metrics, token_nll
from longctx.evaluation.samples import EvalSample
from longctx.evaluation.scoring import greedy_answer_correct, score_samples, teacher_forced_correct
from longctx.methods import build_extension
from longctx.modeling import extend_model
from tests.conftest import tiny_llama_config


def word_tokenizer():
    words = sorted(set((FILLER + " There is an important info hidden inside a lot of irrelevant text. Find it and "
                        "memorize it. I will quiz you about the important information there. What is the pass key? "
                        "The pass key is Remember it. is the pass key.").replace(".", " .").replace("?", " ?").split()))
    vocab = {w: i for i, w in enumerate(["<unk>", "<s>"] + words + list("0123456789"))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", unk_token="<unk>")


def test_passkey_exact_length_depth_and_determinism():
    tok = word_tokenizer()
    for length in (300, 517):
        for depth in (0.0, 0.5, 1.0):
            a = generate_passkey(tok, length, depth, 2, seed=3, use_chat_template=False)
            b = generate_passkey(tok, length, depth, 2, seed=3, use_chat_template=False)
            assert a == b
            for s in a:
                assert len(s.input_ids) + len(s.answer_ids) == length
                assert tok.decode(s.answer_ids).replace(" ", "") == s.answer and len(s.answer) == 5
                needle = tok(f" The pass key is {s.answer}.", add_special_tokens=False).input_ids
                off = s.meta["needle_offset"]
                assert s.input_ids[off:off + len(needle)] == needle
    assert generate_passkey(tok, 300, 0.5, 1, 3, False)[0].answer != generate_passkey(tok, 300, 0.5, 1, 4, False)[0].answer


def test_teacher_forcing_oracle_and_agreement_with_greedy():
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config()).eval()
    prompt = torch.randint(0, 128, (30,)).tolist()
    with torch.no_grad():
        greedy = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, 30, dtype=torch.long),
                                max_new_tokens=4, do_sample=False)[0, 30:].tolist()
    right = EvalSample("t", 34, None, 0, prompt, greedy, "")
    wrong = EvalSample("t", 34, None, 1, prompt, greedy[:3] + [(greedy[3] + 1) % 128], "")
    assert teacher_forced_correct(model, [right, wrong]) == [True, False]
    assert score_samples(model, [wrong, right]) == [False, True]
    for s, tf in ((right, True), (wrong, False)):
        assert greedy_answer_correct(model, s) == tf


def test_perplexity_matches_model_loss():
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config()).eval()
    ids = torch.randint(0, 128, (1, 50))
    nll = token_nll(model, ids, chunk=7)
    with torch.no_grad():
        loss = model(ids, labels=ids).loss
    assert torch.allclose(nll.mean(), loss, atol=1e-5)
    m = perplexity_metrics(nll, 4)
    assert set(m) == {"ppl", "bucket0", "bucket1", "bucket2", "bucket3"}


def test_dynamic_ntk_scores_do_not_depend_on_order():
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config()).eval()
    extend_model(model, build_extension("dynamic_ntk", {}, 256, 64, 10000.0, 16))
    short = torch.randint(0, 128, (1, 64))
    first = token_nll(model, short)
    token_nll(model, torch.randint(0, 128, (1, 200)))  # grows the dynamic frequencies
    assert torch.allclose(token_nll(model, short), first)


def test_greedy_generation_prefers_the_flash_sdpa_backend(monkeypatch):
    """Decoding asks SDPA for flash first (cuDNN, PyTorch's GPU default, plans anew per key length: issue 14),
    and the tokens are those of plain greedy generation."""
    import contextlib

    import longctx.kernels
    from longctx.evaluation.scoring import greedy_generate

    asked = []
    real = longctx.kernels.sdpa_backend

    @contextlib.contextmanager
    def spy(name="auto"):
        asked.append(name)
        with real(name):
            yield

    monkeypatch.setattr(longctx.kernels, "sdpa_backend", spy)
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config()).eval()
    prompt = list(range(3, 23))
    new = greedy_generate(model, prompt, 5)
    assert asked == ["flash"]
    plain = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, 20, dtype=torch.long), max_new_tokens=5,
                           do_sample=False, pad_token_id=model.config.eos_token_id)
    assert new == plain[0, 20:].tolist()
