"""Settings: loading, `--set` overrides, and one-line errors that name the key and the value."""
from __future__ import annotations

from pathlib import Path

import pytest

from ashem_engine.settings import (DEFAULT_STAGES, DEFAULTS_NOTICE, Settings, SettingsError,
                                   choose_settings_file, default_settings_text, load_settings,
                                   parse_override, settings_from_dict, validate,
                                   write_default_settings)

SHIPPED = Path(__file__).resolve().parents[1] / "settings.toml"


def error_of(overrides=(), path=None) -> str:
    with pytest.raises(SettingsError) as info:
        load_settings(path, list(overrides))
    message = str(info.value)
    assert "\n" not in message, f"not one line: {message!r}"
    assert message.strip() == message and message
    return message


# -- the shipped file and the defaults ------------------------------------------------------

def test_shipped_settings_file_equals_builtin_defaults():
    assert SHIPPED.is_file()
    assert load_settings(SHIPPED) == Settings()
    assert load_settings(None) == Settings()


def test_the_package_ships_the_same_commented_settings_file():
    assert default_settings_text() == SHIPPED.read_text(encoding="utf-8")


def test_init_writes_the_defaults_and_never_overwrites(tmp_path):
    target = write_default_settings(tmp_path / "settings.toml")
    assert load_settings(target) == Settings()
    target.write_text("# mine\n")
    with pytest.raises(SettingsError, match="already exists; nothing was written"):
        write_default_settings(target)
    assert target.read_text() == "# mine\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["settings.toml"]  # no temp left


def test_without_a_settings_file_the_defaults_are_used_and_said(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert choose_settings_file(None) == (None, DEFAULTS_NOTICE)
    assert choose_settings_file("other.toml") == ("other.toml", None)
    (tmp_path / "settings.toml").write_text("")
    assert choose_settings_file(None) == ("settings.toml", None)


def test_defaults_are_the_spec_setup():
    s = Settings()
    validate(s)
    assert (s.run.seed, s.data.seq_len, s.data.batch_size, s.data.train_samples) == \
        (42, 32, 64, 10000)
    assert (s.model.dim, s.model.heads, s.model.ffn_hidden) == (64, 4, 256)
    assert [(st.layers, st.lr, st.patience) for st in s.stages] == [(2, 1e-3, 1), (4, 1e-4, 3)]
    assert s.stages[1].hard_ratio == 0.5 and s.stages[1].context == "token"
    assert not s.stages[1].freeze_head
    assert s.mining.split == "validation" and s.evaluation.split == "validation"


def test_to_dict_round_trips_through_settings_from_dict():
    s = load_settings(None, ["run.name=x", "stages.3.layers=6", "stages.3.lr=1e-4",
                             "stages.3.hard_ratio=0.3", "stages.3.context=token",
                             "run.pause_at=['mining-2']"])
    assert settings_from_dict(s.to_dict()) == s


# -- overrides -----------------------------------------------------------------------------

def test_override_values_are_typed_toml_or_bare_strings():
    assert parse_override("run.seed=7") == (["run", "seed"], 7)
    assert parse_override("stages.2.lr=2e-4") == (["stages", "2", "lr"], 2e-4)
    assert parse_override("run.name=demo") == (["run", "name"], "demo")
    assert parse_override("run.name='quoted'") == (["run", "name"], "quoted")
    assert parse_override("run.pause_at=[]") == (["run", "pause_at"], [])
    assert parse_override("stages.2.freeze_head=true") == (["stages", "2", "freeze_head"], True)


def test_overrides_apply():
    s = load_settings(None, ["run.seed=7", "run.name=demo", "stages.2.lr=2e-4",
                             "data.eval_fraction=1", "stages.1.lr=1", "run.pause_at=[]",
                             "data.path=/some/where"])
    assert s.run.seed == 7 and isinstance(s.run.seed, int)
    assert s.run.name == "demo"
    assert s.stages[1].lr == 2e-4
    assert s.stages[0].lr == 1.0 and isinstance(s.stages[0].lr, float)  # int -> float
    assert s.data.eval_fraction == 1.0 and isinstance(s.data.eval_fraction, float)
    assert s.run.pause_at == ()
    assert s.data.path == "/some/where"
    # everything not overridden keeps its default
    assert s.stages[1].patience == 3 and s.model == Settings().model


def test_pause_at_accepts_a_bare_word():
    assert load_settings(None, ["run.pause_at=evaluation"]).run.pause_at == ("evaluation",)


def test_override_adds_a_third_stage():
    s = load_settings(None, ["stages.3.layers=6", "stages.3.lr=5e-5", "stages.3.hard_ratio=0.4",
                             "stages.3.context=token", "run.pause_at=['mining-2']"])
    assert len(s.stages) == 3
    assert s.stages[:2] == DEFAULT_STAGES
    third = s.stages[2]
    assert (third.layers, third.lr, third.hard_ratio, third.context) == (6, 5e-5, 0.4, "token")
    # keys left out take the spec's stage-2 values, as for every later stage
    assert third.patience == 3 and third.max_epochs == 50 and third.freeze_head is False


def test_a_stage_table_may_leave_out_every_key(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text("[[stages]]\n[[stages]]\n[[stages]]\nhard_ratio = 0.3\n")
    stages = load_settings(path).stages
    assert stages[:2] == DEFAULT_STAGES  # the spec's two stages
    third = stages[2]
    assert (third.layers, third.lr, third.patience, third.hard_ratio, third.context) == \
        (6, 1e-4, 3, 0.3, "token")  # two layers deeper than stage 2


def test_a_stage_default_still_meets_the_rules():
    message = error_of(["stages.2.layers=8", "stages.3.layers=7"])
    assert "stages.3.layers" in message and "greater than stages.2.layers (8)" in message


def test_override_cannot_skip_a_stage_number():
    message = error_of(["stages.4.lr=1e-3"])
    assert "stages.4.lr" in message and "there are 2 stages" in message


def test_override_without_equals_sign():
    assert "run.seed" in error_of(["run.seed"])


def test_override_on_top_of_a_file(tmp_path):
    f = tmp_path / "s.toml"
    f.write_text('[run]\nseed = 3\nname = "file"\npause_at = ["stage-1"]\n\n'
                 '[[stages]]\nlayers = 3\nlr = 0.01\n')
    s = load_settings(f, ["run.seed=4"])
    assert (s.run.seed, s.run.name) == (4, "file")
    assert len(s.stages) == 1 and s.stages[0].layers == 3
    s2 = load_settings(f, ["stages.2.layers=5", "stages.2.lr=1e-4",
                           "stages.2.hard_ratio=0.5", "stages.2.context=token"])
    assert [st.layers for st in s2.stages] == [3, 5]


# -- errors: one line, naming key and value --------------------------------------------------

@pytest.mark.parametrize("override, key, value", [
    # wrong types
    ("run.seed=x", "run.seed", "'x'"),
    ("run.seed=true", "run.seed", "True"),
    ("run.seed=1.5", "run.seed", "1.5"),
    ("data.batch_size='64'", "data.batch_size", "'64'"),
    ("stages.1.lr=true", "stages.1.lr", "True"),
    ("stages.2.freeze_head=1", "stages.2.freeze_head", "1"),
    ("run.pause_at=[1]", "run.pause_at", "[1]"),
    # out of range
    ("stages.2.hard_ratio=0", "stages.2.hard_ratio", "0.0"),
    ("stages.2.hard_ratio=1", "stages.2.hard_ratio", "1.0"),
    ("stages.2.hard_ratio=1.5", "stages.2.hard_ratio", "1.5"),
    ("stages.2.layers=2", "stages.2.layers", "2"),
    ("stages.2.layers=1", "stages.2.layers", "1"),
    ("stages.1.lr=0", "stages.1.lr", "0.0"),
    ("stages.1.lr=-1e-3", "stages.1.lr", "-0.001"),
    ("stages.1.patience=0", "stages.1.patience", "0"),
    ("stages.1.hard_ratio=0.5", "stages.1.hard_ratio", "0.5"),
    ("stages.2.context=paragraph", "stages.2.context", "'paragraph'"),
    ("data.batch_size=0", "data.batch_size", "0"),
    ("data.seq_len=0", "data.seq_len", "0"),
    ("data.eval_fraction=0", "data.eval_fraction", "0.0"),
    ("model.heads=3", "model.heads", "3"),
    ("model.heads=0", "model.heads", "0"),
    ("run.device=tpu", "run.device", "'tpu'"),
    ("mining.split=test", "mining.split", "'test'"),
    ("evaluation.split=train", "evaluation.split", "'train'"),
    ("run.pause_at=['stage-9']", "run.pause_at", "stage-9"),
    ("run.pause_at=['mining-2']", "run.pause_at", "mining-2"),  # no stage 3 to mine for
    ("run.pause_at=['later']", "run.pause_at", "later"),
    ("run.name=a/b", "run.name", "'a/b'"),
    ("data.train_samples=-1", "data.train_samples", "-1"),
    ("data.eval_samples=-2", "data.eval_samples", "-2"),
    ("data.eval_samples=0.5", "data.eval_samples", "0.5"),
    ("data.vocab_size=-1", "data.vocab_size", "-1"),
    ("data.vocab_size=2", "data.vocab_size", "2"),
    ("data.train_file=''", "data.train_file", "''"),
    ("data.validation_file=sub/dev.txt", "data.validation_file", "'sub/dev.txt'"),
    ("data.test_file=1", "data.test_file", "1"),
    ("data.hub_text_column=''", "data.hub_text_column", "''"),
])
def test_bad_value_names_key_and_value(override, key, value):
    message = error_of([override])
    assert key in message
    assert value in message


@pytest.mark.parametrize("override, message", [
    ("data.train_samples=-1", "data.train_samples = -1: must be >= 0 (0 = the whole split)"),
    ("data.eval_samples=-2",
     "data.eval_samples = -2: must be >= -1 (-1 = set by eval_fraction, 0 = the whole split)"),
    ("data.vocab_size=1",
     "data.vocab_size = 1: must be 0 (no cap) or >= 3 (<unk>, <pad> and at least one word)"),
    ("data.test_file=a/b.txt",
     "data.test_file = 'a/b.txt': must be a file name inside data.path (not empty, no '/' or "
     "'\\')"),
    ("data.hub_text_column=''", "data.hub_text_column = '': must be the name of a text column"),
])
def test_scale_settings_say_what_is_allowed(override, message):
    assert error_of([override]) == message


def test_scale_settings_defaults_and_accepted_values():
    d = Settings().data
    assert (d.train_samples, d.eval_samples, d.vocab_size, d.hub_text_column) == \
        (10000, -1, 0, "text")
    assert (d.train_file, d.validation_file, d.test_file) == \
        ("wiki.train.raw", "wiki.valid.raw", "wiki.test.raw")
    s = load_settings(None, ["data.train_samples=0", "data.eval_samples=0", "data.vocab_size=3",
                             "data.train_file=a.txt", "data.hub_text_column=content"]).data
    assert (s.train_samples, s.eval_samples, s.vocab_size, s.train_file, s.hub_text_column) == \
        (0, 0, 3, "a.txt", "content")


def test_heads_must_divide_dim_message_says_so():
    assert "must divide model.dim (64)" in error_of(["model.heads=3"])


def test_unknown_table():
    message = error_of(["colour.scheme=dark"])
    assert "unknown table [colour]" in message


def test_unknown_table_in_file(tmp_path):
    f = tmp_path / "s.toml"
    f.write_text("[trainer]\nlr = 1\n")
    assert "[trainer]" in error_of(path=f)


def test_unknown_key_names_it_and_lists_allowed():
    message = error_of(["run.sed=1"])
    assert "run.sed" in message and "seed" in message
    message = error_of(["stages.2.learning_rate=1e-4"])
    assert "stages.2.learning_rate" in message and "lr" in message


def test_toml_syntax_error_names_file_and_line(tmp_path):
    f = tmp_path / "broken.toml"
    f.write_text('[run]\nname = "x"\nseed = = 3\n')
    message = error_of(path=f)
    assert "broken.toml" in message and "line 3" in message


def test_missing_file(tmp_path):
    message = error_of(path=tmp_path / "nope.toml")
    assert "nope.toml" in message and "does not exist" in message


def test_non_utf8_file(tmp_path):
    f = tmp_path / "latin1.toml"
    f.write_bytes(b'[run]\nname = "caf\xe9"\n')
    assert "latin1.toml" in error_of(path=f)


def test_stages_must_be_array_of_tables(tmp_path):
    f = tmp_path / "s.toml"
    f.write_text('stages = "two"\n')
    assert "stages" in error_of(path=f)


def test_stage_override_on_a_malformed_stages_value(tmp_path):
    f = tmp_path / "s.toml"
    f.write_text('stages = "two"\n')
    assert "stages" in error_of(["stages.1.lr=1e-3"], path=f)


def test_settings_are_frozen():
    s = Settings()
    with pytest.raises(Exception):
        s.run.seed = 1  # type: ignore[misc]
