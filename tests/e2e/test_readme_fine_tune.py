"""The README's Fine-tune section, run as written on the tiny weights: the Python client's training and run of
the new version (only the base URL and token change), then the command-line train and predict."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

from e2e_helpers import TOKEN, audio_info

from tests.docs_helpers import code_blocks, section
from tests.training_helpers import songs_zip as _dataset

SECTION = section("docs/fine-tuning.md", "# Fine-tune on your own music")


def _block(language: str) -> str:
    return code_blocks(SECTION, language)[0]


def test_the_python_example_trains_and_runs_the_new_version(live_server, tmp_path):
    code = _block("python").replace('api_token="local"', f'api_token="{TOKEN}"')
    code = code.replace("http://127.0.0.1:5000", live_server.url)
    _dataset(tmp_path / "songs.zip")
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr
    status_line, url = done.stdout.strip().splitlines()[-2:]
    assert re.fullmatch(r"succeeded me/my-sound:[0-9a-f]{64}", status_line)
    assert audio_info(url) == (1, 32000, 4 * 32000)


def test_the_command_line_example_trains_and_predicts(settings, tmp_path):
    _dataset(tmp_path / "songs.zip")
    with zipfile.ZipFile(tmp_path / "songs.zip") as z:
        assert any(name.endswith(".txt") for name in z.namelist())
    env = {
        **os.environ,
        "MUSICGEN_WEIGHTS": str(settings.weights_dir),
        "MUSICGEN_DEVICES": "cpu",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    for line in _block("bash").strip().splitlines():
        done = subprocess.run(
            line, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900, check=False
        )
        assert done.returncode == 0, (line, done.stderr[-3000:])
    assert (tmp_path / "my-weights.tar").is_file()
    assert audio_info_file(tmp_path / "out.wav") == (1, 32000, 8 * 32000)


def audio_info_file(path: Path) -> tuple[int, int, int]:
    import wave

    with wave.open(str(path)) as w:
        return w.getnchannels(), w.getframerate(), w.getnframes()
