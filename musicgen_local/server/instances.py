"""What a deployment's configuration asks of this server, applied: `min_instances` >= 1 keeps its model resident
on its `hardware` (the engine's `keep`, a pin in that device's residency and memory plan), and `max_instances`
caps how many of its predictions run at once (the prediction dispatcher asks `cap`).

A pin is asked for before a deployment is created or changed, and its answer awaited (up to PIN_WAIT_S, less than
the clients' read timeouts): a pin the device cannot hold refuses the change, with the engine's message (what the
model needs, what the other deployments keep). A model that takes longer to load is created all the same, and
warms up behind the answer (a refusal then is logged, and the deployment's predictions load it on demand). At
start, every deployment's pin is asked for again (the deployments are in the database; the engine is new).
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Future
from typing import Any

from ..deployments import Deployment, Deployments
from ..engine.api import EngineClient
from ..errors import UserError
from ..looper import schema as looper_schema
from ..registry import Registry, Version
from .dispatcher import Dispatcher

log = logging.getLogger(__name__)
PIN_WAIT_S = 45.0
CPU = [{"sku": "cpu", "name": "CPU"}]  # what an engine that does not list its devices runs on


class Instances:
    def __init__(
        self, deployments: Deployments, registry: Registry, engine: EngineClient, dispatcher: Dispatcher
    ) -> None:
        self.deployments, self.registry, self.engine, self.dispatcher = deployments, registry, engine, dispatcher
        self._caps: dict[str, int] = {}  # deployment -> max_instances
        dispatcher.instances = self._caps.get

    def hardware(self) -> list[dict[str, Any]]:
        listed = getattr(self.engine, "hardware", None)
        return listed() if listed is not None else CPU

    def check_hardware(self, sku: str) -> None:
        skus = [h["sku"] for h in self.hardware()]
        if sku not in skus:
            raise UserError(f"`hardware` must be one of this server's devices ({', '.join(skus)}), not {sku!r}.")

    async def warm(self, deployment: Deployment) -> None:
        """Keep its model resident, if its configuration asks for it (else let go what it kept). Raises what the
        engine answers when it cannot (MusicgenError), or UserError where the engine keeps nothing warm."""
        if not deployment.release.configuration.warm:
            self._let_go(deployment.full_name)
            return
        pinned = asyncio.wrap_future(self._keep(deployment))
        done, _ = await asyncio.wait([pinned], timeout=PIN_WAIT_S)  # never cancels the pin
        if done:
            pinned.result()
        else:
            log.info("deployment %s: its model is still loading; it warms up in the background", deployment.full_name)

    def configured(self, deployment: Deployment) -> None:
        """Its release is the one in force: its predictions are capped at its max_instances from now."""
        self._caps[deployment.full_name] = deployment.release.configuration.max_instances
        self.dispatcher.wake()

    def removed(self, name: str) -> None:
        self._caps.pop(name, None)
        self._let_go(name)
        self.dispatcher.wake()

    def restore(self) -> None:
        """At start: every deployment's cap, and its pin asked for again (answers logged, not awaited)."""
        for deployment in self.deployments.all():
            self.configured(deployment)
            if deployment.release.configuration.warm:
                self._keep(deployment).add_done_callback(_logged(deployment.full_name))

    def _keep(self, deployment: Deployment) -> Future:
        release = deployment.release
        keep = getattr(self.engine, "keep", None)
        version = self.registry.version(release.version)
        if keep is None or version is None:
            refused: Future = Future()
            why = "this engine keeps no model warm" if keep is None else f"its version {release.version} is gone"
            refused.set_exception(UserError(f"Cannot keep {deployment.full_name} warm: {why}; set min_instances to 0."))
            return refused
        model_version = _default_model_version(version)
        return keep(deployment.full_name, model_version, version.weights, release.configuration.hardware, version.tune)

    def _let_go(self, name: str) -> None:
        let_go = getattr(self.engine, "let_go", None)
        if let_go is not None:
            let_go(name)


def _default_model_version(version: Version) -> str:
    """What a deployment of `version` keeps warm: a fine-tune's base, or its schema's default model_version (a
    prediction that asks for another loads that one on demand)."""
    if version.loops:
        return looper_schema.FIELDS_BY_NAME["model_version"].default
    return version.model_version_for(None)


def _logged(name: str):
    def answer(pinned: Future) -> None:
        if pinned.exception() is not None:
            log.error("deployment %s: its model is not kept warm: %s", name, pinned.exception())
        else:
            log.info("deployment %s: %s", name, pinned.result())

    return answer
