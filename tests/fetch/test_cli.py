"""`musicgen-local weights fetch|list`, through the CLI's own parser."""

from __future__ import annotations

import sys

from musicgen_local import weights as W
from musicgen_local.cli import build_parser
from musicgen_local.errors import MusicgenError
from musicgen_local.settings import Settings


def run(argv: list[str], settings: Settings) -> int:
    """As `main` runs a command: a MusicgenError is one line on stderr and status 1."""
    args = build_parser().parse_args(["weights", *argv])
    try:
        return args.func(args, settings)
    except MusicgenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def test_fetch_melody_and_mbd_then_list(hub, weights_dir, capsys):
    for file in W.MBD_FILES:  # not among the tiny checkpoints: any bytes do, fetch does not load them
        hub.add(file.repo, file.filename, f"tiny {file}".encode() * 100)
    settings = Settings(weights_dir=weights_dir)

    assert run(["fetch", "--melody", "--mbd"], settings) == 0

    fetched = {s.path for s in hub.seen if s.method == "HEAD" and s.server == "hub"}
    assert "/facebook/musicgen-melody-large/resolve/main/state_dict.bin" in fetched
    assert "/facebook/musicgen-stereo-melody-large/resolve/main/state_dict.bin" in fetched
    assert "/adefossez/HTDemucs/resolve/main/955717e8.safetensors" in fetched
    assert "/facebook/multiband-diffusion/resolve/main/mbd_musicgen_32khz.th" in fetched
    assert not any("/facebook/musicgen-large/" in path for path in fetched)

    capsys.readouterr()
    assert run(["list"], settings) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"weights in {weights_dir}"
    groups = {line.split()[0]: line.split()[1] for line in lines[1:] if not line.startswith(" ")}
    assert groups == {
        "stereo-melody-large": "complete",
        "stereo-large": "2",
        "melody-large": "complete",
        "large": "2",
        "encode-decode": "complete",
        "medium": "2",  # the looper's model: listed with the others, not fetched by --melody
        "mbd": "complete",
    }
    size = W.cached_path(weights_dir, W.HubFile(W.HTDEMUCS, "955717e8.safetensors")).stat().st_size
    assert f"  present     {size / 1e6:.1f} MB  adefossez/HTDemucs/955717e8.safetensors" in lines
    assert "  missing             facebook/musicgen-large/state_dict.bin" in lines


def test_fetch_default_is_replicates_default_model_version(hub, weights_dir):
    assert run(["fetch"], Settings(weights_dir=weights_dir)) == 0
    assert W.missing(weights_dir, W.required_files("stereo-melody-large")) == []
    assert W.missing(weights_dir, W.required_files("large")) != []


def test_fetch_rejects_an_unknown_model_version_and_reports_a_missing_repo(hub, weights_dir, capsys):
    assert run(["fetch", "small"], Settings(weights_dir=weights_dir)) == 2
    assert "error: unknown model_version small; choose from stereo-melody-large" in capsys.readouterr().err
    settings = Settings(weights_dir=weights_dir, checkpoints={"large": "me/does-not-exist"})
    assert run(["fetch", "large"], settings) == 1
    assert "error: Repository `me/does-not-exist` was not found on" in capsys.readouterr().err
    assert hub.gets() == []
