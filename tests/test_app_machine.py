"""The machine figures in the app: the view keeps the samples (state.py), the cards under the
metric cards (80 × 24) and the wide screen's panel and chart show them (widgets/machine.py),
and a sample, like a progress event, redraws neither the log nor the charts."""
from __future__ import annotations

import threading
from dataclasses import replace

from app_events import FakeControl, MiB, count_calls, machine, make_events, plain, until
from test_app_dashboard import until_true

from ashem_app.app import AshemApp
from ashem_app.sources import ControlledSource, ReplaySource
from ashem_app.state import MACHINE_SAMPLES_KEPT, RunView, reduce, reduce_all
from ashem_app.widgets.cards import MetricCards
from ashem_app.widgets.eventlog import EventLog
from ashem_app.widgets.machine import (MachineCards, MachineChart, MachinePanel, gpu_card,
                                       machine_card, panel_lines)
from ashem_engine.events import MachineSampled

GPU = {"index": 0, "allocated_bytes": 1536 * MiB, "reserved_bytes": 3 * 1024 * MiB,
       "peak_allocated_bytes": 2 * 1024 * MiB, "peak_reserved_bytes": 3 * 1024 * MiB,
       "utilization": 87, "power_w": 312.5}


def samples(events) -> list[MachineSampled]:
    return [e for e in events if isinstance(e, MachineSampled)]


def card_text(app: AshemApp, card: str) -> str:
    return plain(app.dashboard.query_one(f"#card-{card}"))


# -- the view ------------------------------------------------------------------------------------

def test_the_view_keeps_the_latest_sample_and_a_bounded_history():
    events = make_events()
    view = reduce_all(events)
    assert view.machine is samples(events)[-1]
    assert view.machine_samples == tuple(samples(events))
    many = [machine(n, 1) for n in range(MACHINE_SAMPLES_KEPT + 50)]
    for n, sample in enumerate(many):
        sample.t = float(n)
    view = reduce_all(many, view)
    assert len(view.machine_samples) == MACHINE_SAMPLES_KEPT
    assert view.machine_samples[0] is many[50] and view.machine is many[-1]


def test_a_sample_changes_no_status_and_a_new_attempt_starts_its_own_samples():
    held = reduce_all(until(make_events(), boundary="mining-1"))
    sampled = reduce(held, machine(9, None))
    assert sampled.status == "paused" and sampled.held_at == "mining-1"
    again = replace(make_events()[0], resumed=True, seconds_before=900.0,
                    resume_point={"stage": 1, "epoch": 4, "stage_done": True})
    resumed = reduce(sampled, again)
    assert resumed.machine is None and resumed.machine_samples == ()


# -- what the cards and the panel say -----------------------------------------------------------

def test_card_texts_name_every_figure_of_a_sample():
    sample = MachineSampled(cpu_percent=182.4, rss_bytes=417 * MiB, peak_rss_bytes=1536 * MiB,
                            threads=3, system_cpu_percent=99.0, devices=[GPU])
    assert machine_card(sample) == ("182 % CPU · 3 thr", "417 MiB (peak 1.5 GiB)")
    assert machine_card(sample, one_line=True) == ("182 % CPU", "417 MiB (peak 1.5 GiB) · 3 thr")
    assert machine_card(None)[1] == "no sample yet"
    assert gpu_card(GPU) == ("1.5 GiB (peak 2.0)", "87 % · 312 W · res 3.0 GiB")
    without_nvml = {k: v for k, v in GPU.items() if k not in ("utilization", "power_w")}
    assert gpu_card(without_nvml)[1] == "res 3.0 GiB"
    lines = panel_lines(sample).plain.splitlines()
    assert lines == ["CPU 182 % · RSS 417 MiB (peak 1.5 GiB) · 3 threads · machine 99 % CPU",
                     "GPU 0 1.5 GiB (peak 2.0) · 87 % · 312 W · res 3.0 GiB"]


# -- the dashboard (Pilot) ------------------------------------------------------------------------

async def test_at_80x24_the_machine_card_shows_the_latest_sample():
    events = make_events()
    app = AshemApp(ReplaySource(events))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        last = samples(events)[-1]
        text = card_text(app, "machine")
        assert text.startswith("Machine") and f"{last.cpu_percent:.0f} % CPU" in text
        assert f"{last.rss_bytes // MiB} MiB (peak {last.peak_rss_bytes // MiB})" in text
        assert f"{last.threads} thr" in text
        card = app.dashboard.query_one("#card-machine")
        assert card.region.height == 1 and card.region.bottom <= 24 - 8  # above log, footer
        assert not app.dashboard.query_one("#card-gpu").display
        assert not app.dashboard.query_one(MachinePanel).display


async def test_a_cuda_sample_shows_the_gpu_card():
    events = [*make_events(), replace(machine(12, None), devices=[GPU])]
    app = AshemApp(ReplaySource(events))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        gpu = app.dashboard.query_one("#card-gpu")
        assert gpu.display and gpu.region.height == 1
        assert plain(gpu).startswith("GPU") and "1.5 GiB (peak 2.0)" in plain(gpu)


async def test_on_a_wide_screen_the_panel_charts_cpu_and_memory_over_run_time():
    events = make_events()
    app = AshemApp(ReplaySource(events))
    async with app.run_test(size=(160, 45)) as pilot:
        await pilot.pause()
        panel = app.dashboard.query_one(MachinePanel)
        assert panel.display and not app.dashboard.query_one(MachineCards).display
        chart = app.dashboard.query_one(MachineChart)
        chart.render()
        kept = samples(events)
        assert chart.series["cpu"] == [(s.t, s.cpu_percent) for s in kept]
        assert chart.series["rss"] == [(s.t, s.rss_bytes / MiB) for s in kept]
        line = plain(app.dashboard.query_one("#machine-line"))
        assert line.startswith(f"CPU {kept[-1].cpu_percent:.0f} % · RSS")
        assert panel.region.y >= app.dashboard.query_one(EventLog).region.y  # beside the log


async def test_a_sample_from_the_engine_thread_updates_the_card_without_a_redraw(monkeypatch):
    cards = count_calls(monkeypatch, MetricCards, "show")
    app = AshemApp(ControlledSource(FakeControl()), refresh_interval=0.05)
    async with app.run_test(size=(80, 24)) as pilot:
        app.feed(until(make_events(), kind="EpochEnded"))
        await pilot.pause()
        redraws, lines = len(cards), len(app.dashboard.query_one(EventLog).lines)
        sample = replace(machine(3, 1), cpu_percent=123.0, t=300.0)
        thread = threading.Thread(target=app.ingest, args=(sample,))  # as the sampler sends
        thread.start()
        thread.join()
        await until_true(pilot, lambda: "123 % CPU" in card_text(app, "machine"))
        assert len(cards) == redraws  # no structural redraw
        assert len(app.dashboard.query_one(EventLog).lines) == lines  # not logged
        assert app.view.machine is sample


def test_an_empty_view_has_no_figures():
    view = RunView()
    assert view.machine is None and view.machine_samples == ()
    assert panel_lines(view.machine).plain == "machine: no sample yet"
