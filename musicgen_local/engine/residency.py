"""Model residency on one device: which models it holds, which are being read or wait for room, and which may go.

The device loop asks and applies what this answers; this never reaches back into the loop:
- `want(key, waiter)`: the resident model (now the most recently used), or None: the waiter waits, and a later
  outcome (`Placed` or `Refused`) hands it back. The checkpoint is read once, by the loader pool, whose answer
  comes back through the loop's inbox to `read_done`.
- A model read while the models holding the room are still needed waits; `retry()` places it once that changed.
- Who needs a model is counted with `hold` and `release` (a job from its arrival on this device to its end; a
  deployment's pin for as long as it exists): a held model is never evicted. Otherwise models go least recently
  used first, when another needs their memory (the plan, `memory.py`) or MUSICGEN_MAX_MODELS caps the count.
- A deployment's `Pin` holds its model from the moment it arrives, and replaces the deployment's previous pin once
  its model is resident (so an update never leaves the deployment cold). A model that does not fit waits for what
  jobs hold, never for what pins hold: those are let go only when a deployment is, so it is refused at once with
  what it needs and what the pins keep.

Placing a model builds it on the device from what was read, sizes its batch by the plan, captures its step
graphs and checks its fast decoder against audiocraft's (`selfcheck.py`) before anyone decodes with it.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import registry
from ..errors import Cancelled, EngineError, UserError
from ..settings import Settings
from . import faults, memory, selfcheck
from .fast import SlotBatch, unsupported_reason

log = logging.getLogger(__name__)
MELODY_PREFIX = 300  # cache positions kept for a melody model's prepended chroma (235) and prompt tokens


@dataclass(frozen=True)
class ModelKey:
    """A model a device can hold: a published model_version, or a full fine-tune of one (weights of its own).
    A LoRA fine-tune is not a model: it decodes in its base model's batch."""

    model_version: str
    full_tune: str | None = None  # the full fine-tune's unpacked folder

    def __str__(self) -> str:
        return self.model_version if self.full_tune is None else f"{self.model_version}@{self.full_tune}"


@dataclass
class Resident:
    model: Any  # audiocraft MusicGen, or the EnCodec of encode-decode
    batch: SlotBatch | None  # the fast decoder's slots for this LM (None: audiocraft's loop decodes it)


@dataclass
class ModelRead:
    """The loader pool's answer: a model's checkpoint in host memory, or why it could not be read."""

    key: ModelKey
    host: Any = None
    error: Exception | None = None


@dataclass
class Placed:
    """`key` is resident now: its waiters can start. `notes`: what placing it said (load time, graphs)."""

    key: ModelKey
    resident: Resident
    waiters: list
    notes: list[str] = field(default_factory=list)


@dataclass
class Refused:
    """`key` will not be placed for these waiters: they end with `error`."""

    key: ModelKey
    error: Exception
    waiters: list


Outcome = Placed | Refused


@dataclass(eq=False)
class Pin:
    """A deployment's ask that `key` stay resident on this device for as long as the deployment does. `done` is
    resolved once it is resident (a note saying so) or cannot be (the error, e.g. what it needs that is not free)."""

    name: str  # the deployment's owner/name
    key: ModelKey
    done: Future = field(default_factory=Future)
    lora: Any = None  # a LoRA fine-tune's adapter (fast.Lora), kept in one of its base model's adapter slots


@dataclass(frozen=True)
class Unpin:
    """The deployment `name` is gone or keeps nothing warm here any more."""

    name: str


class Residency:
    def __init__(
        self,
        device: str,
        settings: Settings,
        read: Callable[[ModelKey], Any],
        build: Callable[[Any, str], Any],
        loader_pool: Executor,
        deliver: Callable[[ModelRead], None],
        contain: faults.Containment,
        still_wanted: Callable[[Any], bool] = lambda waiter: True,
    ) -> None:
        """read(key) -> host copy (in the loader pool); build(host copy, device) -> model (on the loop);
        deliver(ModelRead): hands the loader's answer to the loop; still_wanted(waiter): False once it was canceled."""
        self.device, self.settings = device, settings
        self._read_checkpoint, self._build, self._loader_pool, self._deliver = read, build, loader_pool, deliver
        self.faults, self._still_wanted = contain, still_wanted
        self.models: OrderedDict[ModelKey, Resident] = OrderedDict()
        self.memory = memory.new_plan(device, settings.device_memory)
        self.dtype_bytes = 4 if torch.device(device).type == "cpu" else 2  # the LM's compute dtype: float16 off CPU
        self.model_loads = 0
        self.evictions = 0
        self.fast_decoder: dict[ModelKey, str] = {}  # "enabled (...)" or "disabled (why)"
        self._holds: Counter[ModelKey] = Counter()
        self._pinned: Counter[ModelKey] = Counter()  # the holds that are pins (they last until let go)
        self.pins: dict[str, ModelKey] = {}  # deployment -> the model its placed pin keeps here
        self._asked: dict[str, Pin] = {}  # deployment -> the latest pin asked for (placed or not yet)
        self._waiters: dict[ModelKey, list] = {}  # waiting for their model to be read, or placed
        self._unplaced: dict[ModelKey, Any] = {}  # read, waiting for room on the device
        self._held_before: frozenset[ModelKey] = frozenset()

    # ---------------------------------------------------------------------------------- who needs what

    def hold(self, key: ModelKey, pin: bool = False) -> None:
        self._holds[key] += 1
        if pin:
            self._pinned[key] += 1

    def release(self, key: ModelKey, pin: bool = False) -> None:
        self._holds[key] -= 1
        if self._holds[key] <= 0:
            del self._holds[key]
        if pin:
            self._pinned[key] -= 1
            if self._pinned[key] <= 0:
                del self._pinned[key]

    # ---------------------------------------------------------------------------------- deployments' pins

    def keep(self, item: Pin | Unpin) -> None:
        """A deployment's pin (answered now if its model is resident, else once it is placed or refused) or its
        end."""
        if isinstance(item, Unpin):
            self.unpin(item.name)
        elif self.pin(item) is not None:
            self.pin_placed(item)

    def pin(self, pin: Pin) -> Resident | None:
        """A pin arrived: its model is held from now on. The resident model, or None: `pin` waits like a job, and
        a later outcome hands it back (the loop then calls `pin_placed` or `pin_refused`)."""
        self._asked[pin.name] = pin
        self.hold(pin.key, pin=True)
        return self.want(pin.key, pin)

    def pin_placed(self, pin: Pin) -> None:
        """Its model is resident: it replaces the deployment's previous pin (unless a later pin, or the
        deployment's end, came meanwhile: then it lets go at once)."""
        note = f"{pin.key} is resident on {self.device}, kept warm for the deployment {pin.name}."
        if self._asked.get(pin.name) is not pin:
            self.release(pin.key, pin=True)
            note = f"{pin.key} was loaded on {self.device}, but the deployment {pin.name} changed meanwhile."
        else:
            try:
                kept = self._keep_adapter(pin)
            except UserError as exc:
                self.pin_refused(pin, exc)
                return
            if kept:
                note = f"{note[:-1]}, with its adapter {pin.lora.key} in one of the model's adapter slots."
            previous = self.pins.get(pin.name)
            self.pins[pin.name] = pin.key
            if previous is not None:
                self.release(previous, pin=True)
        log.info("%s", note)
        if pin.done.set_running_or_notify_cancel():  # False: whoever asked gave up on the answer
            pin.done.set_result(note)

    def _keep_adapter(self, pin: Pin) -> bool:
        """The pin's adapter kept in its model's slots instead of what the deployment kept before (whether there
        is one to keep: none for a base model, nor where audiocraft's loop decodes the model)."""
        batch = self.models[pin.key].batch if pin.lora is not None else None
        if batch is not None:
            batch.pin_adapter(pin.name, pin.lora)
        before = self._pinned_batch(pin.name)
        if before is not None and before is not batch:
            before.unpin_adapter(pin.name)
        return batch is not None

    def _pinned_batch(self, name: str) -> SlotBatch | None:
        """The batch of the model the deployment's placed pin keeps (pinned models stay resident)."""
        resident = self.models.get(self.pins.get(name))
        return resident.batch if resident is not None else None

    def pin_refused(self, pin: Pin, error: Exception) -> None:
        """Its model (or its adapter) will not be kept here: the deployment keeps the pin it had, if any."""
        self.release(pin.key, pin=True)
        if self._asked.get(pin.name) is pin:
            del self._asked[pin.name]
        if pin.done.set_running_or_notify_cancel():
            pin.done.set_exception(error)

    def answer_pins(self, outcome: Outcome) -> None:
        """Take the pins out of an outcome's waiters and answer them (the loop starts or ends the jobs left)."""
        for pin in [w for w in outcome.waiters if isinstance(w, Pin)]:
            outcome.waiters.remove(pin)
            if isinstance(outcome, Placed):
                self.pin_placed(pin)
            else:
                self.pin_refused(pin, outcome.error)

    def unpin(self, name: str) -> None:
        """The deployment keeps nothing warm here any more; a pin of it still loading lets go once placed."""
        self._asked.pop(name, None)
        batch = self._pinned_batch(name)
        if batch is not None:
            batch.unpin_adapter(name)
        key = self.pins.pop(name, None)
        if key is not None:
            self.release(key, pin=True)

    def _idle(self, but: ModelKey | None = None) -> list[ModelKey]:
        """Resident models nobody holds, least recently used first."""
        return [k for k in self.models if k not in self._holds and k != but]

    # ---------------------------------------------------------------------------------- asking for a model

    def want(self, key: ModelKey, waiter) -> Resident | None:
        if key in self.models:
            self.models.move_to_end(key)
            return self.models[key]
        waiters = self._waiters.setdefault(key, [])
        waiters.append(waiter)
        if len(waiters) == 1 and key not in self._unplaced:
            self._loader_pool.submit(self._read_in_pool, key)
        return None

    def _read_in_pool(self, key: ModelKey) -> None:
        try:
            self._deliver(ModelRead(key, host=self._read_checkpoint(key)))
        except Exception as exc:  # noqa: BLE001 - reported to the waiters
            self._deliver(ModelRead(key, error=exc))

    def read_done(self, read: ModelRead) -> list[Outcome]:
        if read.error is not None:
            return [Refused(read.key, read.error, self._waiters.pop(read.key, []))]
        self._unplaced[read.key] = read.host
        return self._place(read.key)

    def placeable(self) -> bool:
        """A read model might fit now that could not before: the models held changed since the last try."""
        return bool(self._unplaced) and frozenset(self._holds) != self._held_before

    def retry(self) -> list[Outcome]:
        """Models read but not placed wait for held ones to be let go: try them again when that changed."""
        outcomes: list[Outcome] = []
        if self.placeable():
            for key in list(self._unplaced):
                outcomes += self._place(key)
        self._held_before = frozenset(self._holds)
        return outcomes

    def waiters(self, lost: str) -> list:
        """Every job waiting for a model (for a device that is lost: `lost` says why); they are forgotten, and
        deployments' pins waiting are refused with that."""
        out = [w for waiters in self._waiters.values() for w in waiters]
        self._waiters.clear()
        self._unplaced.clear()
        for pin in [w for w in out if isinstance(w, Pin)]:
            out.remove(pin)
            self.pin_refused(pin, EngineError(lost))
        return out

    def _place(self, key: ModelKey) -> list[Outcome]:
        """Build a read model if the plan has room for it (evicting idle models); else it waits for held ones to
        be let go, or, when nothing else holds the device, its waiters are refused with what it needs."""
        waiters = self._waiters.get(key, [])
        gone = [w for w in waiters if not self._still_wanted(w)]
        outcomes: list[Outcome] = [Refused(key, Cancelled(), gone)] if gone else []
        self._waiters[key] = waiters = [w for w in waiters if w not in gone]
        if not waiters:
            self._unplaced.pop(key, None)
            self._waiters.pop(key, None)
            return outcomes
        notes: list[str] = []
        try:
            placed = self._activate(key, self._unplaced[key], notes.append)
        except faults.DeviceLost:
            raise
        except Exception as exc:  # noqa: BLE001 - the model could not be built: its waiters fail, the device goes on
            placed = self.faults.contain(exc, f"loading {key}")
        if placed is False:
            return outcomes
        self._unplaced.pop(key, None)
        waiters = self._waiters.pop(key, [])
        if isinstance(placed, Exception):
            return [*outcomes, Refused(key, placed, waiters)]
        return [*outcomes, Placed(key, self.models[key], waiters, notes)]

    def warm_up(self, keys: list[ModelKey]) -> None:
        """Place these models before the device says ready (nothing else runs yet, so they are read here)."""
        for key in keys:
            try:
                placed = self._activate(key, self._read_checkpoint(key), log.info)
            except faults.DeviceLost:
                raise
            except Exception as exc:
                raise self.faults.contain(exc, f"warming up {key}") from exc
            if placed is not True:
                log.error("warm-up: %s", placed if isinstance(placed, Exception) else f"{key} does not fit")

    # ---------------------------------------------------------------------------------- placing

    def _activate(self, key: ModelKey, host, say: Callable[[str], None]) -> bool | Exception:
        """Build, size, warm and check one model. False: not now (held models hold the room it needs)."""
        preset = registry.PRESETS[key.model_version]
        estimate = memory.estimate_of(host, self.dtype_bytes, MELODY_PREFIX if preset.melody else 0)
        if estimate is not None and not self._room_for(key, estimate.total(1 if preset.lm else 0)):
            return self._cannot_place(key, estimate)
        start, before = time.monotonic(), memory.allocated(self.device)
        model = self._build(host, self.device)
        self.model_loads += 1
        fp = self._footprint(model, preset.lm, memory.allocated(self.device) - before)
        slots = self._slots_for(key, fp) if preset.lm else 0
        if preset.lm and slots == 0:
            del model
            faults.free_cached(self.device)
            return self._cannot_place(key, fp)
        say(f"Model {key} loaded in {time.monotonic() - start:.1f}s.")
        if preset.lm and slots < self.settings.max_batch and self.settings.decoder == "fast":
            say(
                f"{key} decodes at most {slots} requests at once on {self.device}: that is what fits in "
                f"its memory plan (MUSICGEN_MAX_BATCH={self.settings.max_batch})."
            )
        batch = self._new_batch(key, model, slots) if preset.lm else None
        if batch is not None:
            with autocast(self.device):
                graphs = batch.warm_up()  # every (slots, cache length) bucket, before any slot is live
            if graphs:
                say(f"Captured {graphs} decode-step graphs for {key}.")
            batch = self._check(key, model, batch)
        self.models[key] = Resident(model, batch)
        self.memory.models[key] = memory.Holding(fp, slots)
        self._evict_beyond_count()
        return True

    def _footprint(self, model, lm: bool, allocated: int) -> memory.Footprint:
        """What the built model holds: measured on CUDA, counted elsewhere."""
        if self.device.startswith("cuda"):
            weights = allocated
        elif lm:
            weights = memory.module_bytes(model.lm) + memory.module_bytes(model.compression_model)
        else:
            weights = memory.module_bytes(model)
        if lm:
            loras = self.settings.max_loras if self.settings.decoder == "fast" else 0
            return memory.footprint_of(
                model, weights, self.dtype_bytes, _prefix(model), loras=loras, lora_rank=self.settings.max_lora_rank
            )
        return memory.Footprint(weights, 0, 0, 1, 0, 0, 0, self.dtype_bytes, streams=2, cross=False)

    def _check(self, key: ModelKey, model, batch: SlotBatch) -> SlotBatch | None:
        """The fast decoder against audiocraft's on this device and dtype; None (audiocraft's loop serves the
        model) when they disagree."""
        start = time.monotonic()
        with autocast(self.device):
            verdict = selfcheck.compare(model, batch)
        took = time.monotonic() - start
        if verdict.ok:
            self.fast_decoder[key] = f"enabled ({verdict.summary}; checked in {took:.2f} s)"
            log.info("%s on %s: fast decoder agrees with audiocraft's: %s", key, self.device, verdict.summary)
            return batch
        self.fast_decoder[key] = f"disabled ({verdict.summary})"
        log.error(
            "!!! %s on %s: the fast decoder DISAGREES with audiocraft's reference (%s). This model is served "
            "by audiocraft's own loop instead (one request at a time). Please report it with this line.",
            key,
            self.device,
            verdict.summary,
        )
        return None

    def _new_batch(self, key: ModelKey, model, slots: int) -> SlotBatch | None:
        reason = unsupported_reason(model.lm)
        if self.settings.decoder == "reference" or reason:
            if reason:
                log.info("%s decodes with audiocraft's loop: %s", key, reason)
                self.fast_decoder[key] = f"disabled ({reason})"
            return None
        return SlotBatch(
            model.lm,
            slots,
            int(model.max_duration * model.frame_rate),
            _prefix(model),
            self.settings.step_mode,
            self.settings.cpu_products,
            loras=self.settings.max_loras,
            lora_rank=self.settings.max_lora_rank,
        )

    # ---------------------------------------------------------------------------------- room

    def _cannot_place(self, key: ModelKey, fp: memory.Footprint) -> bool | Exception:
        """Wait (False) while a job holds a resident model: its room comes back when the job ends. Models still
        loading hold no room, so they do not count; nor do pins, which last until their deployment changes."""
        held_by_jobs = {k for k, n in self._holds.items() if n > self._pinned[k]}
        if held_by_jobs & set(self.models) - {key}:
            return False
        kept = {
            f"{k} for {', '.join(sorted(n for n, p in self.pins.items() if p == k))}": self.memory.models[k].bytes
            for k in self._pinned
            if k in self.models and k != key
        }
        return EngineError(self.memory.too_big(str(key), fp, kept))

    def _room_for(self, key: ModelKey, needed: int) -> bool:
        """Evict idle models, least recently used first, until `needed` bytes are free."""
        while self.memory.free < needed:
            idle = self._idle(but=key)
            if not idle:
                return False
            self._unload(idle[0], "to make room")
        return True

    def _slots_for(self, key: ModelKey, fp: memory.Footprint) -> int:
        """MUSICGEN_MAX_BATCH slots when they fit (evicting idle models for them), else as many as fit."""
        want = self.settings.max_batch if self.settings.decoder == "fast" else 1
        self._room_for(key, fp.total(want) - fp.weights)
        return fp.slots_within(self.memory.free + fp.weights, want)  # its weights are loaded, not yet in the plan

    def _evict_beyond_count(self) -> None:
        """MUSICGEN_MAX_MODELS, when set, caps the count too (least recently used idle models go)."""
        cap = self.settings.max_models
        while cap and len(self.models) > cap and (idle := self._idle()):
            self._unload(idle[0], f"(MUSICGEN_MAX_MODELS={cap})")

    def room_to_decode(self, key: ModelKey, seconds: float, streams: int) -> None:
        """The codec decodes a whole clip at once: past the one window every model keeps room for, make room by
        evicting idle models (if it still does not fit, out of memory fails that request alone)."""
        beyond = memory.codec_bytes(seconds, streams, self.dtype_bytes) - memory.codec_bytes(
            memory.WINDOW_S, streams, self.dtype_bytes
        )
        if beyond > 0:
            self._room_for(key, beyond)

    def evict_idle(self, why: str) -> None:
        for key in self._idle():
            self._unload(key, why)

    def _unload(self, key: ModelKey, why: str) -> None:
        del self.models[key]
        self.evictions += 1
        self.memory.models.pop(key, None)
        self.fast_decoder.pop(key, None)
        log.info("evicted %s from %s %s", key, self.device, why)
        faults.free_cached(self.device)

    # ---------------------------------------------------------------------------------- health

    def health(self) -> dict[str, Any]:
        return {
            "resident_models": [str(k) for k in self.models],
            "model_loads": self.model_loads,
            "loading": sorted(str(k) for k in self._waiters),
            "fast_decoder": {str(k): v for k, v in list(self.fast_decoder.items())},
            "adapters": {  # LoRA fine-tunes in each model's adapter slots, most recently used first
                str(k): r.batch.resident_adapters() for k, r in list(self.models.items()) if r.batch is not None
            },
            "memory": self.memory.as_dict(),
            "evictions": self.evictions,
            "pinned": {name: str(key) for name, key in list(self.pins.items())},
            "pinned_adapters": {  # deployment -> the adapter it keeps in its model's slots
                n: k for r in list(self.models.values()) if r.batch for n, k in r.batch.pinned_adapters().items()
            },
        }


def _prefix(model) -> int:
    return MELODY_PREFIX if "self_wav" in model.lm.condition_provider.conditioners else 0


def autocast(device: str):
    """What `MusicGen.autocast` does (float16 autocast off the CPU), as a fresh context."""
    if torch.device(device).type == "cpu":
        return torch.autocast("cpu", enabled=False)
    return torch.autocast(torch.device(device).type, dtype=torch.float16)
