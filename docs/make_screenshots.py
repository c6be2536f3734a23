"""The screenshots in docs/APP.md, made by the app itself from the test fixture
(tests/app_events.py):  python docs/make_screenshots.py  (from the repository root)."""
import asyncio
import sys

sys.path.insert(0, "tests")
from app_events import FakeControl, make_events, until
from ashem_app.app import AshemApp
from ashem_app.sources import ControlledSource, ReplaySource

def mid_run():
    return until(make_events(), predicate=lambda e: e.kind == "BatchProgress"
                 and e.stage == 2 and e.epoch == 4 and e.batch == 256)

async def shot(app, size, name, events=None):
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        if events is not None:
            app.feed(events)
            await pilot.pause()
        await pilot.pause(0.3)
        app.save_screenshot(name, "docs")

async def main():
    await shot(AshemApp(ReplaySource(make_events())), (160, 45), "dashboard.svg")
    for size in ((80, 24), (160, 45)):
        await shot(AshemApp(ControlledSource(FakeControl(), mid_run())), size,
                   f"dashboard-{size[0]}x{size[1]}.svg")
    await shot(AshemApp(ControlledSource(FakeControl())), (80, 24), "mining-80x24.svg",
               until(make_events(), boundary="mining-1"))

if __name__ == "__main__":
    asyncio.run(main())
