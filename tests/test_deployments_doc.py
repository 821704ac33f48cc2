"""The deployments' documentation stays true: linked from the README with every client's base URL, its
screenshot there, and the statuses it promises are the ones the API can answer."""

from pathlib import Path

from musicgen_local.server.bodies import Prediction

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DOC = (ROOT / "docs" / "deployments.md").read_text()


def test_the_readme_links_the_doc_and_gives_each_clients_base_url():
    assert "](docs/deployments.md)" in README
    assert "v2 Python SDK (`replicate` 2.0.0b4) take `http://127.0.0.1:5000/v1`" in README
    for line in (
        'baseUrl: "http://127.0.0.1:5000/v1"',
        'base_url="http://127.0.0.1:5000/v1"',
        'base_url="http://127.0.0.1:5000")',
    ):
        assert line in DOC


def test_the_prediction_page_screenshot_is_there():
    assert "](prediction-page.png)" in DOC
    shot = ROOT / "docs" / "prediction-page.png"
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size < 300_000


def test_aborted_is_never_a_status_and_the_doc_says_why():
    statuses = Prediction.model_fields["status"].annotation.__args__
    assert "aborted" not in statuses and "**never `aborted`**" in DOC
