"""A fine-tune's weights on disk: the tar a training writes, and what serving reads back from it.

One format for every door (the trainings API's `output.weights`, `musicgen-local train -o`, Cog's
`TrainingOutput`, `COG_WEIGHTS`, `predict --weights`). An uncompressed tar whose top level holds:

- `musicgen-local.json`: {"format": 1, "kind": "lora" | "full", "base": <model_version>,
  "rank": r, "alpha": a, "targets": [parameter names], "training": {...what made it}}
- LoRA: `adapter.safetensors`, for each target parameter `P` of the LM (its name in
  `lm.named_parameters()`, e.g. `transformer.layers.0.self_attn.in_proj_weight`) the tensors
  `P.lora_A` [r, in] and `P.lora_B` [out, r]; the tuned weight is `P + alpha / r * B @ A`.
- full: audiocraft's own pair, `state_dict.bin` and `compression_state_dict.bin`, so that anything
  that loads a MusicGen checkpoint folder (audiocraft, `MUSICGEN_CHECKPOINTS`) loads it too.

A LoRA tar holds only the adapter: the base weights come from MUSICGEN_WEIGHTS, as published.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError

MANIFEST = "musicgen-local.json"
ADAPTER = "adapter.safetensors"
FULL_FILES = ("state_dict.bin", "compression_state_dict.bin")
FORMAT = 1
KINDS = ("lora", "full")
# The weights an adapter may tune (both the trainer and the fast decoder read this one list). Per transformer
# layer: attention's packed q/k/v and output projections (self and cross), and the
# feed-forward pair; then each codebook's output head (without them a small model's LoRA cannot make
# one token stand out from the other 2047: its final norm bounds what the layers can say). The names
# are the LM's own parameter names (lm.named_parameters()).
TARGETS = (
    "self_attn.in_proj_weight",
    "self_attn.out_proj.weight",
    "cross_attention.in_proj_weight",
    "cross_attention.out_proj.weight",
    "linear1.weight",
    "linear2.weight",
)


@dataclass(frozen=True)
class Tuned:
    """A fine-tune, unpacked in `root`."""

    kind: str  # "lora" or "full"
    base: str  # the model_version it was tuned from
    root: Path  # the folder holding the manifest and the weights
    rank: int = 0
    alpha: float = 0.0
    targets: tuple[str, ...] = ()
    training: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank if self.rank else 0.0

    @property
    def key(self) -> str:
        """Names this fine-tune among others (the folder it is unpacked in)."""
        return str(self.root)

    def adapters(self, device: str = "cpu") -> dict[str, tuple[Any, Any]]:
        """A LoRA's tensors: parameter name -> (A [r, in], B [out, r]), float32."""
        from safetensors.torch import load_file

        if self.kind != "lora":
            raise ValueError(f"a {self.kind} fine-tune has no adapters")
        tensors = load_file(str(self.root / ADAPTER), device=device)
        return {name: (tensors[f"{name}.lora_A"], tensors[f"{name}.lora_B"]) for name in self.targets}


def write(
    dest: Path,
    kind: str,
    base: str,
    files: dict[str, bytes | Path],
    *,
    rank: int = 0,
    alpha: float = 0.0,
    targets: tuple[str, ...] | list[str] = (),
    training: dict[str, Any] | None = None,
) -> Path:
    """Write a fine-tune tar at `dest`: the manifest, then `files` (name -> bytes or a path to copy)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    manifest = {
        "format": FORMAT,
        "kind": kind,
        "base": base,
        "rank": rank,
        "alpha": alpha,
        "targets": list(targets),
        "training": training or {},
    }
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    with tarfile.open(partial, "w") as tar:
        _add_bytes(tar, MANIFEST, json.dumps(manifest, indent=2).encode())
        for name, content in files.items():
            if isinstance(content, bytes):
                _add_bytes(tar, name, content)
            else:
                tar.add(str(content), arcname=name)
    partial.replace(dest)  # a reader never sees half a tar
    return dest


def write_lora(
    dest: Path, base: str, adapters: dict[str, tuple[Any, Any]], *, alpha: float, training: dict[str, Any] | None = None
) -> Path:
    """A LoRA tar from parameter name -> (A [r, in], B [out, r])."""
    from safetensors.torch import save

    tensors = {}
    for name, (a, b) in adapters.items():
        tensors[f"{name}.lora_A"] = a.detach().float().cpu().contiguous()
        tensors[f"{name}.lora_B"] = b.detach().float().cpu().contiguous()
    rank = next(iter(adapters.values()))[0].shape[0] if adapters else 0
    return write(
        dest,
        "lora",
        base,
        {ADAPTER: save(tensors)},
        rank=rank,
        alpha=alpha,
        targets=sorted(adapters),
        training=training,
    )


def _add_bytes(tar: tarfile.TarFile, name: str, content: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(content)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(content))


def read(path: str | Path, unpack_to: Path | None = None) -> Tuned:
    """A fine-tune from its tar (unpacked into `unpack_to`, by default a folder named after the tar's
    digest under the system's temporary folder, reused when it is already there) or its folder."""
    path = Path(path)
    if path.is_dir():
        return _from_folder(path)
    if not path.is_file():
        raise UserError(f"The fine-tune's weights file `{path.name}` does not exist (any more) on this server.")
    if not tarfile.is_tarfile(path):
        raise UserError(f"The fine-tune's weights file `{path.name}` is not a tar (a training's output is one).")
    root = unpack_to or Path(tempfile.gettempdir()) / "musicgen-local-tuned" / _digest(path)
    if not (root / MANIFEST).is_file():
        staging = Path(tempfile.mkdtemp(prefix=".unpacking-", dir=_parent(root)))
        with tarfile.open(path) as tar:
            tar.extractall(staging, filter="data")  # "data": no absolute paths, links or devices
        if not (staging / MANIFEST).is_file():
            raise UserError(f"`{path.name}` is not a musicgen-local fine-tune: it has no {MANIFEST}.")
        try:
            staging.rename(root)
        except OSError:  # another reader unpacked it first
            import shutil

            shutil.rmtree(staging, ignore_errors=True)
    return _from_folder(root)


def _parent(root: Path) -> Path:
    root.parent.mkdir(parents=True, exist_ok=True)
    return root.parent


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()[:32]


def _from_folder(root: Path) -> Tuned:
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise UserError(f"`{root.name}` is not a musicgen-local fine-tune: it has no {MANIFEST}.")
    m = json.loads(manifest_path.read_text())
    if m.get("format") != FORMAT or m.get("kind") not in KINDS:
        raise UserError(f"`{root.name}`: unknown fine-tune format {m.get('format')!r} / kind {m.get('kind')!r}.")
    needed = (ADAPTER,) if m["kind"] == "lora" else FULL_FILES
    absent = [name for name in needed if not (root / name).is_file()]
    if absent:
        raise UserError(f"`{root.name}`: a {m['kind']} fine-tune without {', '.join(absent)}.")
    return Tuned(
        m["kind"],
        m["base"],
        root,
        int(m.get("rank", 0)),
        float(m.get("alpha", 0.0)),
        tuple(m.get("targets", ())),
        m.get("training", {}),
    )
