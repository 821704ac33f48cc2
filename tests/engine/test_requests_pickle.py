"""What the server hands an engine must cross a process boundary: the Ray bridge sends each request down a pipe with
pickle, so a training's parsed inputs have to be found again on the other side."""

from __future__ import annotations

import pickle

from musicgen_local.engine.api import Request, TrainingRequest
from musicgen_local.training.params import parse_training_input


def test_a_training_request_survives_pickle_with_its_parsed_inputs():
    params = parse_training_input({"dataset_path": "https://example.com/songs.zip", "epochs": 2, "lora_rank": 4})
    request = TrainingRequest(params, "https://example.com/songs.zip", "/tmp/work", "/tmp/out.tar")
    back = pickle.loads(pickle.dumps(request))
    assert back == request
    assert back.params.epochs == 2 and back.params.lora_rank == 4


def test_a_prediction_request_survives_pickle():
    request = Request(prompt="drums", duration=3, seed=7)
    assert pickle.loads(pickle.dumps(request)) == request
