"""The ablations of ASHEM (stages.N.tokens, trainable, init): validated like every key, and
each doing what it says in a tiny run; a run using them resumes to the same numbers."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ashem_engine import events as ev
from ashem_engine.control import RunControl
from ashem_engine.model import EarlyExitLM
from ashem_engine.run import resume_ashem, run_ashem
from ashem_engine.rundir import PROGRESS_FILE, load_checkpoint
from ashem_engine.settings import ModelSettings, Settings, SettingsError, load_settings, \
    settings_from_dict
from engine_support import single_thread  # noqa: F401  (autouse fixture)
from tiny import tiny_corpus, tiny_settings

ROOT = Path(__file__).resolve().parents[1]

SHORT = ["stages.1.max_epochs=2", "stages.2.max_epochs=3", "evaluation.sweep_points=0"]
CONFIGS = {
    # grow-all-tokens: new layers on every token, the rest (head too) frozen
    "grow": ["stages.2.context=sequence", "stages.2.freeze_head=true", "stages.2.tokens=all"],
    # stack-copy-all: depthwise stacking, the whole model training
    "stack": ["stages.2.context=sequence", "stages.2.tokens=all", "stages.2.trainable=all",
              "stages.2.init=copy"],
    "token-all": ["stages.2.tokens=all"],
}
LOWER = ("embedding.", "layers.0.", "layers.1.")


class Recorder:
    """A run's events, and its model as stage 2 starts (progress.pt holds it then)."""

    def __init__(self):
        self.events, self.run_dir, self.stage2_start = [], None, None

    def __call__(self, event):
        self.events.append(event)
        if isinstance(event, ev.RunStarted):
            self.run_dir = Path(event.run_dir)
        if isinstance(event, ev.StageStarted) and event.stage == 2:
            self.stage2_start = load_checkpoint(self.run_dir / PROGRESS_FILE)

    def one(self, kind, **fields):
        (found,) = [e for e in self.events if isinstance(e, kind) and
                    all(getattr(e, k) == v for k, v in fields.items())]
        return found


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Each configuration run once, uninterrupted, on first use."""
    done = {}

    def run(name):
        if name not in done:
            settings = tiny_settings(tmp_path_factory.mktemp(name), *SHORT, *CONFIGS[name])
            recorder = Recorder()
            result = run_ashem(settings, [recorder], corpus=tiny_corpus(settings))
            assert result.status == "finished", result.error
            done[name] = (settings, recorder, result)
        return done[name]
    return run


def weights(run_dir: Path, stage: int) -> dict:
    return load_checkpoint(run_dir / f"stage-{stage}-best.pt")["model"]


# -- settings ------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, named, allowed", [
    (["stages.2.tokens=some"], "stages.2.tokens = 'some'", "hard (the tokens mined"),
    (["stages.2.trainable=lower"], "stages.2.trainable = 'lower'", "new (the new layers"),
    (["stages.2.init=zero"], "stages.2.init = 'zero'", "fresh (new layers freshly"),
    (["stages.2.trainable=all"], "stages.2.trainable = 'all'",
     "needs context = 'sequence', not 'token'"),
    (["stages.2.trainable=all", "stages.2.context=sequence", "stages.2.freeze_head=true"],
     "stages.2.trainable = 'all'", "needs freeze_head = false"),
    (["stages.1.tokens=all"], "stages.1.tokens = 'all'", "belongs to stages 2 and later"),
    (["stages.1.init=copy"], "stages.1.init = 'copy'", "belongs to stages 2 and later"),
    (["stages.3.layers=6", "stages.3.trainable=al", "run.pause_at=[]"],
     "stages.3.trainable = 'al'", "or all (the whole model)"),
    (["stages.3.layers=6", "stages.3.trainable=all", "stages.3.context=sequence",
      "run.pause_at=[]"], "stages.3.trainable = 'all'", "all is for stage 2 only"),
])
def test_a_bad_ablation_value_is_one_line_naming_key_and_allowed(overrides, named, allowed):
    with pytest.raises(SettingsError) as info:
        load_settings(None, overrides)
    message = str(info.value)
    assert "\n" not in message and message.startswith(named) and allowed in message


def test_a_bad_ablation_value_on_the_command_line_exits_2(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.run([sys.executable, "-m", "ashem_engine", "run", "--settings",
                        str(ROOT / "settings.toml"), "--set", "stages.2.init=stacked"],
                       cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr and p.stdout == ""
    (line,) = p.stderr.splitlines()
    assert "stages.2.init = 'stacked'" in line and "fresh" in line and "copy" in line
    assert not (tmp_path / "runs").exists()


def test_the_defaults_are_ashem_and_round_trip():
    first, second = Settings().stages
    assert (first.tokens, first.trainable, first.init) == (None, None, None)
    assert (second.tokens, second.trainable, second.init) == ("hard", "new", "fresh")
    s = load_settings(None, CONFIGS["stack"])
    assert (s.stages[1].tokens, s.stages[1].trainable, s.stages[1].init) == \
        ("all", "all", "copy")
    assert settings_from_dict(s.to_dict()) == s
    assert "tokens" not in s.to_dict()["stages"][0]


def test_the_study_configurations_load():
    configs = ROOT / "bench" / "configs"
    for name in ("grow-all-tokens", "stack-copy-all", "sound-token", "spec-on-test",
                 "scratch-4-tuned", "sound-head-trained"):
        s = load_settings(configs / f"{name}.toml")
        assert s.run.pause_at == () and s.run.name == name
    stack = load_settings(configs / "stack-copy-all.toml").stages[1]
    assert (stack.tokens, stack.trainable, stack.init) == ("all", "all", "copy")
    assert load_settings(configs / "grow-all-tokens.toml").stages[1].tokens == "all"
    assert load_settings(configs / "sound-head-trained.toml") == load_settings(
        configs / "sound-protocol.toml", ["run.name=sound-head-trained", "run.pause_at=[]",
                                          "stages.2.freeze_head=false"])
    assert load_settings(configs / "spec-on-test.toml") == load_settings(
        None, ["run.name=spec-on-test", "run.pause_at=[]", "evaluation.split=test"])
    assert load_settings(configs / "sound-patience-3.toml") == load_settings(
        configs / "sound-protocol.toml", ["run.name=sound-patience-3", "run.pause_at=[]",
                                          "stages.1.patience=3"])


def test_the_larger_scale_configurations_differ_only_in_their_model():
    from ashem_engine.model import block_macs_per_token, head_macs_per_token
    configs = ROOT / "bench" / "configs"
    ashem, eight, four = (load_settings(configs / f"scale-{n}.toml")
                          for n in ("ashem-4-8", "scratch-8", "scratch-4"))
    assert [s.layers for s in ashem.stages] == [4, 8]
    assert [s.layers for s in eight.stages] == [8] and [s.layers for s in four.stages] == [4]
    for s in (ashem, eight, four):
        assert (s.data.train_samples, s.data.eval_samples, s.data.vocab_size) == (0, 0, 8192)
        assert s.model == ashem.model and s.evaluation.split == "test"
    blocks = 8 * block_macs_per_token(eight.model, eight.data.seq_len)
    assert blocks > 2 * head_macs_per_token(eight.model, 8192)  # depth, not the head, costs
    assert load_settings(configs / "scale-scratch-4.toml") == load_settings(
        configs / "scale-scratch-8.toml",
        ["run.name=scale-scratch-4", "stages.1.layers=4", "stages.1.lr=1e-3"])


# -- what each key does --------------------------------------------------------------------

@pytest.mark.parametrize("name", ["grow", "token-all"])
def test_all_tokens_trains_on_every_token_of_the_mining_split(runs, name):
    settings, recorder, _ = runs(name)
    split_tokens = tiny_corpus(settings).batches[settings.mining.split].x.numel()
    mined = recorder.one(ev.HardExamplesCollected, stage=1)
    started = recorder.one(ev.StageStarted, stage=2)
    assert 0 < mined.count < mined.total == split_tokens
    assert started.training_tokens == split_tokens
    recorder.one(ev.ThresholdComputed, stage=1)  # the mining still ran and set a threshold
    assert all(e.hard_ppl is not None for e in recorder.events
               if isinstance(e, ev.EpochEnded) and e.stage == 2)


def test_trainable_all_trains_the_lower_layers_and_new_leaves_them(runs):
    _, stacked, stack = runs("stack")
    _, grown, grow = runs("grow")
    started = stacked.one(ev.StageStarted, stage=2)
    assert started.trainable_params == started.total_params
    before, after = weights(stack.run_dir, 1), weights(stack.run_dir, 2)
    lower = [k for k in before if k.startswith(LOWER)]
    assert len(lower) > 3 and all(not torch.equal(before[k], after[k]) for k in lower)
    before, after = weights(grow.run_dir, 1), weights(grow.run_dir, 2)
    assert all(torch.equal(before[k], after[k]) for k in before)  # the head frozen too
    start = grown.stage2_start["model"]
    assert all(not torch.equal(start[k], after[k]) for k in after
               if k.startswith(("layers.2.", "layers.3.")))  # the new layers did train


def test_copy_init_starts_the_new_layers_as_copies_of_the_trained_ones(runs):
    _, stacked, stack = runs("stack")
    start, trained = stacked.stage2_start, weights(stack.run_dir, 1)
    assert (start["stage"], start["epoch"]) == (2, 0)
    model = start["model"]
    for new, old in ((2, 0), (3, 1)):
        keys = [k for k in model if k.startswith(f"layers.{new}.")]
        assert keys and all(torch.equal(model[k], trained[k.replace(f"layers.{new}.",
                                                                    f"layers.{old}.")])
                            for k in keys)
    fresh = runs("grow")[1].stage2_start["model"]
    assert not torch.equal(fresh["layers.2.attn.wq.weight"], fresh["layers.0.attn.wq.weight"])


def test_grow_copies_the_stack_upward_and_draws_as_fresh_does():
    torch.manual_seed(0)
    small = EarlyExitLM(30, 2, ModelSettings(dim=16, heads=2, ffn_hidden=32))
    rng = torch.get_rng_state()
    fresh = small.grow(6)
    after_fresh = torch.get_rng_state()
    torch.set_rng_state(rng)
    copied = small.grow(6, "copy")
    assert torch.equal(torch.get_rng_state(), after_fresh)
    for i in range(2, 6):
        for (k, new), old in zip(copied.layers[i].state_dict().items(),
                                 small.layers[i % 2].state_dict().values()):
            assert torch.equal(new, old), (i, k)
            assert new.data_ptr() != old.data_ptr()
        assert not torch.equal(fresh.layers[i].attn.wq.weight, small.layers[i % 2].attn.wq.weight)
    assert torch.equal(copied.head.weight, fresh.head.weight)


# -- resume --------------------------------------------------------------------------------

def figures(summary: dict) -> dict:
    stages = [{k: s[k] for k in ("epochs", "best_epoch", "best_val_ppl", "best_val_acc",
                                 "best_hard_ppl")} for s in summary["stages"]]
    return {"stages": stages, "mining": summary["mining"], "final": summary["final"]}


@pytest.mark.parametrize("name", ["stack", "token-all"])
def test_resume_after_stage2_epoch1_gives_the_uninterrupted_figures(runs, name):
    settings, _, whole = runs(name)
    settings = settings.replace(run=dataclasses.replace(
        settings.run, runs_dir=str(Path(settings.run.runs_dir) / "resumed")))
    control = RunControl()

    def cancel_after_stage2_epoch1(event):
        if isinstance(event, ev.EpochEnded) and (event.stage, event.epoch) == (2, 1):
            control.cancel()
    first = run_ashem(settings, [cancel_after_stage2_epoch1], control,
                      corpus=tiny_corpus(settings))
    assert first.status == "cancelled"
    second = resume_ashem(first.run_dir, [], corpus=tiny_corpus(settings))
    assert second.status == "finished", second.error
    assert figures(second.summary) == figures(whole.summary)
    assert len(second.summary["stages"][1]["history"]) == \
        len(whole.summary["stages"][1]["history"]) >= 2


def test_training_macs_follow_what_the_ablation_trains(runs):
    """The same tokens (every one, sequence context, the same epochs' batches): training the
    whole model adds its lower layers' forward and backward and the head's weight gradient
    at every step, so it costs more per epoch than training the new layers alone."""
    def per_epoch(name):
        _, recorder, _ = runs(name)
        stage2 = [e for e in recorder.events if isinstance(e, ev.EpochEnded) and e.stage == 2]
        return [e.training_macs for e in stage2]

    grow, stack = per_epoch("grow"), per_epoch("stack")
    assert all(m and m > 0 for m in grow + stack)
    assert min(stack[1:]) > max(grow[1:])  # after the first epoch, which holds set-up costs


@pytest.mark.parametrize("name", ["grow", "stack"])
def test_a_stage_started_event_says_what_the_stage_trains(runs, name):
    settings, recorder, _ = runs(name)
    first, second = (recorder.one(ev.StageStarted, stage=n) for n in (1, 2))
    st = settings.stages[1]
    assert (second.tokens, second.trainable, second.init, second.freeze_head) == \
        (st.tokens, st.trainable, st.init, st.freeze_head)
    assert (first.tokens, first.scope()) == (None, "")  # stage 1 trains everything, always
    assert second.scope() == {
        "grow": "trains the new layers on all tokens; new layers fresh; head frozen",
        "stack": "trains the whole model on all tokens; new layers copied from the trained "
                 "layers; head trained"}[name]
