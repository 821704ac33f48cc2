"""`medium`, the looper's default model: fetched and laid out like the others, loaded from its tiny checkpoint."""

from musicgen_local import weights as W
from musicgen_local.engine.memory import ENCODEC_32KHZ, T5_BASE_ENCODER, published

# float16 state_dict.bin sizes on the hub (facebook/musicgen-medium and -large, Git LFS pointers)
STATE_DICT_BYTES = {"medium": 3_677_668_599, "large": 6_514_108_999}


def test_medium_needs_its_own_repo_and_the_shared_text_encoder():
    files = {str(f) for f in W.required_files("medium")}
    assert {"facebook/musicgen-medium/state_dict.bin", "facebook/musicgen-medium/compression_state_dict.bin"} <= files
    assert "t5-base/model.safetensors" in files
    assert not any("htdemucs" in f.lower() for f in files)  # not a melody model


def test_medium_is_planned_at_its_published_scale():
    medium = published("medium")
    assert (medium.dim, medium.layers, medium.heads, medium.codebooks) == (1536, 48, 24, 4)
    for model_version, size in STATE_DICT_BYTES.items():
        lm_bytes = published(model_version, dtype_bytes=2).weights - T5_BASE_ENCODER - ENCODEC_32KHZ
        assert abs(lm_bytes / size - 1) < 0.001


def test_tiny_medium_loads_through_the_real_loader_and_generates(settings):
    from musicgen_local.engine.models import load_model

    assert W.missing(settings.weights_dir, W.required_files("medium")) == []
    model = load_model(settings, "medium", "cpu")
    assert model.lm.dim == 48  # the tiny medium's own width, not the tiny large's 32: its config was read
    model.set_generation_params(duration=0.2)
    audio = model.generate(["a loop, 120 bpm"])
    assert tuple(audio.shape[:2]) == (1, 1) and audio.shape[-1] >= 0.2 * 32000 - 640
