"""Cog predictor: andreasjansson/musicgen-looper's schema on the musicgen-local engine (a second predictor of the
same image: `musicgen-local cog-serve --looper`, or COG_PREDICT_TYPE_STUB=predict_looper.py:Predictor).

Every Input comes from musicgen_local.looper.schema (the one definition, as published); the output is the
`variation_01`... object of the version its clients pin. The variations decode as one batch on the engine's device
loop, then are cut into loops off it (engine/looping.py).
"""

import asyncio
import tempfile

from cog import BaseModel, BaseRunner, Input, Path, concurrent

from musicgen_local.engine import load_engine
from musicgen_local.engine.api import Done, Failed, Log, LoopRequest, terminal_error
from musicgen_local.looper.schema import FIELDS_BY_NAME, MAX_VARIATIONS, output_key, parse_input
from musicgen_local.schema import cog_input_kwargs
from musicgen_local.settings import Settings

MAX_CONCURRENCY = 2  # each loop request is up to 20 rows of the batch already


def spec(name: str) -> dict:
    return cog_input_kwargs(name, FIELDS_BY_NAME)


Output = type(  # the published `Outputs` object: variation_01 ... variation_20, each a file, none required
    "Output", (BaseModel,), {"__annotations__": {output_key(i): Path | None for i in range(MAX_VARIATIONS)}}
)
for _i in range(MAX_VARIATIONS):
    setattr(Output, output_key(_i), None)


class Predictor(BaseRunner):
    def setup(self) -> None:
        self.engine = load_engine(Settings.from_env())
        self.engine.wait_ready()

    def healthcheck(self) -> bool:
        return self.engine.health().get("status") != "UNHEALTHY"

    @concurrent(max=MAX_CONCURRENCY)
    async def run(
        self,
        prompt: str = Input(**spec("prompt")),
        bpm: float = Input(**spec("bpm")),
        variations: int = Input(**spec("variations")),
        max_duration: int = Input(**spec("max_duration")),
        model_version: str = Input(**spec("model_version")),
        top_k: int = Input(**spec("top_k")),
        top_p: float = Input(**spec("top_p")),
        temperature: float = Input(**spec("temperature")),
        classifier_free_guidance: int = Input(**spec("classifier_free_guidance")),
        output_format: str = Input(**spec("output_format")),
        seed: int = Input(**spec("seed")),
    ) -> Output:
        inputs = dict(locals())
        del inputs["self"]
        inputs["bpm"], inputs["top_p"], inputs["temperature"] = float(bpm), float(top_p), float(temperature)
        run = self.engine.submit(LoopRequest.from_input(parse_input(inputs)))
        try:
            async for event in run:
                if isinstance(event, Log):
                    print(event.line)
                elif isinstance(event, Done):
                    folder = Path(tempfile.mkdtemp(prefix="musicgen-looper-"))
                    files = {}
                    for name, (filename, data) in event.result.files().items():
                        (folder / filename).write_bytes(data)
                        files[name] = folder / filename
                    return Output(**files)
                elif isinstance(event, Failed):
                    raise terminal_error(event)
        except asyncio.CancelledError:
            run.cancel()
            raise
        raise terminal_error(event)
