"""The docs: a README that fits on a screen, every link resolving, a layout page naming every module, a
settings page that is the code's defaults, and no text that speaks of how the project was made."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from housing.config.settings import PROJECT_DIR, Settings

DOCS = sorted((PROJECT_DIR / "docs").glob("*.md"))
PAGES = [PROJECT_DIR / "README.md", *DOCS]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#+\s+(.*)$", re.M)


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_the_readme_fits_on_a_screen_and_no_line_runs_on():
    readme = (PROJECT_DIR / "README.md").read_text().splitlines()
    assert len(readme) <= 150, f"README.md has {len(readme)} lines"
    for page in PAGES:
        long = [n for n, line in enumerate(page.read_text().splitlines(), 1) if len(line) > 200]
        assert not long, f"{page.name}: lines over 200 characters: {long}"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_link_resolves(page):
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"^[a-z]+://|^mailto:", target):
            continue
        path, _, fragment = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(target)
            continue
        anchors = (
            {anchor(h) for h in HEADING.findall(resolved.read_text())} if resolved.suffix == ".md" else set()
        )
        if fragment and resolved.suffix == ".md" and fragment not in anchors:
            broken.append(target)
    assert not broken, f"{page.name}: links that do not resolve: {broken}"


def test_the_layout_page_names_every_module():
    layout = (PROJECT_DIR / "docs" / "layout.md").read_text()
    modules = sorted(
        str(path.relative_to(PROJECT_DIR))
        for path in (PROJECT_DIR / "housing").rglob("*.py")
        if path.name != "__init__.py"
    )
    assert len(modules) > 40
    missing = [module for module in modules if module not in layout]
    assert not missing, f"docs/layout.md does not name: {missing}"


def shown(value: Any) -> str:
    """A default as the settings page shows it: paths under the project as ``<project>/...``."""
    if value is None or (isinstance(value, SecretStr) and not value.get_secret_value()):
        return "unset"
    text = str(value)
    return text.replace(str(PROJECT_DIR), "<project>")


def settings_rows() -> dict[str, tuple[str, str]]:
    """The settings page's table: setting -> (env, default), cells without backticks."""
    page = (PROJECT_DIR / "docs" / "settings.md").read_text()
    rows = {}
    for line in page.splitlines():
        cells = [cell.strip().strip("`") for cell in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0] in Settings.model_fields:
            rows[cells[0]] = (cells[1], cells[2])
    return rows


def test_the_settings_page_is_every_setting_with_its_variable_and_its_default_in_the_code():
    rows = settings_rows()
    assert list(rows) == list(Settings.model_fields), "the page lists every setting once, in the code's order"
    for name, field in Settings.model_fields.items():
        env = "MLFLOW_TRACKING_URI" if name == "tracking_uri" else f"HOUSING_{name.upper()}"
        default = field.get_default(call_default_factory=True)
        assert rows[name] == (env, shown(default)), name


def test_a_changed_default_fails_the_settings_check(monkeypatch):
    """The check above can fail: with a default changed in the code, the page no longer matches."""
    field = Settings.model_fields["monitor_window"]
    monkeypatch.setattr(field, "default", field.default + 1)
    rows = settings_rows()
    assert rows["monitor_window"][1] != shown(field.get_default())


HISTORY = re.compile(
    r"\bissue #?\d+|\b(this|last|earlier|previous|next) sessions?\b|closing note|\bthe seed\b|\bseed's\b"
    r"|\bseed (report|model)s?\b",
    re.IGNORECASE,
)


def test_no_text_speaks_of_how_the_project_was_made():
    files = subprocess.run(["git", "ls-files"], cwd=PROJECT_DIR, capture_output=True, text=True, check=True)
    found = []
    for name in files.stdout.split():
        path = PROJECT_DIR / name
        if (
            path.suffix not in {".py", ".md", ".yaml", ".yml", ".toml", ".cfg", ".txt", ""}
            or not path.is_file()
        ):
            continue
        if path == Path(__file__):
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if HISTORY.search(line):
                found.append(f"{name}:{number}: {line.strip()[:100]}")
    assert not found, "\n".join(found)
