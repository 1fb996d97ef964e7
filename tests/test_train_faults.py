"""Fine-tuning faults (issue #18, #17): a diverged run writes nothing; an unreadable or doctored checkpoint is
set aside and never unpickled; SIGTERM (and Ctrl-C) finish the step, write a checkpoint and stop."""

import dataclasses
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from longctx.params import LoraParams, TrainParams
from longctx.training import finetune, trainable
from longctx.training.checkpoint import OPTIMIZER_FILE, STATE_FILE, train_fingerprint
from longctx.training.finite import NonFiniteError, check_finite, global_norm
from longctx.training.signals import StopSignals
from tests.test_modeling import base_dir  # noqa: F401  (module fixture: a tiny materialised base model)
from tests.test_train import _tiny_run_setup, _weights, interrupt_after

ROOT = Path(__file__).resolve().parents[1]
LORA = LoraParams(r=4, alpha=8, dropout=0.1, target_modules=["q_proj", "v_proj"])


def _assert_nothing_written(tmp_path, ck):
    assert not (tmp_path / "out").exists()
    assert not ck.exists() or not [p for p in ck.iterdir() if p.name.startswith("step_")]


# ------------------------------------------------------------------------------------------------
# Non-finite loss, gradient or weight: stop, name the step and the quantity, write nothing
# ------------------------------------------------------------------------------------------------

def test_infinite_lr_stops_at_step_1_with_nothing_written(base_dir, tmp_path):  # noqa: F811
    """`train.lr: .inf` used to finish "successfully" with NaN weights (issue #18 item 2)."""
    ext_dir, sft = _tiny_run_setup(base_dir, tmp_path)
    tp = TrainParams(steps=3, mode="lora", seq_len=32, lr=float("inf"), checkpoint_every=1, lora=LORA)
    ck = tmp_path / "ck"
    with pytest.raises(NonFiniteError, match=r"^finetune: step 1: non-finite weight; stopped, nothing written"):
        finetune(ext_dir, sft, tmp_path / "out", tp, dtype="float32", checkpoint_dir=ck, live_dir=tmp_path / "live")
    _assert_nothing_written(tmp_path, ck)
    assert not [p for p in (tmp_path / "live").rglob("*") if p.is_file()]  # no training curves either


def _poison_norm_weight(model_dir):
    """One NaN in the final norm of a saved model (frozen under LoRA): every loss is NaN."""
    from safetensors.torch import load_file, save_file

    weights_file = next(model_dir.glob("*.safetensors"))
    sd = load_file(weights_file)
    sd["model.norm.weight"][0] = float("nan")
    save_file(sd, weights_file, metadata={"format": "pt"})


def test_nonfinite_loss_stops_with_nothing_written(base_dir, tmp_path):  # noqa: F811
    """A NaN in a frozen weight makes the very first loss NaN: the loss is named, not the weight."""
    ext_dir, sft = _tiny_run_setup(base_dir, tmp_path)
    _poison_norm_weight(ext_dir)
    tp = TrainParams(steps=2, mode="lora", seq_len=32, lora=LORA)
    with pytest.raises(NonFiniteError, match=r"^finetune: step 1: non-finite loss;"):
        finetune(ext_dir, sft, tmp_path / "out", tp, dtype="float32", checkpoint_dir=tmp_path / "ck")
    _assert_nothing_written(tmp_path, tmp_path / "ck")


@pytest.mark.parametrize("max_grad_norm", [1.0, 0.0])  # the norm from clipping, or computed for the check
def test_nonfinite_gradient_stops_with_nothing_written(base_dir, tmp_path, monkeypatch, max_grad_norm):  # noqa: F811
    ext_dir, sft = _tiny_run_setup(base_dir, tmp_path)
    real = trainable.trainable_model

    def poisoned_from_step_2(model, tp, *args):  # the loss stays finite; one gradient turns NaN at step 2
        model, params, optimizer = real(model, tp, *args)
        calls = []
        params[0].register_hook(lambda g: calls.append(1) or (g * float("nan") if len(calls) >= 2 else g))
        return model, params, optimizer

    monkeypatch.setattr(trainable, "trainable_model", poisoned_from_step_2)
    tp = TrainParams(steps=3, mode="lora", seq_len=32, max_grad_norm=max_grad_norm, lora=LORA)
    steps = []
    with pytest.raises(NonFiniteError, match=r"^finetune: step 2: non-finite gradient;"):
        finetune(ext_dir, sft, tmp_path / "out", tp, dtype="float32", checkpoint_dir=tmp_path / "ck",
                 on_step=lambda s, loss: steps.append(s))
    assert steps == [1]
    _assert_nothing_written(tmp_path, tmp_path / "ck")


def test_check_finite_names_the_first_bad_quantity():
    check_finite(4, {"loss": 0.0, "gradient": 0.0, "weight": 0.0})
    with pytest.raises(NonFiniteError, match="step 4: non-finite gradient"):
        check_finite(4, {"loss": 0.0, "gradient": 1.0, "weight": 1.0})
    assert global_norm([torch.tensor([3.0]), torch.tensor([4.0])]) == 5.0
    assert not torch.isfinite(global_norm([torch.tensor([1.0]), torch.tensor([float("inf")])]))
    assert torch.isnan(global_norm([torch.tensor([float("nan")]), torch.tensor([1.0])]))


# ------------------------------------------------------------------------------------------------
# Unreadable checkpoints are set aside; the previous one (or a fresh start) is used
# ------------------------------------------------------------------------------------------------

def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {
    "truncated optimizer": lambda d: _truncate(d / OPTIMIZER_FILE),
    "truncated weights": lambda d: _truncate(d / "trainable.safetensors"),
    "truncated state": lambda d: _truncate(d / STATE_FILE),
    "missing rng": lambda d: (d / "rng_0.safetensors").unlink(),
    "optimizer is a pickle": lambda d: torch.save({"state": {}}, d / OPTIMIZER_FILE),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_unreadable_checkpoint_is_set_aside_and_previous_resumed(damage, base_dir, tmp_path, capsys):  # noqa: F811
    ext_dir, sft = _tiny_run_setup(base_dir, tmp_path)
    tp = TrainParams(steps=5, mode="lora", seq_len=32, batch_size=2, lr=1e-3, checkpoint_every=2, lora=LORA)
    ref = finetune(ext_dir, sft, tmp_path / "ref", tp, dtype="float32", checkpoint_dir=tmp_path / "ck_ref")
    ck = tmp_path / "ck"
    interrupt_after(3, ext_dir, sft, tmp_path / "out", tp, ck)
    assert sorted(p.name for p in ck.iterdir()) == ["step_2", "step_3"]
    DAMAGE[damage](ck / "step_3")
    steps = []
    summary = finetune(ext_dir, sft, tmp_path / "out", tp, dtype="float32", checkpoint_dir=ck,
                       on_step=lambda s, loss: steps.append(s))
    assert steps == [3, 4, 5]  # resumed from step_2
    out = capsys.readouterr().out
    assert f"checkpoint {ck / 'step_3'} cannot be read" in out and "set aside as" in out
    assert sorted(p.name for p in ck.iterdir()) == ["unreadable_step_3"]  # renamed, not deleted
    assert summary == ref
    a, b = _weights(tmp_path / "ref", ext_dir), _weights(tmp_path / "out", ext_dir)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k


def test_only_checkpoint_unreadable_starts_from_scratch(base_dir, tmp_path):  # noqa: F811
    ext_dir, sft = _tiny_run_setup(base_dir, tmp_path)
    tp = TrainParams(steps=3, mode="full", seq_len=32, lr=1e-3, lora=LORA)
    ck = tmp_path / "ck"
    interrupt_after(2, ext_dir, sft, tmp_path / "out", tp, ck)
    _truncate(ck / "step_2" / OPTIMIZER_FILE)
    (ck / "unreadable_step_2").mkdir()  # an earlier set-aside one is not overwritten
    steps = []
    finetune(ext_dir, sft, tmp_path / "out", tp, dtype="float32", checkpoint_dir=ck,
             on_step=lambda s, loss: steps.append(s))
    assert steps == [1, 2, 3]
    assert sorted(p.name for p in ck.iterdir()) == ["unreadable_step_2", "unreadable_step_2_1"]


# ------------------------------------------------------------------------------------------------
# Doctored checkpoints: nothing is unpickled, the payload never runs
# ------------------------------------------------------------------------------------------------

class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_doctored_accelerate_checkpoint_is_refused(base_dir, tmp_path):  # noqa: F811
    """Accelerate's load_state unpickled custom_checkpoint_0.pkl with weights_only=False: a checkpoint in that
    layout (matching fingerprint, pickles carrying a payload) ran code. Now it is set aside unread."""
    ext_dir, sft = _tiny_run_setup(base_dir, tmp_path)
    tp = TrainParams(steps=2, mode="lora", seq_len=32, lora=LORA)
    marker = tmp_path / "PWNED"
    with open(tmp_path / "probe.pkl", "wb") as f:  # the payload works when unpickled
        pickle.dump(_Payload(tmp_path / "probe_marker"), f)
    pickle.loads((tmp_path / "probe.pkl").read_bytes())
    assert (tmp_path / "probe_marker").exists()

    step = tmp_path / "ck" / "step_1"
    step.mkdir(parents=True)
    for name in ("custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin", "scheduler.bin"):
        with open(step / name, "wb") as f:
            pickle.dump(_Payload(marker), f)
    fp = train_fingerprint(tp, "float32", ext_dir, sft, 1)
    (step / STATE_FILE).write_text(json.dumps({"step": 1, "cursor": 1, "losses": [5.0], "lrs": [1e-4], "tokens": 32,
                                               "fingerprint": fp, "steps": 2, "num_processes": 1}))
    steps = []
    finetune(ext_dir, sft, tmp_path / "out", tp, dtype="float32", checkpoint_dir=tmp_path / "ck",
             on_step=lambda s, loss: steps.append(s))
    assert not marker.exists()
    assert steps == [1, 2]  # from scratch
    assert (tmp_path / "ck" / "unreadable_step_1" / "custom_checkpoint_0.pkl").exists()


def test_doctored_safetensors_checkpoint_is_refused(base_dir, tmp_path):  # noqa: F811
    """A real checkpoint whose files are swapped for pickles with a payload: refused, payload never runs."""
    ext_dir, sft = _tiny_run_setup(base_dir, tmp_path)
    tp = TrainParams(steps=4, mode="lora", seq_len=32, checkpoint_every=1, lora=LORA)
    ck = tmp_path / "ck"
    interrupt_after(3, ext_dir, sft, tmp_path / "out", tp, ck)
    assert sorted(p.name for p in ck.iterdir()) == ["step_2", "step_3"]
    marker = tmp_path / "PWNED"
    for name in (OPTIMIZER_FILE, "trainable.safetensors", "rng_0.safetensors"):
        torch.save({"x": _Payload(marker)}, ck / "step_3" / name)
    steps = []
    finetune(ext_dir, sft, tmp_path / "out", tp, dtype="float32", checkpoint_dir=ck,
             on_step=lambda s, loss: steps.append(s))
    assert not marker.exists()
    assert steps == [3, 4]
    assert (ck / "unreadable_step_3").is_dir()


# ------------------------------------------------------------------------------------------------
# SIGTERM (what schedulers send before preemption) and Ctrl-C, in a real process
# ------------------------------------------------------------------------------------------------

RUNNER = '''
import json, sys, time
from pathlib import Path
from longctx.params import build, TrainParams
from longctx.training import finetune

ext_dir, sft, out, ck, tp_json, progress = sys.argv[1:7]
def on_step(step, loss):
    Path(progress).write_text(str(step))
    time.sleep(0.3)  # leave the parent time to signal between steps
finetune(Path(ext_dir), Path(sft), Path(out), build(TrainParams, json.loads(tp_json), "train"), dtype="float32",
         checkpoint_dir=Path(ck), on_step=on_step)
'''


# SIGTERM: exit status 143 (128 + 15) without a traceback; Ctrl-C: KeyboardInterrupt as usual.
@pytest.mark.parametrize("signum, returncode", [(signal.SIGTERM, 143), (signal.SIGINT, 1)])
def test_signal_finishes_the_step_writes_a_checkpoint_and_resumes(signum, returncode, base_dir, tmp_path):  # noqa: F811
    ext_dir, sft = _tiny_run_setup(base_dir, tmp_path)
    tp = {"steps": 30, "mode": "lora", "seq_len": 32, "lr": 1e-3, "checkpoint_every": 0,
          "lora": dataclasses.asdict(LORA)}
    script, progress, ck = tmp_path / "runner.py", tmp_path / "progress", tmp_path / "ck"
    script.write_text(RUNNER)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(script), str(ext_dir), str(sft), str(tmp_path / "out"), str(ck),
                             json.dumps(tp), str(progress)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not (progress.exists() and progress.read_text() and int(progress.read_text()) >= 2):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.05)
    proc.send_signal(signum)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == returncode, output[-3000:]
    assert ("Traceback" in output) == (signum == signal.SIGINT)
    name = signal.Signals(signum).name
    assert f"finetune: {name}: finishing this step and writing a checkpoint" in output
    done = int(progress.read_text())
    assert f"finetune: interrupted after step {done}; checkpoint {ck / f'step_{done}'}; rerun to resume" in output
    assert [p.name for p in ck.iterdir()] == [f"step_{done}"] and done < 30
    assert not (tmp_path / "out").exists()
    # The rerun resumes after the checkpointed step.
    steps = []
    resumed = TrainParams(**{**tp, "lora": LORA})
    finetune(ext_dir, sft, tmp_path / "out", resumed, dtype="float32", checkpoint_dir=ck,
             on_step=lambda s, loss: steps.append(s))
    assert steps == list(range(done + 1, 31))


def test_stop_signals_first_flags_second_aborts():
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals() as stop:
        assert stop.signum == 0
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        assert stop.signum == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)
    assert signal.getsignal(signal.SIGTERM) is before


def test_finetune_stage_reports_divergence_in_one_line(base_dir, tmp_path):  # noqa: F811
    """Through the stage script: a model that gives a NaN loss ends the stage with one line, exit 1, and no
    outputs. (`train.lr: .inf` itself is now refused earlier, by the params check, which bounds lr to (0, 1].)"""
    import yaml

    ext_dir, sft = _tiny_run_setup(base_dir, tmp_path)
    _poison_norm_weight(ext_dir)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["method"] = "yarn"  # what _tiny_run_setup extended with; the params check compares it with the model
    params["train"].update({"steps": 2, "seq_len": 32})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "models" / "finetuned"
    proc = subprocess.run([sys.executable, str(ROOT / "stages" / "finetune.py"), "--model", str(ext_dir),
                           "--data", str(sft), "--out", str(out), "--summary", str(tmp_path / "metrics" / "train.json"),
                           "--live", str(tmp_path / "metrics" / "train")],
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("error: finetune: step 1: non-finite loss;")
    assert "Traceback" not in proc.stderr
    assert not out.exists() and not (tmp_path / "metrics" / "train.json").exists()
    assert not [p for p in (tmp_path / "metrics").rglob("*") if p.is_file()]
