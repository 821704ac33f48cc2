"""Tiny checkpoints in MusicGen's real file formats and the real weights/ layout.

Tests and smoke runs load these through exactly the code that loads the published weights:
audiocraft's loaders read `facebook/musicgen-<v>/{state_dict,compression_state_dict}.bin` from the
hub cache, transformers reads `t5-base` and `facebook/encodec_32khz`, demucs reads
`adefossez/HTDemucs`. Only the sizes are tiny; file formats, keys and config structure are real.

Two compression formats exist in the wild and both are written: `large`, `melody-large` and
`medium` (the looper's model) carry a full EnCodec state (`xp.cfg` + `best_state`), the stereo models carry the
`{'pretrained': 'facebook/encodec_32khz'}` pointer that makes audiocraft load transformers' EnCodec.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from .. import weights as W

REVISION = "0" * 40  # the snapshot every tiny file is written under
CARD = 2048  # real codebook size; transformers' EnCodec derives its codebook count assuming it
FRAME_HOP = (8, 5, 4, 4)  # 640 samples -> 50 Hz at 32 kHz, as the real codec: 1 s = 50 frames exactly
SENTENCES = [
    "lofi hip hop beat with warm piano chords",
    "epic orchestral soundtrack with brass and drums",
    "upbeat electronic dance music with heavy bass",
    "calm acoustic guitar melody in the morning",
    "jazz trio with walking bass and brushed snare",
    "80s synthwave with arpeggios and gated reverb",
    "ambient pads slowly evolving over a drone",
    "rock anthem with distorted guitars and a big chorus",
]


def hub_path(weights_dir: Path, repo: str, filename: str) -> Path:
    """Where the hub cache keeps `repo/filename` (writes refs/main so lookups resolve it)."""
    repo_dir = W.hub_cache(weights_dir) / f"models--{repo.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(REVISION)
    path = repo_dir / "snapshots" / REVISION / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _export(path: Path, cfg, state) -> None:
    import torch
    from omegaconf import OmegaConf

    torch.save({"xp.cfg": OmegaConf.to_yaml(cfg), "best_state": state, "version": "1.3.0", "exported": True}, path)


# ---------------------------------------------------------------------------------------------- T5


def write_t5(weights_dir: Path) -> None:
    """A 1-layer T5 with t5-base's width (768): the conditioner asserts the name and its dim."""
    import sentencepiece as spm
    import torch
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    torch.manual_seed(0)
    target = hub_path(weights_dir, W.T5, "config.json").parent
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("\n".join(SENTENCES * 4))
        spm.SentencePieceTrainer.train(
            input=str(corpus),
            model_prefix=f"{tmp}/spiece",
            vocab_size=64,
            model_type="unigram",
            pad_id=0,
            eos_id=1,
            unk_id=2,
            bos_id=-1,
            minloglevel=2,
        )
        tokenizer = T5Tokenizer.from_pretrained(tmp, extra_ids=0)
        tokenizer.save_pretrained(target)
        # t5-base on the hub ships the sentencepiece model beside tokenizer.json; keep that file set.
        shutil.copy(f"{tmp}/spiece.model", target / "spiece.model")
    config = T5Config(vocab_size=64, d_model=768, d_kv=16, d_ff=64, num_layers=1, num_heads=2, decoder_start_token_id=0)
    T5EncoderModel(config).save_pretrained(target)


# ---------------------------------------------------------------------------------------------- codecs


def _encodec_cfg():
    from omegaconf import OmegaConf

    return OmegaConf.create(
        {
            "compression_model": "encodec",
            "device": "cpu",
            "dtype": "float32",
            "encodec": {
                "autoencoder": "seanet",
                "quantizer": "rvq",
                "sample_rate": 32000,
                "channels": 1,
                "causal": False,
                "renormalize": False,
            },
            "seanet": {
                "dimension": 16,
                "channels": 1,
                "causal": False,
                "n_filters": 2,
                "n_residual_layers": 1,
                "ratios": list(FRAME_HOP),
                "lstm": 0,
                "encoder": {},
                "decoder": {},
            },
            "rvq": {"n_q": 4, "bins": CARD, "q_dropout": False, "kmeans_init": False},
        }
    )


def write_audiocraft_encodec(path: Path) -> None:
    import torch
    from audiocraft.models import builders

    torch.manual_seed(1)
    cfg = _encodec_cfg()
    _export(path, cfg, builders.get_compression_model(cfg).state_dict())


def write_hf_encodec(weights_dir: Path) -> None:
    """facebook/encodec_32khz as transformers stores it (config.json + model.safetensors)."""
    import torch
    from transformers import EncodecConfig, EncodecModel

    torch.manual_seed(2)
    config = EncodecConfig(
        target_bandwidths=[2.2],
        sampling_rate=32000,
        audio_channels=1,
        normalize=False,
        chunk_length_s=None,
        overlap=None,
        hidden_size=16,
        num_filters=2,
        num_residual_layers=1,
        upsampling_ratios=list(FRAME_HOP),
        codebook_size=CARD,
        codebook_dim=16,
        num_lstm_layers=1,
        use_causal_conv=False,
    )
    model = EncodecModel(config)
    # transformers initialises codebooks to zeros (a trained one has learnt them): every token would
    # decode to the same sound, and no test could tell one stereo output from another.
    for layer in model.quantizer.layers:
        codebook = layer.codebook
        codebook.embed.normal_()
        codebook.embed_avg.copy_(codebook.embed)
        codebook.cluster_size.fill_(1.0)
    # Random biases add up to a DC offset 30x the signal; loudness normalisation (which ignores DC)
    # then clips everything to full scale, and again every output is the same.
    for name, param in model.decoder.named_parameters():
        if name.endswith("bias"):
            param.data.zero_()
    model.save_pretrained(hub_path(weights_dir, W.ENCODEC, "config.json").parent)


def write_encodec_pointer(path: Path) -> None:
    import torch

    torch.save({"pretrained": W.ENCODEC, "exported": True, "version": "1.3.0"}, path)


# ---------------------------------------------------------------------------------------------- LMs


def lm_cfg(stereo: bool, melody: bool, segment_duration: int = 30, dim: int = 32, num_heads: int = 2):
    """A LM config with the structure of the released MusicGen configs, at tiny sizes."""
    from omegaconf import OmegaConf

    n_q = 8 if stereo else 4
    delays = [0, 0, 1, 1, 2, 2, 3, 3] if stereo else [0, 1, 2, 3]
    t5 = {"model": "t5", "t5": {"name": W.T5, "finetune": False, "word_dropout": 0.3, "normalize_text": False}}
    conditioners = {"description": t5}
    if melody:
        conditioners["self_wav"] = {
            "model": "chroma_stem",
            "chroma_stem": {
                "sample_rate": 32000,
                "n_chroma": 12,
                "radix2_exp": 14,
                "argmax": True,
                "match_len_on_eval": True,
                "eval_wavs": None,
                "n_eval_wavs": 100,
                "cache_path": None,
            },
        }
    cfg = {
        "lm_model": "transformer_lm",
        "device": "cpu",
        "dtype": "float32",
        "codebooks_pattern": {"modeling": "delay", "delay": {"delays": delays, "flatten_first": 0, "empty_initial": 0}},
        "transformer_lm": {
            "dim": dim,
            "num_heads": num_heads,
            "num_layers": 2,
            "hidden_scale": 2,
            "n_q": n_q,
            "card": CARD,
            "causal": True,
            "custom": False,
            "memory_efficient": True,
            "norm_first": True,
            "bias_proj": False,
            "bias_ff": False,
            "bias_attn": False,
            "positional_embedding": "sin",
            "past_context": None,
        },
        "classifier_free_guidance": {"training_dropout": 0.2, "inference_coef": 3.0},
        "attribute_dropout": {
            "args": {"active_on_eval": False},
            "text": {},
            "wav": {"self_wav": 0.5} if melody else {},
        },
        "fuser": {
            "cross_attention_pos_emb": False,
            "cross_attention_pos_emb_scale": 1,
            "sum": [],
            "prepend": ["self_wav", "description"] if melody else [],
            "cross": [] if melody else ["description"],
            "input_interpolate": [],
        },
        "conditioners": conditioners,
        "dataset": {"segment_duration": segment_duration},
    }
    if stereo:
        cfg["interleave_stereo_codebooks"] = {"use": True, "per_timestep": False}
    return OmegaConf.create(cfg)


TINY_SCALE = {"medium": {"dim": 48, "num_heads": 3}}


def write_lm(weights_dir: Path, model_version: str, repo: str | None = None, seed: int = 3) -> None:
    """One MusicGen repo: state_dict.bin (LM) and compression_state_dict.bin (codec)."""
    import torch
    from audiocraft.models import builders

    repo = repo or W.lm_repo(model_version)
    stereo, melody = model_version.startswith("stereo"), "melody" in model_version
    torch.manual_seed(seed)
    # medium is narrower than large in the real models (1536 vs 2048 wide, 64 per head in both); the tiny
    # medium is wider than the tiny large instead, so a loader that read the wrong one would fail on shapes.
    cfg = lm_cfg(stereo, melody, **TINY_SCALE.get(model_version, {}))
    lm = builders.get_lm_model(cfg)
    _export(hub_path(weights_dir, repo, "state_dict.bin"), cfg, lm.state_dict())
    compression = hub_path(weights_dir, repo, "compression_state_dict.bin")
    if stereo:
        write_encodec_pointer(compression)
    else:
        write_audiocraft_encodec(compression)


# ---------------------------------------------------------------------------------------------- demucs


def write_htdemucs(weights_dir: Path) -> None:
    """adefossez/HTDemucs as demucs 4.1 reads it: a bag yaml plus one safetensors whose metadata
    names the class and its init arguments."""
    import torch
    from demucs.htdemucs import HTDemucs
    from safetensors.torch import save_file

    torch.manual_seed(4)
    kwargs = {
        "sources": ["drums", "bass", "other", "vocals"],
        "audio_channels": 2,
        "samplerate": 44100,
        "channels": 8,
        "depth": 4,
        "t_layers": 1,
        "t_heads": 2,
    }
    model = HTDemucs(**kwargs)
    kwargs_json = dict(kwargs, segment={"_type": "fraction", "numerator": 39, "denominator": 5})
    meta = {"klass": "demucs.htdemucs.HTDemucs", "args": "[]", "kwargs": json.dumps(kwargs_json)}
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(hub_path(weights_dir, W.HTDEMUCS, "955717e8.safetensors")), metadata=meta)
    hub_path(weights_dir, W.HTDEMUCS, "htdemucs.yaml").write_text("models: ['955717e8']\n")


# ---------------------------------------------------------------------------------------------- all

PARTS: dict[str, Callable[[Path], None]] = {
    "t5": write_t5,
    "encodec": write_hf_encodec,
    "htdemucs": write_htdemucs,
    **{
        v: (lambda d, v=v: write_lm(d, v))
        for v in ("large", "stereo-large", "melody-large", "stereo-melody-large", "medium")
    },
}


def write_tiny_weights(weights_dir: Path, parts: list[str] | None = None) -> Path:
    """Write every tiny checkpoint (or the named parts) under weights_dir; returns weights_dir."""
    weights_dir = Path(weights_dir).resolve()
    W.configure_environment(weights_dir)
    for name in parts or list(PARTS):
        PARTS[name](weights_dir)
    _readable_as_umask_allows(weights_dir)
    return weights_dir


def _readable_as_umask_allows(weights_dir: Path) -> None:
    """safetensors writes its files 0600, where the hub's downloads are readable as the umask allows: without
    this, a container whose user is not the writer (the image's, with the dir mounted as /weights) cannot read them."""
    umask = os.umask(0)
    os.umask(umask)
    for path in weights_dir.rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.chmod(path.stat().st_mode | (0o444 & ~umask))


# ---------------------------------------------------------------------------------------------- MBD

MBD_BANDS = 4  # the released file holds one diffusion UNet per frequency band
MBD_CODEC_DIM = 16  # = the tiny codec's seanet dimension: the UNet conditions on decode_latent's channels
# Per band, as audiocraft's 4_bands_base_32khz grid trains them: only the two upper bands rescale
# their samples with a multi-band processor.
MBD_PROCESSOR = [(False, 0.4), (False, 0.4), (True, 0.4), (True, 0.75)]


def _mbd_band_cfg(band: int):
    """One band's solver config, structured like audiocraft's diffusion/default.yaml + score/basic."""
    from omegaconf import OmegaConf

    use_processor, power_std = MBD_PROCESSOR[band]
    return OmegaConf.create(
        {
            "solver": "diffusion",
            "sample_rate": 32000,
            "channels": 1,
            "n_q": 4,
            "compression_model_checkpoint": f"//pretrained/{W.MBD_CODEC}",
            "diffusion_unet": {
                "hidden": 8,
                "depth": 2,
                "res_blocks": 1,
                "norm_groups": 4,
                "kernel": 8,
                "stride": 4,
                "growth": 2,
                "max_channels": 10_000,
                "dropout": 0.0,
                "emb_all_layers": True,
                "bilstm": False,
                "codec_dim": MBD_CODEC_DIM,
                "transformer": False,
                "cross_attention": False,
            },
            "processor": {
                "name": "multi_band_processor",
                "use": use_processor,
                "n_bands": 8,
                "num_samples": 10_000,
                "power_std": power_std,
            },
            "filter": {"use": True, "n_bands": MBD_BANDS, "idx_band": band, "cutoffs": None},
            "schedule": {
                "repartition": "power",
                "variable_step_batch": True,
                "beta_t0": 1.0e-5,
                "beta_t1": 2.9e-2,
                "beta_exp": 7.5,
                "num_steps": 1000,
                "variance": "beta",
                "clip": 5.0,
                "rescale": 1.0,
                "n_bands": None,
                "noise_scale": 1.0,
            },
        }
    )


def _fitted_processor_state(processor) -> dict:
    """A trained processor has seen samples; an empty one divides by zero counts."""
    import torch

    state = processor.state_dict()
    if "counts" in state:
        n = state["sum_x"].numel()
        state.update(
            counts=torch.ones(1), sum_x=torch.zeros(n), sum_x2=torch.linspace(0.5, 0.01, n), sum_target_x2=torch.ones(n)
        )
    return state


def write_mbd(weights_dir: Path) -> None:
    """facebook/multiband-diffusion/mbd_musicgen_32khz.th ({'sample_rate', 'n_bands', band: {'cfg'
    (an OmegaConf DictConfig, pickled), 'model_state', 'processor_state'}}) and the codec that
    MultiBandDiffusion.get_mbd_musicgen() pairs it with, facebook/musicgen-small's."""
    import torch
    from audiocraft.models import builders

    torch.manual_seed(5)
    package: dict = {"sample_rate": 32000, "n_bands": MBD_BANDS}
    for band in range(MBD_BANDS):
        cfg = _mbd_band_cfg(band)
        processor = builders.get_processor(cfg.processor, sample_rate=cfg.sample_rate)
        package[band] = {
            "cfg": cfg,
            "model_state": builders.get_diffusion_model(cfg).state_dict(),
            "processor_state": _fitted_processor_state(processor),
        }
    torch.save(package, hub_path(weights_dir, W.MBD, "mbd_musicgen_32khz.th"))
    # The same tiny codec as the mono LMs': every MusicGen model shares EnCodec 32 kHz, so the LMs'
    # tokens are valid input to MBD's codec, as with the real checkpoints.
    write_audiocraft_encodec(hub_path(weights_dir, W.MBD_CODEC, "compression_state_dict.bin"))


PARTS["mbd"] = write_mbd
