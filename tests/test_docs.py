"""The documentation tells the truth about the shipped suite files and cites nothing outside docs/.

A value quoted from a suite file in prose (a backticked ``key = value`` in the same clause as the
file's name, e.g. "`suites/quick.toml` uses `shift_max_examples = 300`") must be what the shipped
file says; clauses are split at ';' and at sentence ends, code blocks are skipped.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
SUITE_FILE = re.compile(r"\b(\w+)\.toml\b")
QUOTED = re.compile(r"`([A-Za-z_][\w.]*)\s*=\s*([^`]+)`")


def prose(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def values(table: dict, key: str) -> list:
    """Every value stored under ``key`` (a dotted suffix like ``train.epochs`` or a bare key) in the file."""
    found, parts = [], key.split(".")

    def walk(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, [*path, k])
        if path[-len(parts):] == parts:
            found.append(node)

    walk(table, [])
    return found


def quoted_claims():
    shipped = {p.stem: p for p in (ROOT / "suites").glob("*.toml")}
    for doc in DOCS:
        for clause in re.split(r";|\.\s", prose(doc.read_text(encoding="utf-8"))):
            current = None
            for m in re.finditer(rf"{SUITE_FILE.pattern}|{QUOTED.pattern}", clause):
                name = SUITE_FILE.fullmatch(m.group(0))
                if name:
                    current = name.group(1) if name.group(1) in shipped else None
                elif current:
                    key, text = QUOTED.fullmatch(m.group(0)).groups()
                    yield doc.name, current, shipped[current], key, text.strip()


CLAIMS = list(quoted_claims())


def test_the_docs_quote_suite_file_values():
    assert CLAIMS, "the scanner found no quoted suite-file values: the test would check nothing"


@pytest.mark.parametrize("doc, suite, path, key, text", CLAIMS,
                         ids=[f"{c[0]}:{c[1]}:{c[3]}" for c in CLAIMS])
def test_quoted_suite_file_value_matches_the_file(doc, suite, path, key, text):
    expected = tomllib.loads(f"v = {text}")["v"]
    found = values(tomllib.loads(path.read_text(encoding="utf-8")), key)
    assert expected in found, f"{doc} says {suite}.toml has {key} = {text}; the file has {found or 'no such key'}"


def test_docs_cite_nothing_outside_the_repository():
    for doc in DOCS:
        assert "PROTOCOLS" not in doc.read_text(encoding="utf-8"), doc.name


def test_report_footer_names_the_run_not_its_directory(tmp_path):
    from stf_eval.report.html import render_run
    from stf_eval.report.load import load_run
    from stf_eval.report.synthetic import write_synthetic_run

    run_dir = write_synthetic_run(tmp_path / "qpub", seeds=(0,), name="quick")
    name = load_run(run_dir).name
    assert name != "qpub"
    html = Path(render_run(run_dir)).read_text(encoding="utf-8")
    footer = html[html.index("<footer>"):]
    assert f"saved records of run {name} " in footer
    assert "(MB)" not in html
