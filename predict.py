"""Cog predictor: Replicate's meta/musicgen schema on the musicgen-local engine.

Every Input's description, default, choices and minimum come from musicgen_local.schema (the one
definition); tests check that what cog derives from this signature equals Replicate's schema.
`run` is async and concurrent, so a pushed model decodes concurrent predictions in one batch on the
engine's device loop (Cog itself has no batching). COG_MAX_CONCURRENCY overrides the slot count.
"""

import asyncio
import tempfile
from dataclasses import replace

from cog import BaseRunner, Input, Path, concurrent

from musicgen_local.cog_weights import fine_tune
from musicgen_local.engine import Request, load_engine
from musicgen_local.engine.api import Done, Failed, Log, Progress, terminal_error
from musicgen_local.schema import cog_input_kwargs as spec
from musicgen_local.schema import parse_input
from musicgen_local.settings import Settings

MAX_CONCURRENCY = 8  # = MUSICGEN_MAX_BATCH's default: one batch of predictions at a time


class Predictor(BaseRunner):
    def setup(self, weights: str | None = None) -> None:
        # Cog passes COG_WEIGHTS (e.g. a training's tarball URL) or ./weights: a fine-tune in it serves
        # the model_version it was tuned from; our own weights/ cache changes nothing.
        settings, self.tuned = fine_tune(Settings.from_env(), weights)
        self.engine = load_engine(settings)
        self.engine.wait_ready()  # models warmed and graphs captured before Cog says READY

    def healthcheck(self) -> bool:
        """coglet asks this for /health-check: False (UNHEALTHY) once a device failed for good, so that the
        container is replaced; every prediction then fails with a message that says so."""
        return self.engine.health().get("status") != "UNHEALTHY"

    @concurrent(max=MAX_CONCURRENCY)
    async def run(
        self,
        model_version: str = Input(**spec("model_version")),
        prompt: str | None = Input(**spec("prompt")),
        input_audio: Path | None = Input(**spec("input_audio")),
        duration: int = Input(**spec("duration")),
        continuation: bool = Input(**spec("continuation")),
        continuation_start: int = Input(**spec("continuation_start")),
        continuation_end: int | None = Input(**spec("continuation_end")),
        multi_band_diffusion: bool = Input(**spec("multi_band_diffusion")),
        normalization_strategy: str = Input(**spec("normalization_strategy")),
        top_k: int = Input(**spec("top_k")),
        top_p: float = Input(**spec("top_p")),
        temperature: float = Input(**spec("temperature")),
        classifier_free_guidance: int = Input(**spec("classifier_free_guidance")),
        output_format: str = Input(**spec("output_format")),
        seed: int | None = Input(**spec("seed")),
    ) -> Path:
        inputs = dict(locals())
        del inputs["self"]
        inputs["input_audio"] = None if input_audio is None else str(input_audio)
        inputs["top_p"], inputs["temperature"] = float(top_p), float(temperature)
        request = Request.from_input(parse_input(inputs))
        if self.tuned is not None and request.model_version == self.tuned.base:
            request = replace(request, weights=str(self.tuned.root))
        run = self.engine.submit(request)
        try:
            async for event in run:
                if isinstance(event, Log):
                    print(event.line)
                elif isinstance(event, Progress) and _worth_a_line(event):
                    print(f"{event.done: 6d} / {event.total: 6d}")
                elif isinstance(event, Done):
                    path = Path(tempfile.mkdtemp(prefix="musicgen-")) / event.result.filename
                    path.write_bytes(event.result.audio)
                    return path
                elif isinstance(event, Failed):
                    raise terminal_error(event)
        except asyncio.CancelledError:  # Cog cancels the task: stop the engine's work too
            run.cancel()
            raise
        raise terminal_error(event)


def _worth_a_line(event: Progress) -> bool:
    # One line per tenth: enough to follow in Cog's logs without flooding them.
    return event.done == event.total or event.done % max(1, event.total // 10) == 0
