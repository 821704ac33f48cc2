"""How far a failure on the device reaches: the request, the batch's memory, or the whole device.

- `REQUEST`: a bug or a bad input. It fails the one request it happened in.
- `OUT_OF_MEMORY`: the allocator refused. Nothing is poisoned: free what is cached, fail (or shrink)
  what needed the memory, and go on.
- `FATAL`: the CUDA context is poisoned (illegal address, device-side assert, ECC, launch failure).
  Every later kernel on it fails, so the device can serve nothing more: its jobs fail with a
  message that says so, health turns UNHEALTHY and the process exits so that its supervisor
  (Docker, Cog, Ray Serve) starts a fresh one. torch raises these as `torch.AcceleratorError`
  (2.8 and later) or as a RuntimeError whose text carries the CUDA error's name.
"""

from __future__ import annotations

import logging

import torch

from ..errors import EngineError

log = logging.getLogger(__name__)

REQUEST, OUT_OF_MEMORY, FATAL = "request", "out of memory", "fatal"

# The CUDA runtime's sticky errors, as torch spells them in messages: after one, the context is unusable.
_STICKY = (
    "illegal memory access",
    "device-side assert",
    "uncorrectable ecc",
    "unspecified launch failure",
    "misaligned address",
    "illegal instruction",
    "an illegal address",
    "launch timed out",
    "cudaerrorlaunchfailure",
    "cublas_status_execution_failed",
    "hardware stack error",
    "cuda error: unknown error",
    "gpu has fallen off the bus",
    "cudaerrorecc",
)


def classify(exc: BaseException, device: str) -> str:
    if isinstance(exc, torch.OutOfMemoryError):
        return OUT_OF_MEMORY
    text = str(exc).lower()
    if "out of memory" in text and ("cuda" in text or "hip" in text):
        return OUT_OF_MEMORY
    if isinstance(exc, RuntimeError) and any(s in text for s in _STICKY):
        return FATAL
    accelerator_error = getattr(torch, "AcceleratorError", ())
    if isinstance(exc, accelerator_error) or (isinstance(exc, RuntimeError) and "cuda error" in text):
        return REQUEST if _still_usable(device) else FATAL  # some CUDA errors are not sticky: ask the device
    return REQUEST


def _still_usable(device: str) -> bool:
    if torch.device(device).type != "cuda":
        return True
    try:
        probe = torch.ones(8, device=device)
        torch.cuda.synchronize(device)
        return float(probe.sum().item()) == 8.0
    except Exception:  # noqa: BLE001 - whatever the probe raises, the context is unusable
        return False


def free_cached(device: str) -> None:
    """Give the caching allocator's free blocks back (after an out-of-memory error, or an eviction)."""
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


class DeviceLost(Exception):
    """Raised inside the device loop once its device is unusable: every job it holds ends."""

    def __init__(self, device: str, cause: BaseException, job=None) -> None:
        self.device, self.cause, self.job = device, cause, job  # job: the one whose stage raised, if any
        super().__init__(f"{device} failed: {type(cause).__name__}: {str(cause).strip().splitlines()[0][:300]}")


class Containment:
    """One device's answer to a failure in any of its stages: a fatal error raises `DeviceLost` (everything on
    the device ends), out-of-memory frees the allocator's cache and becomes a readable `EngineError` (counted;
    the device goes on), anything else is returned as it is, for the one job or model it happened to."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.out_of_memory = 0  # out-of-memory errors survived

    def contain(self, exc: Exception, doing: str, job=None) -> Exception:
        """`doing`: what failed, for the message ("loading large"); `job`: the job whose stage raised, if any."""
        reach = classify(exc, self.device)
        if reach == FATAL:
            raise DeviceLost(self.device, exc, job) from exc
        if reach == OUT_OF_MEMORY:
            return self._out_of_memory(exc, doing)
        return exc

    def _out_of_memory(self, exc: Exception, doing: str) -> EngineError:
        self.out_of_memory += 1
        free_cached(self.device)
        log.warning("out of memory on %s while %s: %s", self.device, doing, str(exc).splitlines()[0][:300])
        return EngineError(
            f"Out of memory on {self.device} while {doing}. The server goes on serving; try a "
            "shorter `duration`, fewer requests at once (MUSICGEN_MAX_BATCH), or fewer models on this "
            "device (MUSICGEN_DEVICE_MEMORY)."
        )
