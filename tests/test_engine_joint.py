"""The joint early-exit baseline (joint.enabled, ashem_engine/joint.py, stages.JointTask): its
loss and gradients, its plan, a whole run routed, swept and costed as ASHEM's, its resume, and
its settings refused where they make no sense."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ashem_engine import events as ev
from ashem_engine import plan
from ashem_engine.cascade import Cascade
from ashem_engine.control import RunControl
from ashem_engine.costs import training_macs
from ashem_engine.joint import exit_weights, joint_loss, method_name
from ashem_engine.model import EarlyExitLM
from ashem_engine.rundir import load_checkpoint
from ashem_engine.run import resume_ashem, run_ashem
from ashem_engine.settings import SettingsError, load_settings
from ashem_engine.stages import JointTask, SequenceTask
from tiny import tiny_corpus, tiny_settings

ROOT = Path(__file__).resolve().parents[1]
JOINT = ("joint.enabled=true",)


# -- the loss ----------------------------------------------------------------------------------

def test_the_exit_weights_are_equal_or_grow_with_depth():
    assert exit_weights([2, 4], "equal") == [0.5, 0.5]
    assert exit_weights([2, 4], "depth") == pytest.approx([1 / 3, 2 / 3], abs=1e-15)
    assert exit_weights([2, 4, 6], "depth") == pytest.approx([1 / 6, 2 / 6, 3 / 6], abs=1e-15)
    assert exit_weights([4, 8], "equal") == [0.5, 0.5]
    assert exit_weights([4], "depth") == [1.0]


def fresh_model(settings, corpus, layers: int) -> EarlyExitLM:
    torch.manual_seed(0)
    return EarlyExitLM(len(corpus.vocab), layers, settings.model)


def gradients(task, index: int = 0) -> dict:
    """Every parameter's gradient after one backward of the task's loss on batch `index`."""
    task.model.zero_grad(set_to_none=True)
    task.loss(index).backward()
    return {name: (torch.zeros_like(p) if p.grad is None else p.grad.clone())
            for name, p in task.model.named_parameters()}


def joint_task(settings, corpus, model, exits, weights) -> JointTask:
    b = corpus.batches
    return JointTask(model, b["train"], b["validation"], exits, weights)


def test_with_one_exit_the_joint_loss_is_plain_training(tmp_path):
    settings = tiny_settings(tmp_path)
    corpus = tiny_corpus(settings)
    b = corpus.batches
    model = fresh_model(settings, corpus, 2)
    plain = SequenceTask(model, b["train"], b["validation"], Cascade.of([2]))
    joint = joint_task(settings, corpus, model, [2], [1.0])
    for index in (0, 5):
        assert torch.equal(joint.loss(index), plain.loss(index))
        want, got = gradients(plain, index), gradients(joint, index)
        assert all(torch.equal(got[name], want[name]) for name in want)


def test_gradients_reach_every_exit_weighted(tmp_path):
    """One backward of the joint loss: the blocks below exit 1 get both exits' gradients, in the
    weights' proportion; a weight of 0 removes an exit's part (the last exit's alone is plain
    training of the deep model); the blocks above exit 1 only hear from the last exit."""
    settings = tiny_settings(tmp_path)
    corpus = tiny_corpus(settings)
    model = fresh_model(settings, corpus, 4)
    b = corpus.batches
    both = gradients(joint_task(settings, corpus, model, [2, 4], [0.5, 0.5]))
    first = gradients(joint_task(settings, corpus, model, [2, 4], [1.0, 0.0]))
    last = gradients(joint_task(settings, corpus, model, [2, 4], [0.0, 1.0]))
    deep = gradients(SequenceTask(model, b["train"], b["validation"], Cascade.of([4])))
    lower = [n for n in both if n.startswith(("embedding.", "layers.0.", "layers.1."))]
    upper = [n for n in both if n.startswith(("layers.2.", "layers.3."))]
    for name in lower:
        assert first[name].abs().sum() > 0 and last[name].abs().sum() > 0
        assert not torch.allclose(both[name], last[name])  # exit 1 reaches them
        assert torch.allclose(both[name], 0.5 * first[name] + 0.5 * last[name],
                              rtol=1e-4, atol=1e-7)
    for name in upper:
        assert torch.count_nonzero(first[name]) == 0  # above exit 1: nothing from it
        assert torch.allclose(both[name], 0.5 * last[name], rtol=1e-4, atol=1e-8)
    assert all(torch.allclose(last[n], deep[n], rtol=1e-5, atol=1e-8) for n in deep)
    assert torch.allclose(both["head.weight"],
                          0.5 * first["head.weight"] + 0.5 * last["head.weight"],
                          rtol=1e-4, atol=1e-7)


def test_the_joint_loss_is_the_weighted_sum_of_the_exits_losses(tmp_path):
    settings = tiny_settings(tmp_path)
    corpus = tiny_corpus(settings)
    model = fresh_model(settings, corpus, 4)
    task = joint_task(settings, corpus, model, [2, 4], [0.25, 0.75])
    x, y = corpus.batches["train"].batch(3)
    states = task.exit_states(x)
    logits = [model.head(h) for h in states]
    by_hand = sum(w * torch.nn.functional.cross_entropy(z, y.reshape(-1))
                  for w, z in zip([0.25, 0.75], logits))
    loss = joint_loss(states, model.head.weight, y.reshape(-1), [0.25, 0.75])
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert task.loss(3).item() == pytest.approx(by_hand.item(), rel=1e-5)


def test_a_joint_step_costs_one_head_per_exit_more(tmp_path):
    """Training MACs: the deep model's step plus, for every token, the head's forward and
    backward (its weight's gradient and its input's) at every exit but the last."""
    settings = tiny_settings(tmp_path)
    corpus = tiny_corpus(settings)
    model = fresh_model(settings, corpus, 4)
    b = corpus.batches
    joint = joint_task(settings, corpus, model, [2, 4], [0.5, 0.5])
    deep = SequenceTask(model, b["train"], b["validation"], Cascade.of([4]))
    head = settings.model.dim * len(corpus.vocab)
    tokens = joint.epoch_tokens()
    assert joint.epoch_macs() == deep.epoch_macs() + tokens * head * 3
    step = training_macs(model, joint.step(0))
    assert step.forward == training_macs(model, deep.step(0)).forward + \
        joint.tokens_in(0) * head


# -- the plan --------------------------------------------------------------------------------

def test_the_joint_plan_trains_once_then_calibrates_each_exit_but_the_last(tmp_path):
    steps = plan.of_settings(tiny_settings(tmp_path, *JOINT, "stages.3.layers=6",
                                           "stages.3.hard_ratio=0.3"))
    assert [(s.id, s.kind, s.stage, s.name) for s in steps] == [
        ("stage-1", plan.STAGE, 1, "train jointly"),
        ("mining-1", plan.MINING, 1, "calibrate exit 1"),
        ("mining-2", plan.MINING, 2, "calibrate exit 2"),
        ("evaluation", plan.EVALUATION, None, "evaluate"),
        ("sweep", plan.SWEEP, None, "sweep")]
    assert [s.label for s in steps[:3]] == ["Joint training", "Calibration", "Calibration"]
    assert not any(s.steerable for s in steps)
    assert [s.boundary for s in steps] == ["stage-1", "mining-1", "mining-2", None,
                                           "evaluation"]
    assert plan.of_settings(tiny_settings(tmp_path)) == plan.build(2, True)  # ASHEM's as ever


def test_a_log_without_a_plan_gets_the_joint_plan_from_its_settings(tmp_path):
    settings = tiny_settings(tmp_path, *JOINT)
    started = ev.RunStarted("r", "d", "cpu", 1, settings.to_dict(), 10, 1, 1, 1, [])
    assert plan.of_run(started) == plan.build_joint(2, True)


# -- a run -----------------------------------------------------------------------------------

def numbers(summary: dict) -> dict:
    """What a run reports, apart from clocks and paths."""
    stages = [{k: s[k] for k in ("epochs", "best_epoch", "best_val_ppl", "best_val_acc",
                                 "training_macs", "selection_macs")} for s in summary["stages"]]
    return {"stages": stages, "mining": summary["mining"], "final": summary["final"]}


@pytest.fixture(scope="module")
def joint_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("joint")
    settings = tiny_settings(tmp, *JOINT, "joint.weights=depth", "evaluation.sweep_points=3")
    events = []
    result = run_ashem(settings, [events.append], corpus=tiny_corpus(settings))
    assert result.status == "finished", result.error
    return settings, result, [e for e in events if e.kind not in ("BatchProgress", "Log")]


def test_a_joint_run_goes_in_plan_order(joint_run):
    settings, result, events = joint_run
    started = events[0]
    assert [s["name"] for s in started.plan] == ["train jointly", "calibrate exit 1",
                                                  "evaluate", "sweep"]
    step_of = {"StageStarted": "stage-1", "ThresholdComputed": "mining-1",
               "Evaluated": "evaluation", "SweepComputed": "sweep"}
    assert [step_of[e.kind] for e in events if e.kind in step_of] == \
        [s["id"] for s in started.plan]
    kinds = [e.kind for e in events]
    assert kinds == ["RunStarted", "StageStarted", *["EpochEnded"] * 3, "StageEnded",
                     "ThresholdComputed", "HardExamplesCollected", "Evaluated",
                     "SweepComputed", "RunFinished"]


def test_the_joint_model_trains_every_exit_at_once(joint_run):
    settings, result, events = joint_run
    stage = next(e for e in events if isinstance(e, ev.StageStarted))
    assert (stage.stage, stage.layers, stage.exits, stage.lr) == (1, 4, [2, 4], 1e-3)
    assert stage.trainable_params == stage.total_params  # nothing frozen
    weights = [1 / 3, 2 / 3]  # joint.weights = depth
    for epoch in (e for e in events if isinstance(e, ev.EpochEnded)):
        assert len(epoch.exit_val_ppls) == 2 and epoch.shallow_ratio is None
        weighted = sum(w * math.log(p) for w, p in zip(weights, epoch.exit_val_ppls))
        assert epoch.val_ppl == pytest.approx(math.exp(weighted), rel=1e-12)
        assert epoch.hard_ppl is None
    checkpoint = load_checkpoint(result.run_dir / "stage-1-best.pt")
    assert checkpoint["layers"] == 4 and checkpoint["exit_layers"] == [2, 4]
    assert "layers.3.attn.wq.weight" in checkpoint["model"]  # the whole model
    (record,) = result.summary["stages"]
    assert record["layers"] == 4 and record["stopped_by"] in ("patience", "max_epochs")
    assert [h["lr"] for h in record["history"]] == [e.lr for e in events
                                                    if isinstance(e, ev.EpochEnded)]


def test_the_joint_model_is_routed_through_its_exits_and_swept(joint_run):
    settings, result, events = joint_run
    by_kind = {e.kind: e for e in events}
    threshold, final = by_kind["ThresholdComputed"], by_kind["Evaluated"]
    assert (threshold.stage, threshold.exit_layer, threshold.target_ratio) == (1, 2, 0.5)
    assert final.exit_layers == [2, 4] and final.thresholds == [threshold.threshold]
    assert 0 < final.exit_ratios[0] < 1 and final.exit_ratios[1] > 0
    names = [s["name"] for s in by_kind["SweepComputed"].series]
    assert names == ["joint early exit · max-softmax", "joint early exit · exit classifier",
                     "joint early exit · as run"]  # no stage-1 model of its own
    as_run = by_kind["SweepComputed"].series[-1]["points"][0]
    assert as_run["ppl"] == final.ppl and as_run["exit_ratios"] == final.exit_ratios
    assert method_name(settings) == "joint early exit"


def test_a_cancelled_joint_run_resumes_to_the_same_numbers(joint_run):
    settings, straight, _ = joint_run
    for cancel_at in (lambda e: isinstance(e, ev.EpochEnded) and e.epoch == 2,
                      lambda e: isinstance(e, ev.HardExamplesCollected)):
        control = RunControl()
        first = run_ashem(settings, [lambda e: control.cancel() if cancel_at(e) else None],
                          control, corpus=tiny_corpus(settings))
        assert first.status == "cancelled"
        second = resume_ashem(first.run_dir, corpus=tiny_corpus(settings))
        assert second.status == "finished", second.error
        assert numbers(second.summary) == numbers(straight.summary)


# -- settings --------------------------------------------------------------------------------

@pytest.mark.parametrize("override, message", [
    ("joint.weights=depthwise", "joint.weights = 'depthwise': allowed: equal, depth"),
    ("stages.2.tokens=all", "stages.2.tokens = 'all': with joint.enabled = true"),
    ("stages.2.trainable=all", "leave trainable = 'new'"),
    ("stages.2.init=copy", "leave init = 'fresh'"),
    ("stages.2.freeze_head=true", "leave freeze_head = false"),
])
def test_bad_joint_settings_are_refused_in_one_line(override, message):
    with pytest.raises(SettingsError) as refused:
        load_settings(None, [*JOINT, override])
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_a_joint_run_needs_two_exits(tmp_path):
    one_stage = tmp_path / "one.toml"
    one_stage.write_text("[joint]\nenabled = true\n\n[[stages]]\nlayers = 4\nlr = 1e-3\n")
    with pytest.raises(SettingsError, match=r"^joint.enabled = True: a joint run needs 2 or "
                                            r"more \[\[stages\]\], one per exit$"):
        load_settings(one_stage)
    plain = load_settings(one_stage, ["joint.enabled=false", "run.pause_at=[]"])
    assert plain.joint.enabled is False and len(plain.stages) == 1


def test_the_command_line_refuses_a_bad_joint_setting_with_exit_2(tmp_path):
    p = subprocess.run([sys.executable, "-m", "ashem_engine", "run", "--set",
                        "joint.enabled=true", "--set", "stages.2.init=copy"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert len(p.stderr.splitlines()) == 1 and "stages.2.init = 'copy'" in p.stderr


def test_the_joint_configurations_are_the_sound_protocol_at_both_scales():
    configs = ROOT / "bench" / "configs"
    spec = load_settings(configs / "joint-exits-spec.toml")
    scale = load_settings(configs / "joint-exits-scale.toml")
    ashem_scale = load_settings(configs / "scale-ashem-4-8.toml")
    for s, exits in ((spec, [2, 4]), (scale, [4, 8])):
        assert s.joint.enabled and [st.layers for st in s.stages] == exits
        assert (s.mining.split, s.evaluation.split, s.evaluation.inference) == \
            ("train", "test", "as_trained")
        assert s.stages[1].context == "sequence" and s.stages[1].hard_ratio == 0.5
    assert (scale.data, scale.model) == (ashem_scale.data, ashem_scale.model)
    assert (scale.stages[0].max_epochs, scale.stages[0].patience) == (50, 3)
