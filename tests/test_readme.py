"""The README and the manual in docs/ stay true: every setting documented, the quick start's version id is one we
serve, the card tables are the memory plan's, the layout names every module, and every link between the pages
lands on a file and a heading that exist. (The snippets themselves run in tests/e2e/test_readme_*.py.)"""

import re

from musicgen_local.registry import PUBLISHED as VERSION_IDS
from musicgen_local.settings import ENV_VARS
from tests.docs_helpers import FENCE, ROOT, code_blocks, headings, page, section

README = page("README.md")
PAGES = ["README.md", *sorted(f"docs/{path.name}" for path in (ROOT / "docs").glob("*.md"))]
PACKAGE = ROOT / "musicgen_local"


def test_every_environment_variable_is_in_the_configuration_table():
    documented = re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \|", page("docs/configuration.md"), re.M)
    assert [name for name in ENV_VARS if name not in documented] == []
    assert [name for name in documented if name not in ENV_VARS] == []  # no row for a variable nothing reads


def test_quick_start_uses_a_served_version_and_the_v1_base_url():
    assert VERSION_IDS[0] in README
    assert 'baseUrl: "http://127.0.0.1:5000/v1"' in README
    assert 'base_url="http://127.0.0.1:5000"' in README


def test_the_two_commands_do_all_the_set_up():
    quick_start = section("README.md", "## Quick start")
    assert "make serve" in quick_start and "make test" in quick_start
    makefile = page("Makefile")
    assert re.search(r"^serve: install\b", makefile, re.M) and re.search(r"^test: install\b", makefile, re.M)


def test_quick_start_opens_the_playground_and_shows_its_screenshot():
    assert "open http://127.0.0.1:5000/ in a browser" in README
    assert "](docs/playground.png)" in README
    shot = ROOT / "docs" / "playground.png"
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size < 300_000


def test_the_card_tables_are_the_ones_the_memory_plan_computes():
    from musicgen_local.engine.memory import card_table_markdown

    assert card_table_markdown() in section("README.md", "## What fits on which card")
    gpu = section("docs/gpu.md", "## What fits on which card")
    assert card_table_markdown() in gpu and card_table_markdown("large") in gpu


def test_the_readme_stays_a_front_door():
    lines = len(README.splitlines())
    assert lines <= 300, f"README.md has {lines} lines: the manual's text belongs in a page of docs/"


def test_there_is_one_limits_page():
    elsewhere = [(name, title) for name in PAGES if name != "docs/limits.md" for _, title in headings(page(name))]
    assert [(name, title) for name, title in elsewhere if "limit" in title.lower()] == []


def github_anchor(title: str) -> str:
    """The id GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def anchors(name: str) -> set[str]:
    """Every heading's id on a page; a repeated heading gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    for _, title in headings(page(name)):
        slug = github_anchor(title)
        seen[slug] = seen.get(slug, -1) + 1
    return {slug if n == 0 else f"{slug}-{n}" for slug, count in seen.items() for n in range(count + 1)}


def links(name: str) -> list[str]:
    prose = re.sub(rf"^{FENCE}.*?^{FENCE}", "", page(name), flags=re.S | re.M)
    return [target for target in re.findall(r"\]\(([^)\s]+)\)", prose) if not re.match(r"[a-z]+:", target)]


def test_every_link_between_the_pages_lands_on_a_file_and_a_heading():
    broken = []
    for name in PAGES:
        for target in links(name):
            path, _, anchor = target.partition("#")
            landing = (ROOT / name).parent / path if path else ROOT / name
            if not landing.exists():
                broken.append((name, target, "no such file"))
            elif anchor and anchor not in anchors(landing.resolve().relative_to(ROOT).as_posix()):
                broken.append((name, target, "no such heading"))
    assert broken == []


def layout_entries() -> dict[str, str]:
    """docs/development.md's layout: each folder (a line that starts in column 0) and the text under it."""
    block = section("docs/development.md", "## Layout").split(FENCE)[1]
    entries: dict[str, str] = {}
    for line in block.splitlines()[1:]:
        if line and not line[0].isspace():
            head = line.split()[0]
            entries[head] = line
        elif entries:
            entries[head] += "\n" + line
    return entries


def test_the_development_layout_names_every_module():
    entries = layout_entries()
    missing = []
    for module in sorted(PACKAGE.rglob("*.py")):
        folder = module.parent.relative_to(ROOT).as_posix() + "/"
        if module.name == "__init__.py" or "_build" in module.parts:
            continue
        if not re.search(rf"(?<![\w/.]){re.escape(module.name)}\b", entries.get(folder, "")):
            missing.append(str(module.relative_to(ROOT)))
    assert missing == []


def test_the_json_log_line_shown_is_what_the_server_writes():
    import json
    import logging

    from musicgen_local import logs

    shown = json.loads(code_blocks(section("docs/operating.md", "## Logs"), "json")[0])
    record = logging.LogRecord(shown["logger"], logging.INFO, __file__, 1, shown["message"], None, None)
    with logs.about("prediction", shown["prediction_id"], shown["model"]):
        written = json.loads(logs.JsonLines().format(record))
    assert list(written) == list(shown)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", shown["time"])
    assert {key: written[key] for key in written if key != "time"} == {k: v for k, v in shown.items() if k != "time"}


def test_the_mcp_host_block_runs_a_command_the_cli_takes():
    import json

    from musicgen_local.cli import build_parser, cmd_mcp

    server = json.loads(code_blocks(section("docs/operating.md", "## Agents (MCP)"), "json")[0])["mcpServers"]
    (entry,) = server.values()
    assert entry["command"].endswith("/.venv/bin/musicgen-local")
    assert build_parser().parse_args(entry["args"]).func is cmd_mcp
    assert set(entry["env"]) <= set(ENV_VARS)
