"""The v2 Python SDK (PyPI `replicate` 2.0.0b4) against a musicgen-local server, unchanged but for its base URL.

Runs in the SDK's own virtual environment (.venv-sdk2, `make sdk2`): it imports nothing of musicgen_local.
Usage: sdk2_client.py <action> '<json args>'; prints one JSON object of what it saw (each response as the SDK
parsed it), which tests/e2e/test_sdk2_client.py asserts on and the docs quote.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import replicate
from replicate import Replicate

TERMINAL = ("succeeded", "failed", "canceled")


def dump(obj: Any) -> Any:
    """A response as plain JSON: the SDK's models by their fields (openapi schemas left out: long)."""
    if hasattr(obj, "to_dict"):
        obj = obj.to_dict()
    if isinstance(obj, dict):
        return {k: dump(v) for k, v in obj.items() if k != "openapi_schema"}
    if isinstance(obj, list):
        return [dump(v) for v in obj]
    return obj if isinstance(obj, str | int | float | bool | type(None)) else str(obj)


def client(args: dict) -> Replicate:
    return Replicate(bearer_token=args["token"], base_url=f"{args['baseUrl']}/v1")


def basics(args: dict) -> dict:
    """Predictions, run, hardware, account, files, search: the calls a new user tries first."""
    r = client(args)
    ref = f"meta/musicgen:{args['version']}"
    created = r.predictions.create(version=args["version"], input=args["input"], prefer="wait")
    output = r.run(ref, input=args["input"])
    with open(args["file"], "rb") as f:
        uploaded = r.files.create(content=f, filename="melody.wav")
    return {
        "hardware": dump(r.hardware.list()),
        "account": dump(r.account.get()),
        "created": dump(created),
        "fetched": dump(r.predictions.get(prediction_id=created.id)),
        "run": str(output),
        "listed": [p.id for p in r.predictions.list()],
        "file": dump(uploaded),
        "search": dump(r.search(query="musicgen", limit=5)),
        "models_search": [m.name for m in r.models.search(body="musicgen")],
    }


def train(args: dict) -> dict:
    """A model to train into, its dataset uploaded through files.create, a training, its new version."""
    r = client(args)
    r.models.create(owner=args["owner"], name=args["name"], hardware="cpu", visibility="private")
    with open(args["dataset"], "rb") as f:
        dataset = r.files.create(content=f, filename="songs.zip")
    training = r.trainings.create(
        model_owner="meta",
        model_name="musicgen",
        version_id=args["version"],
        destination=f"{args['owner']}/{args['name']}",
        input={**args["trainingInput"], "dataset_path": dataset.urls.get},
    )
    deadline = time.monotonic() + 300
    while training.status not in TERMINAL and time.monotonic() < deadline:
        time.sleep(0.2)
        training = r.trainings.get(training_id=training.id)
    return {"training": dump(training), "listed": [t.id for t in r.trainings.list()]}


def deployment(args: dict) -> dict:
    """One deployment's life: create, predict, update to a fine-tune, predict, delete."""
    r = client(args)
    owner, name = r.account.get().username, args["deployment"]
    seen: dict[str, Any] = {}
    seen["create"] = r.deployments.create(
        name=name, model="meta/musicgen", version=args["version"], hardware="cpu", min_instances=1, max_instances=2
    )
    seen["predict"] = r.deployments.predictions.create(
        deployment_owner=owner, deployment_name=name, input=args["input"], prefer="wait", cancel_after="5m"
    )
    seen["update"] = r.deployments.update(deployment_owner=owner, deployment_name=name, version=args["tuned"])
    seen["predict_after_update"] = r.deployments.predictions.create(
        deployment_owner=owner, deployment_name=name, input=args["input"], prefer="wait"
    )
    seen["get"] = r.deployments.get(deployment_owner=owner, deployment_name=name)
    seen["list"] = list(r.deployments.list())
    seen["delete"] = r.deployments.delete(deployment_owner=owner, deployment_name=name)
    try:
        r.deployments.get(deployment_owner=owner, deployment_name=name)
        seen["get_after_delete"] = "found"
    except replicate.NotFoundError as exc:
        seen["get_after_delete"] = f"NotFoundError {exc.status_code}"
    return {key: dump(value) for key, value in seen.items()}


if __name__ == "__main__":
    action, raw = sys.argv[1:3]
    print(json.dumps({"basics": basics, "train": train, "deployment": deployment}[action](json.loads(raw))))
