"""Cog predictor: Replicate's meta/musicgen schema on the musicgen-local engine.

Every Input's description, default, choices and minimum come from musicgen_local.schema (the one
definition); tests check that what cog derives from this signature equals Replicate's schema.
Uses cog >= 0.20's names (BaseRunner/run): the legacy BasePredictor/predict log deprecation warnings.
"""

import tempfile

from cog import BaseRunner, Input, Path

from musicgen_local.cog_weights import settings_for_cog_weights
from musicgen_local.engine import Hooks, Request, load_engine
from musicgen_local.schema import cog_input_kwargs as spec
from musicgen_local.schema import parse_input
from musicgen_local.settings import Settings


class Predictor(BaseRunner):
    def setup(self, weights: str | None = None) -> None:
        # Cog passes COG_WEIGHTS (e.g. a training's tarball URL) or ./weights: a fine-tuned LM in it
        # serves the model_version of its architecture; our own weights/ cache changes nothing.
        self.engine = load_engine(settings_for_cog_weights(Settings.from_env(), weights))

    def run(
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
        hooks = Hooks(on_log=print, on_progress=_print_progress)
        result = self.engine.generate(request, Path(tempfile.mkdtemp(prefix="musicgen-")), hooks)
        return Path(result.path)


def _print_progress(done: int, total: int) -> None:
    # One line per tenth: enough to follow in Cog's logs without flooding them.
    if done == total or done % max(1, total // 10) == 0:
        print(f"{done: 6d} / {total: 6d}")
