"""What an operator sees of fine-tunes: after a prediction of a LoRA version through the official client, /metrics
counts it by its version and lists its adapter in both tiers (the device's slots, the host's memory), and the
real-time factor of the predictions made."""

from __future__ import annotations

import httpx
import replicate
from e2e_helpers import TOKEN, add_lora_version
from prometheus_client.parser import text_string_to_metric_families


def test_a_fine_tune_prediction_shows_by_version_and_its_adapter_in_both_tiers(live_server, live_settings):
    client = replicate.Client(api_token=TOKEN, base_url=live_server.url)
    client.models.create("olga", "beats", visibility="private", hardware="cpu")
    version = add_lora_version(live_settings, "olga/beats", seed=5)
    client.run(f"olga/beats:{version}", input={"prompt": "beat", "duration": 1, "seed": 2})
    text = httpx.get(f"{live_server.url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    adapter = f"olga/beats:{version}"
    tiers = {
        dict(labels)["tier"]
        for name, labels in samples
        if name == "musicgen_adapters_loaded" and dict(labels)["adapter"] == adapter
    }
    assert tiers == {"device", "host"}
    ended = [
        v
        for (name, labels), v in samples.items()
        if name == "musicgen_predictions_ended_total"
        and dict(labels) == {"model_version": "large", "version": version, "status": "succeeded"}
    ]
    assert ended == [1.0]
    assert samples[("musicgen_prediction_realtime_factor_count", (("model_version", "large"),))] >= 1
