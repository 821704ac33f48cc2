"""`musicgen_local.weights`' fetching against a hub on 127.0.0.1 that answers as huggingface.co does."""

from __future__ import annotations

import hashlib

import pytest

from musicgen_local import weights as W
from musicgen_local.registry import LM_VERSIONS
from musicgen_local.weights import FetchError, fetch, files_for

ENCODEC_WEIGHTS = W.HubFile(W.ENCODEC, "model.safetensors")


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fetch_all_then_again_downloads_nothing(hub, weights_dir):
    lines: list[str] = []
    first = fetch(weights_dir, files_for(LM_VERSIONS), log=lines.append)

    wanted = files_for(LM_VERSIONS)
    # The stereo LMs' compression_state_dict.bin points to facebook/encodec_32khz: fetched too.
    assert set(first.downloaded) == set(wanted) | set(W.ENCODEC_FILES)
    assert first.verified == []
    for file in first.downloaded:
        local = W.cached_path(weights_dir, file)
        assert local is not None, file
        served = hub.repos[{"t5-base": "google-t5/t5-base"}.get(file.repo, file.repo)][file.filename]
        assert local.read_bytes() == served.data, file
    assert W.missing(weights_dir, tuple(wanted)) == []
    # The hub cache layout: snapshot under the hub's commit, LFS blobs named by their sha256.
    lm = weights_dir / "hub" / "models--facebook--musicgen-large"
    assert (lm / "refs" / "main").read_text() == hub.commit("facebook/musicgen-large")
    state = lm / "snapshots" / hub.commit("facebook/musicgen-large") / "state_dict.bin"
    assert state.resolve().name == sha256(state)
    assert any(line.startswith("Downloading facebook/musicgen-large/state_dict.bin (") for line in lines)
    gets = len(hub.gets())

    second = fetch(weights_dir, files_for(LM_VERSIONS), log=lines.append)
    assert second.downloaded == [] and second.bytes_downloaded == 0
    assert set(second.verified) == set(first.downloaded)
    assert len(hub.gets()) == gets  # metadata HEADs only, no file transfer


def test_interrupted_download_is_resumed(hub, weights_dir):
    # huggingface_hub writes in 10 MiB chunks and resumes from the last whole one (constants.DOWNLOAD_CHUNK_SIZE),
    # so the file must be larger than a chunk and the connection must drop after the first.
    chunk = 10 * 1024 * 1024
    data = hashlib.sha256(b"seed").digest() * ((chunk + chunk // 2) // 32)
    hub.add("me/big-finetune", "state_dict.bin", data)
    hub.cut_after["state_dict.bin"] = chunk + 4096
    file = W.HubFile("me/big-finetune", "state_dict.bin")

    summary = fetch(weights_dir, [file])

    transfers = hub.gets("cdn")
    assert len(transfers) == 2
    assert "range" not in transfers[0].headers
    assert transfers[1].headers["range"] == f"bytes={chunk}-"
    assert W.cached_path(weights_dir, file).read_bytes() == data
    assert summary.downloaded == [file] and summary.bytes_downloaded == len(data)


def test_corrupt_file_is_named_and_replaced(hub, weights_dir):
    fetch(weights_dir, [ENCODEC_WEIGHTS])
    blob = W.cached_path(weights_dir, ENCODEC_WEIGHTS).resolve()
    good = blob.read_bytes()
    blob.write_bytes(b"\0" * 64 + good[64:])  # same size, different bytes
    lines: list[str] = []

    summary = fetch(weights_dir, [ENCODEC_WEIGHTS], log=lines.append)

    served = hub.repos[W.ENCODEC]["model.safetensors"].sha256
    assert lines[0].startswith("facebook/encodec_32khz/model.safetensors: corrupt: sha256 ")
    assert lines[0].endswith(f"the hub has {served[:16]}…; downloading it again")
    assert summary.downloaded == [ENCODEC_WEIGHTS]
    assert W.cached_path(weights_dir, ENCODEC_WEIGHTS).read_bytes() == good


def test_partial_file_is_named(hub, weights_dir):
    file = W.HubFile(W.T5, "tokenizer.json")  # a small, non-LFS file: checked against its git sha1
    fetch(weights_dir, [file])
    local = W.cached_path(weights_dir, file).resolve()
    size = local.stat().st_size
    local.write_bytes(local.read_bytes()[:1000])
    lines: list[str] = []

    fetch(weights_dir, [file], log=lines.append)

    assert lines[0] == (
        f"t5-base/tokenizer.json: partial or corrupt: 1000 bytes on disk, the hub has {size}; downloading it again"
    )
    assert W.cached_path(weights_dir, file).stat().st_size == size


def test_a_download_that_does_not_match_the_hub_is_named_and_not_kept(hub, weights_dir):
    advertised = hub.repos[W.ENCODEC]["model.safetensors"].sha256
    hub.serve_wrong_bytes(W.ENCODEC, "model.safetensors")

    with pytest.raises(FetchError) as corrupt:
        fetch(weights_dir, [ENCODEC_WEIGHTS])

    message = str(corrupt.value)
    assert message.startswith(f"Downloaded facebook/encodec_32khz/model.safetensors from {hub.url} but it is corrupt: ")
    assert message.endswith(f"the hub has {advertised[:16]}…. Run the fetch again.")
    assert W.cached_path(weights_dir, ENCODEC_WEIGHTS) is None


def test_missing_repo_and_missing_file_are_clear_errors(hub, weights_dir):
    with pytest.raises(FetchError) as missing_repo:
        fetch(weights_dir, [W.HubFile("facebook/musicgen-nope", "state_dict.bin")])
    assert str(missing_repo.value) == (
        f"Repository `facebook/musicgen-nope` was not found on {hub.url} (needed for state_dict.bin). "
        "Check the name; for a private or gated repo set HF_TOKEN to a token that can read it."
    )
    with pytest.raises(FetchError) as missing_file:
        fetch(weights_dir, [W.HubFile(W.ENCODEC, "nope.bin")])
    assert str(missing_file.value) == f"`nope.bin` is not in `facebook/encodec_32khz` on {hub.url}."


def test_unreachable_hub_is_a_clear_error(weights_dir, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    with pytest.raises(FetchError, match=r"^Could not fetch t5-base/config.json from http://127.0.0.1:9: "):
        fetch(weights_dir, [W.HubFile(W.T5, "config.json")])


def test_token_goes_to_the_hub_not_the_cdn_and_offline_mode_is_restored(hub, weights_dir, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    constants.HF_HUB_OFFLINE = True

    fetch(weights_dir, [ENCODEC_WEIGHTS])

    hub_calls = [s for s in hub.seen if s.server == "hub"]
    cdn_calls = [s for s in hub.seen if s.server == "cdn"]
    assert hub_calls and cdn_calls
    assert all(s.headers.get("authorization") == "Bearer hf_test_token" for s in hub_calls)
    assert all("authorization" not in s.headers for s in cdn_calls)
    assert constants.HF_HUB_OFFLINE is True
