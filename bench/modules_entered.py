"""Which of the package's modules a batched prediction enters: issue 10's measure of how deep the path is.

Starts the real server on the tiny checkpoints (CPU), warms it with one prediction, then records every
`musicgen_local` module whose code runs, on any thread, from the first of two concurrent
`POST /v1/predictions` (which decode in one batch) until both have succeeded.

    python -m bench.modules_entered [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import musicgen_local

PACKAGE = Path(musicgen_local.__file__).parent


def module_of(filename: str) -> str | None:
    path = Path(filename)
    if not path.is_relative_to(PACKAGE) or path.suffix != ".py":
        return None
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(("musicgen_local", *parts))


def all_modules() -> list[str]:
    return sorted(m for p in PACKAGE.rglob("*.py") if (m := module_of(str(p))) and ".testing" not in m)


class Recorder:
    def __init__(self) -> None:
        self.on = False
        self.entered: set[str] = set()

    def __call__(self, frame, event, arg):
        if self.on and event == "call":
            module = module_of(frame.f_code.co_filename)
            if module:
                self.entered.add(module)


def measure() -> list[str]:
    import httpx

    from musicgen_local.engine import load_engine
    from musicgen_local.server import create_app
    from musicgen_local.settings import Settings
    from musicgen_local.testing.live import LiveServer
    from musicgen_local.testing.tiny import write_tiny_weights
    from musicgen_local.weights import configure_environment

    recorder = Recorder()
    # Before any thread of the engine or the server starts, so that each of them runs under it.
    sys.setprofile(recorder)
    threading.setprofile(recorder)
    root = Path(tempfile.mkdtemp(prefix="modules-entered-"))
    write_tiny_weights(root / "weights")
    configure_environment(root / "weights")
    settings = Settings(weights_dir=root / "weights", devices="cpu", data_dir=root / "data", max_batch=4)
    engine = load_engine(settings)

    def predict(client: httpx.Client, prompt: str, duration: int) -> str:
        body = {"input": {"model_version": "stereo-melody-large", "prompt": prompt, "duration": duration, "seed": 1}}
        pred = client.post("/v1/predictions", json=body).json()
        while pred["status"] not in ("succeeded", "failed", "canceled"):
            time.sleep(0.02)
            pred = client.get(f"/v1/predictions/{pred['id']}").json()
        return "\n".join([pred["status"], pred.get("logs") or ""])

    with LiveServer(create_app(settings, engine)) as server, httpx.Client(base_url=server.url, timeout=120) as client:
        assert predict(client, "warm up", 1).startswith("succeeded")
        recorder.on = True
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda a: predict(client, *a), [("lofi beat", 6), ("jazz trio", 5)]))
        recorder.on = False
    sys.setprofile(None)
    threading.setprofile(None)
    assert all(r.startswith("succeeded") for r in results), results
    assert any("batch" in r for r in results), f"the two predictions did not share a batch: {results}"
    return sorted(recorder.entered)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    entered, total = measure(), all_modules()
    if args.json:
        print(json.dumps({"entered": entered, "modules": len(total)}))
        return
    engine_side = [m for m in entered if m.startswith("musicgen_local.engine")]
    print(
        f"a batched pair of predictions entered {len(entered)} of the package's {len(total)} modules "
        f"({len(engine_side)} under engine/):"
    )
    for module in entered:
        print("  " + module)


if __name__ == "__main__":
    main()
