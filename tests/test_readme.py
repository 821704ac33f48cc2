"""The README stays true: every setting documented, the quick start's version id is one we serve."""

from musicgen_local.registry import PUBLISHED as VERSION_IDS
from musicgen_local.settings import ENV_VARS
from tests.docs_helpers import ROOT, page

README = page("README.md")


def test_every_environment_variable_is_documented():
    assert [name for name in ENV_VARS if f"`{name}`" not in README] == []


def test_quick_start_uses_a_served_version_and_the_v1_base_url():
    assert VERSION_IDS[0] in README
    assert 'baseUrl: "http://127.0.0.1:5000/v1"' in README
    assert 'base_url="http://127.0.0.1:5000"' in README


def test_quick_start_opens_the_playground_and_shows_its_screenshot():
    assert "open http://127.0.0.1:5000/ in a browser" in README
    assert "](docs/playground.png)" in README
    shot = ROOT / "docs" / "playground.png"
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size < 300_000


def test_the_card_table_is_the_one_the_memory_plan_computes():
    from musicgen_local.engine.memory import card_table_markdown

    assert card_table_markdown() in README and card_table_markdown("large") in README
