"""Machine metrics: what the run's process uses, sampled on a thread of its own, never on the
training thread's hot path (psutil for the process and the machine; torch for each CUDA
device's memory; torch's NVML readers, where pynvml is installed, for utilisation and power).

`MachineSampler` reads resident memory every `PEAK_EVERY_S` seconds (cheap) to keep the
peaks of the epoch and of the stage, and emits a `MachineSampled` every
`run.machine_sample_s` seconds: the first right after RunStarted, the last just before the
run's last event (`stop`). As the emitter's annotator it sees every event before the sinks:
an epoch's peaks run from StageStarted or the end of the epoch before to its EpochEnded, a
stage's from StageStarted to StageEnded, and it fills `EpochEnded.memory` and
`StageEnded.memory` with them. Under torchrun only rank 0 samples: every figure is rank 0's
process (and its device)."""
from __future__ import annotations

import sys
import threading
import time
from typing import Callable, Optional

import psutil

from . import events as ev
from .sinks import dispatch

PEAK_EVERY_S = 0.5  # resident memory is read this often for the epoch's and stage's peaks


def lifetime_peak_rss() -> Optional[int]:
    """The most resident memory this process has held, in bytes (getrusage's ru_maxrss:
    KiB on Linux, bytes on macOS); None where there is no getrusage."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


class Window:
    """The peaks of one stretch of the run (an epoch, a stage): resident memory from the
    samples, made exact by the lifetime peak when that grew within the stretch; the CUDA
    device's from its allocator's own peak counters (read and reset at each boundary)."""

    def __init__(self, rss: int, lifetime: Optional[int]):
        self.rss, self.lifetime_at_start = rss, lifetime
        self.allocated = self.reserved = 0

    def note_rss(self, rss: int) -> None:
        self.rss = max(self.rss, rss)

    def note_cuda(self, allocated: int, reserved: int) -> None:
        self.allocated, self.reserved = max(self.allocated, allocated), max(self.reserved,
                                                                            reserved)

    def memory(self, lifetime: Optional[int], cuda: bool) -> dict:
        """EpochEnded.memory / StageEnded.memory for this stretch so far."""
        peak = self.rss
        if lifetime is not None and self.lifetime_at_start is not None \
                and lifetime > self.lifetime_at_start:  # a new high, reached within it
            peak = max(peak, lifetime)
        out = {"peak_rss_bytes": int(peak)}
        if cuda:
            out.update(peak_allocated_bytes=int(self.allocated),
                       peak_reserved_bytes=int(self.reserved))
        return out


class MachineSampler:
    """Samples the process on a daemon thread: `start(emit)`, `annotate` as the emitter's
    annotator, `stop()` before the run's last event. `every_s` 0 (or `on` False: a rank
    other than 0) makes it inert: no thread, no samples, memory left None."""

    def __init__(self, every_s: float, on: bool = True, peak_every_s: float = PEAK_EVERY_S):
        self.every_s, self.on = every_s, on and every_s > 0
        self.peak_every_s = min(peak_every_s, every_s) if self.on else peak_every_s
        self.failure: Optional[BaseException] = None  # what stopped the thread, if anything
        self.cpu_seconds = 0.0  # the thread's own CPU time, once stopped (its cost)
        self._lock = threading.Lock()  # the windows, the stage and the CUDA counters
        self._wake, self._stopping = threading.Event(), threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._emit: Optional[Callable[[ev.Event], None]] = None
        self._process = psutil.Process() if self.on else None
        self._announced = False  # RunStarted seen: samples are due
        self._counting_since = 0.0  # when the CPU counts began
        self._stage: Optional[int] = None
        self._device: Optional[int] = None  # the run's CUDA device, once RunStarted says so
        self._nvml = True  # torch's NVML readers answer (pynvml installed); False once not
        self._device_peaks = (0, 0)  # allocated, reserved: the device's peaks before a reset
        self._epoch = self._stage_window = Window(0, None)

    # -- the run's side: start, annotate, stop ----------------------------------------------
    def start(self, emit: Callable[[ev.Event], None]) -> None:
        if not self.on:
            return
        self._emit = emit
        self._process.cpu_percent(None)  # the first call only starts the count
        psutil.cpu_percent(None)
        self._counting_since = time.monotonic()
        rss = self._rss()
        self._epoch = self._stage_window = Window(rss, lifetime_peak_rss())
        self._thread = threading.Thread(target=self._run, name="ashem-machine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Emits the last sample (once samples are due) and ends the thread; idempotent."""
        if self._thread is None:
            return
        self._stopping.set()
        self._wake.set()
        self._thread.join()
        self._thread = None

    def annotate(self, event: ev.Event) -> None:
        """Called by the emitter with each event, before its sinks (on the emitting thread)."""
        if self.on:
            dispatch(self, event)

    def on_RunStarted(self, e: ev.RunStarted) -> None:
        self.announce(e.device)

    def announce(self, device: str) -> None:
        """The run started on `device` (RunStarted.device): samples are due from now, the
        first at once; on CUDA, with the device's memory. Called on the training thread."""
        if device.startswith("cuda"):
            import torch

            index = torch.device(device).index
            with self._lock:
                self._device = torch.cuda.current_device() if index is None else index
        self._announced = True
        self._wake.set()

    def on_StageStarted(self, e: ev.StageStarted) -> None:
        with self._lock:
            self._stage = e.stage
            self._epoch = self._stage_window = self._new_window()

    def on_EpochEnded(self, e: ev.EpochEnded) -> None:
        with self._lock:
            self._note_now()
            if e.memory is None:
                e.memory = self._epoch.memory(lifetime_peak_rss(), self._device is not None)
            self._epoch = self._new_window()  # the next epoch's, from here

    def on_StageEnded(self, e: ev.StageEnded) -> None:
        with self._lock:
            self._note_now()
            if e.memory is None:
                e.memory = self._stage_window.memory(lifetime_peak_rss(),
                                                     self._device is not None)
            self._stage = None

    # -- windows ---------------------------------------------------------------------------
    def _new_window(self) -> Window:
        """A window from now; the CUDA peak counters start again with it."""
        if self._device is not None:
            import torch

            self._device_peaks = self._cuda_peaks()
            torch.cuda.reset_peak_memory_stats(self._device)
        return Window(self._rss(), lifetime_peak_rss())

    def _note_now(self) -> None:
        """Folds the present into the open windows (under the lock)."""
        rss = self._rss()
        cuda = self._cuda_since_reset() if self._device is not None else None
        for window in (self._epoch, self._stage_window):  # (the same one at a stage's start)
            window.note_rss(rss)
            if cuda is not None:
                window.note_cuda(*cuda)

    def _rss(self) -> int:
        return self._process.memory_info().rss

    def _cuda_since_reset(self) -> tuple[int, int]:
        import torch

        return (torch.cuda.max_memory_allocated(self._device),
                torch.cuda.max_memory_reserved(self._device))

    def _cuda_peaks(self) -> tuple[int, int]:
        """The device's peaks over the process' life: those before the last reset, and since."""
        allocated, reserved = self._cuda_since_reset()
        return max(allocated, self._device_peaks[0]), max(reserved, self._device_peaks[1])

    # -- the sampler's thread ----------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._loop()
        except Exception as e:  # psutil, torch or a sink: the run goes on without samples
            self.failure = e
        finally:
            self.cpu_seconds = time.thread_time()

    def _loop(self) -> None:
        due = float("inf")  # when the next sample is due (none before RunStarted)
        while True:
            self._wake.wait(max(0.0, min(self.peak_every_s, due - time.monotonic())))
            if self._stopping.is_set():
                if self._announced:
                    self._send()
                return
            if self._wake.is_set():  # RunStarted: the first sample
                self._wake.clear()
                due = time.monotonic()
            with self._lock:
                self._note_now()
            if time.monotonic() >= due:
                self._send()
                due = time.monotonic() + self.every_s

    def _send(self) -> None:
        self._emit(self.sample())

    def sample(self) -> ev.MachineSampled:
        """The process and the machine now (on the sampler's thread)."""
        process = self._process
        with process.oneshot():
            cpu, rss, threads = process.cpu_percent(None), process.memory_info().rss, \
                process.num_threads()
        with self._lock:
            self._epoch.note_rss(rss)
            self._stage_window.note_rss(rss)
            devices = [self._device_memory()] if self._device is not None else []
            stage = self._stage
        for device in devices:  # (NVML's calls take a while: outside the lock)
            device.update(self._nvml_readings(device["index"]))
        return ev.MachineSampled(
            cpu_percent=round(cpu, 1), rss_bytes=rss,
            peak_rss_bytes=max(rss, lifetime_peak_rss() or 0), threads=threads,
            system_cpu_percent=self._system_cpu(),
            system_memory_percent=round(psutil.virtual_memory().percent, 1),
            devices=devices, stage=stage)

    def _system_cpu(self) -> Optional[float]:
        """The machine's CPU % since the last sample; None right after the count began (the
        system's clock ticks are too coarse for a figure yet)."""
        percent = psutil.cpu_percent(None)
        return None if time.monotonic() - self._counting_since < 0.1 else round(percent, 1)

    def _device_memory(self) -> dict:
        """The run's CUDA device: its allocator's figures (under the lock)."""
        import torch

        index = self._device
        allocated, reserved = self._cuda_peaks()
        return {"index": index, "allocated_bytes": torch.cuda.memory_allocated(index),
                "reserved_bytes": torch.cuda.memory_reserved(index),
                "peak_allocated_bytes": allocated, "peak_reserved_bytes": reserved}

    def _nvml_readings(self, index: int) -> dict:
        """Utilisation (%) and power (W) from NVML through torch; {} without pynvml or an
        NVML driver (asked once)."""
        if not self._nvml:
            return {}
        import torch

        try:
            return {"utilization": torch.cuda.utilization(index),
                    "power_w": round(torch.cuda.power_draw(index) / 1000, 1)}  # from mW
        except Exception:  # ModuleNotFoundError, pynvml's NVMLError, RuntimeError
            self._nvml = False
            return {}
