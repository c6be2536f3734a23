"""The head over tiles of tokens × words (tiled.py): the same loss, gradients and exit
statistics as the plain computation, for any tiling, in fp32 and within bf16's rounding."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from ashem_engine import head, tile_probe
from ashem_engine.head import HeadTiles, Tiles, exit_stats, head_loss, tiles_in_use
from engine_support import single_thread  # noqa: F401  (autouse fixture)

N, DIM, VOCAB = 37, 8, 29
TILINGS = [Tiles(5, 4), Tiles(8, 7), Tiles(37, 10), Tiles(100, 28), Tiles(1, 3)]


def inputs(seed=0, n=N, vocab=VOCAB):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, DIM, generator=g), torch.randn(vocab, DIM, generator=g) * 0.7,
            torch.randint(0, vocab, (n,), generator=g))


def plain(h, w, y, train_w=True):
    h, w = h.clone().requires_grad_(), w.clone().requires_grad_(train_w)
    loss = F.cross_entropy(h @ w.T, y)
    loss.backward()
    return loss.detach(), h.grad, w.grad


def tiled(h, w, y, tiles, train_h=True, train_w=True):
    h, w = h.clone().requires_grad_(train_h), w.clone().requires_grad_(train_w)
    loss = head_loss(h, w, y, tiles=tiles)
    loss.backward()
    return loss.detach(), h.grad, w.grad


@pytest.mark.parametrize("tiles", TILINGS, ids=str)
def test_loss_and_both_gradients_equal_cross_entropy(tiles):
    h, w, y = inputs()
    for ours, exact in zip(tiled(h, w, y, tiles), plain(h, w, y)):
        assert torch.allclose(ours, exact, atol=1e-6)


@pytest.mark.parametrize("tiles", TILINGS, ids=str)
def test_a_frozen_head_takes_one_pass_and_the_same_gradient(tiles, monkeypatch):
    from ashem_engine import tiled as module

    passes = []
    monkeypatch.setattr(module, "_second_pass", lambda *a: passes.append(a) or None)
    h, w, y = inputs(1)
    loss, grad_h, grad_w = tiled(h, w, y, tiles, train_w=False)
    exact = plain(h, w, y, train_w=False)
    assert passes == [] and grad_w is None
    assert torch.allclose(loss, exact[0], atol=1e-6) and torch.allclose(grad_h, exact[1],
                                                                         atol=1e-6)


def test_a_frozen_input_gets_only_the_heads_gradient():
    h, w, y = inputs(2)
    loss, grad_h, grad_w = tiled(h, w, y, Tiles(6, 5), train_h=False)
    assert grad_h is None and torch.allclose(grad_w, plain(h, w, y)[2], atol=1e-6)


def test_the_upstream_gradient_scales_both():
    h0, w0, y = inputs(3)
    h, w = h0.clone().requires_grad_(), w0.clone().requires_grad_()
    (2.5 * head_loss(h, w, y, tiles=Tiles(9, 6))).backward()
    _, gh, gw = plain(h0, w0, y)
    assert torch.allclose(h.grad, 2.5 * gh, atol=1e-6) and torch.allclose(w.grad, 2.5 * gw,
                                                                           atol=1e-6)


@pytest.mark.parametrize("scale", [200.0, -200.0], ids=["overflow", "underflow"])
def test_rows_beyond_exps_range_take_the_shift(scale):
    h, w, y = inputs(4)
    h = h * scale  # logits of ±hundreds: exp(logit) leaves float32 without the shift
    loss, grad_h, grad_w = tiled(h, w, y, Tiles(8, 6))
    exact = plain(h, w, y)
    assert torch.isfinite(loss) and torch.allclose(loss, exact[0], rtol=1e-5)
    # logits of ~±1000 carry ~1e-4 of rounding in fp32, the plain computation's too
    for ours, plain_grad in ((grad_h, exact[1]), (grad_w, exact[2])):
        assert torch.allclose(ours, plain_grad, rtol=1e-5, atol=1e-3)
    stats, logits = exit_stats(h, w, y, tiles=Tiles(8, 6)), h @ w.T
    assert torch.allclose(stats.nll, F.cross_entropy(logits, y, reduction="none"), rtol=1e-5)
    assert torch.allclose(stats.confidence, logits.softmax(1).amax(1), atol=1e-6)


@pytest.mark.parametrize("tiles", TILINGS, ids=str)
def test_statistics_equal_brute_force(tiles):
    h, w, y = inputs(5, n=60)
    y[:20] = (h[:20] @ w.T).argmax(1)  # some hits, so correctness is tested both ways
    stats, logits = exit_stats(h, w, y, tiles=tiles), h @ w.T
    assert torch.allclose(stats.nll, F.cross_entropy(logits, y, reduction="none"), atol=1e-5)
    assert torch.allclose(stats.confidence, logits.softmax(1).amax(1), atol=1e-6)
    assert torch.equal(stats.correct, logits.argmax(1) == y)
    assert stats.correct.sum() >= 20 and stats.correct.dtype == torch.bool


@pytest.mark.parametrize("tiles", [Tiles(4, 3), Tiles(16, 8), Tiles(16, 29)], ids=str)
def test_ties_go_to_the_first_word_as_argmax_breaks_them(tiles):
    h, w, _ = inputs(6, n=16)
    w[5] = w[2]  # same block (3 words) or not: word 5 ties word 2 on every row
    w[20] = w[2]
    logits = h @ w.T
    y = logits.argmax(1)  # where 2 wins, it wins over 5 and 20, which lose
    y[::3] = torch.where(y[::3] == 2, 5, y[::3])
    y[1::3] = torch.where(y[1::3] == 2, 20, y[1::3])
    zero = exit_stats(h * 0, w, y, tiles=tiles)  # every logit 0: word 0 is argmax
    assert torch.equal(zero.correct, y == 0)
    assert torch.equal(exit_stats(h, w, y, tiles=tiles).correct, logits.argmax(1) == y)


def test_statistics_of_no_tokens_and_of_batched_shapes():
    h, w, y = inputs(7, n=24)
    assert len(exit_stats(h[:0], w, y[:0], tiles=Tiles(4, 5))) == 0
    flat = exit_stats(h, w, y, tiles=Tiles(4, 5))
    shaped = exit_stats(h.reshape(4, 6, DIM), w, y.reshape(4, 6), tiles=Tiles(4, 5))
    assert torch.equal(flat.nll, shaped.nll) and torch.equal(flat.correct, shaped.correct)


def test_bf16_tiles_stay_within_bf16_rounding_of_fp32():
    h, w, y = inputs(8, n=300, vocab=500)
    exact = plain(h, w, y)
    with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
        ours = tiled(h, w, y, Tiles(64, 96))
        stats = exit_stats(h, w, y, tiles=Tiles(64, 96))
    assert all(t.dtype == torch.float32 for t in ours)
    assert abs(float(ours[0] - exact[0])) / float(exact[0]) < 2e-3
    for a, b in zip(ours[1:], exact[1:]):
        assert 1e-4 < float((a - b).norm() / b.norm()) < 2e-2  # bf16 ran, and closely
    fp32 = exit_stats(h, w, y)
    assert (stats.nll - fp32.nll).abs().max() < 0.1
    assert (stats.confidence - fp32.confidence).abs().max() < 0.02
    assert (stats.correct == fp32.correct).float().mean() > 0.95


def test_a_runs_tiles_reach_every_head_call_in_its_thread(monkeypatch):
    seen = []
    monkeypatch.setattr(head, "_TiledHeadLoss", type("Spy", (), {
        "apply": staticmethod(lambda h, w, y, tiles, low: seen.append(tiles) or h.sum())}))
    h, w, y = inputs(9)
    with tiles_in_use(HeadTiles(Tiles(8, 4), Tiles(16, 5))):
        head_loss(h, w, y)
        stats = exit_stats(h, w, y)
    assert seen == [Tiles(8, 4)]
    assert torch.allclose(stats.nll, exit_stats(h, w, y, tiles=Tiles(16, 5)).nll, atol=0)
    head_loss(h, w, y)  # outside: whole rows again
    assert seen == [Tiles(8, 4)]
    by_size = HeadTiles(Tiles(8, 4), Tiles(8, 4), 32, HeadTiles(Tiles(128), Tiles(128), 4))
    with tiles_in_use(by_size):
        head_loss(h[:5], w, y[:5])  # 5 tokens: nearer 4 than 32, rows
        head_loss(h, w, y)  # 37: tiles
    assert seen == [Tiles(8, 4), Tiles(8, 4)]


def test_tiles_read_and_print_as_the_setting_writes_them():
    assert Tiles.parse("1024x256") == Tiles(1024, 256) and str(Tiles(1024, 256)) == "1024x256"
    assert Tiles.parse("128xall") == Tiles(128) and str(Tiles(128)) == "128xall"
    for bad in ("0x5", "5x0", "x5", "5x", "five", "5x5x5"):
        with pytest.raises(ValueError):
            Tiles.parse(bad)
        assert tile_probe.describe_setting(bad) is not None


def resolve(setting, tmp_path, vocab=5000, dim=8, sizes=(64, 8), **kw):
    return tile_probe.resolve(setting, torch.device("cpu"), dim, vocab, sizes, False, tmp_path,
                              **kw)


def test_settings_and_small_heads_need_no_probe(tmp_path, monkeypatch):
    monkeypatch.setattr(tile_probe, "probe", lambda *a, **k: pytest.fail("probed"))
    assert resolve("256x512", tmp_path) == (HeadTiles(Tiles(256, 512), Tiles(256, 512)),
                                            "settings")
    assert resolve("rows", tmp_path)[0] == HeadTiles(Tiles(128), Tiles(128))
    assert resolve("auto", tmp_path, vocab=300) == (HeadTiles(Tiles(128), Tiles(128)),
                                                    "small head")
    meta = torch.device("meta")  # any device but the CPU: given tiles hold, "auto" is rows
    assert tile_probe.resolve("64x512", meta, 8, 40000, (64,), False, tmp_path)[0] == \
        HeadTiles(Tiles(64, 512), Tiles(64, 512))
    assert tile_probe.resolve("auto", meta, 8, 40000, (64,), False, tmp_path) == \
        (HeadTiles(Tiles(128), Tiles(128)), "device")
    assert not (tmp_path / tile_probe.CACHE_FILE).exists()


def test_auto_measures_once_and_a_later_run_reads_the_same_choice(tmp_path, monkeypatch):
    told = []
    tiles, source = resolve("auto", tmp_path, vocab=40000,  # 1.3 MB: bigger than the cut
                            probing=lambda: told.append("probing"))
    assert told == ["probing"] and source == tile_probe.PROBED and tiles.tokens == 64 and tiles.smaller.tokens == 8
    assert tiles.step in tile_probe.candidates(64) and tiles.smaller.step in \
        tile_probe.candidates(8)
    kept = json.loads((tmp_path / tile_probe.CACHE_FILE).read_text())
    (entry,) = kept.values()
    for size, found in (("64", entry), ("8", entry["smaller"])):
        times = entry["ms"][size]
        assert set(times["step"]) == {str(t) for t in tile_probe.candidates(int(size))}
        assert found["step"] == min(times["step"], key=times["step"].get)
        assert found["stats"] == min(times["stats"], key=times["stats"].get)
    monkeypatch.setattr(tile_probe, "probe", lambda *a, **k: pytest.fail("probed again"))
    assert resolve("auto", tmp_path, vocab=40000, probing=lambda: told.append("again")) == \
        (tiles, tile_probe.CACHED) and told == ["probing"]
    assert tile_probe.known_or_rows(torch.device("cpu"), 8, 40000, (8, 64), False, tmp_path) == \
        (tiles, tile_probe.CACHED)
    rows, why = tile_probe.known_or_rows(torch.device("cpu"), 8, 40001, (64, 8), False, tmp_path)
    assert rows == HeadTiles(Tiles(128), Tiles(128)) and why.startswith("rows")


def test_each_call_takes_the_tiles_measured_nearest_its_size():
    small = HeadTiles(Tiles(128), Tiles(64, 256), 64)
    tiles = HeadTiles(Tiles(512, 1024), Tiles(1024, 1024), 2048, small)
    assert [tiles.for_tokens(n) for n in (1, 64, 300, 363, 2048, 9000)] == \
        [small, small, small, tiles, tiles, tiles]  # the cut: sqrt(64 × 2048) ≈ 362
    assert tiles.describe() == {"step": "512x1024", "stats": "1024x1024", "tokens": 2048,
                                "smaller": {"step": "128xall", "stats": "64x256",
                                            "tokens": 64}}
    assert HeadTiles(Tiles(8, 4), Tiles(8, 4)).for_tokens(3) == HeadTiles(Tiles(8, 4),
                                                                           Tiles(8, 4))


def test_an_unreadable_or_unwritable_cache_costs_a_probe_not_the_run(tmp_path, monkeypatch):
    fake = HeadTiles(Tiles(64, 256), Tiles(64, 1024))
    monkeypatch.setattr(tile_probe, "probe", lambda *a, **k: (fake, {"step": {}, "stats": {}}))
    (tmp_path / tile_probe.CACHE_FILE).write_text("{not json")
    assert resolve("auto", tmp_path, vocab=40000) == (fake, tile_probe.PROBED)
    blocked = tmp_path / "file"
    blocked.write_text("")
    assert resolve("auto", blocked / "cache", vocab=40000) == (fake, tile_probe.PROBED)


def test_a_bad_setting_is_one_line_naming_what_is_allowed(tmp_path):
    from ashem_engine.settings import SettingsError
    from tiny import tiny_settings

    with pytest.raises(SettingsError) as e:
        tiny_settings(tmp_path, "run.head_tiles=big")
    assert "run.head_tiles" in str(e.value) and "TOKENSxWORDS" in str(e.value)
    assert "\n" not in str(e.value)


def test_a_run_records_its_tiles_and_same_tiles_give_the_same_figures(tmp_path):
    from engine_support import finished_tiny_run
    from test_engine_run import comparable

    runs = [finished_tiny_run(tmp_path, "run.head_tiles=16x32")[1] for _ in range(2)]
    started = [e for e in runs[0] if type(e).__name__ == "RunStarted"][0]
    assert started.head_tiles == {"step": "16x32", "stats": "16x32", "source": "settings"}
    assert comparable(runs[0]) == comparable(runs[1])
    _, rows, _ = finished_tiny_run(tmp_path / "rows")
    started = [e for e in rows if type(e).__name__ == "RunStarted"][0]
    assert started.head_tiles["source"] == "small head"
    final = [[e.ppl for e in run if type(e).__name__ == "Evaluated"] for run in (runs[0], rows)]
    assert final[0] and final[0] != final[1]  # the tiles really ran ...
    assert final[0] == pytest.approx(final[1], rel=1e-4)  # ... to the same figures
