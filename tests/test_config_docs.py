"""docs/config.md: the "Several cameras" example is a valid config and means what the text says;
the "Every key" table is the code's keys, defaults and bounds. Every doc's links lead somewhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from doc_links import broken_links, missing_tests

from maskd.config import ConfigError, parse_config

REPO = Path(__file__).resolve().parents[1]
DOC = (REPO / "docs" / "config.md").read_text()


def test_every_relative_link_and_anchor_of_the_docs_leads_somewhere():
    """A link to a heading that was renamed went nowhere (config.md's `performance.md#overload`,
    the heading being 'Overload: a crowd, a big frame, one classifier thread')."""
    files = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")),
             *sorted(REPO.glob("*/README.md")), REPO / "models" / "MODEL_CARD.md"]
    assert len(files) > 10 and broken_links(files) == []


def test_every_test_the_docs_name_as_proof_is_where_they_say():
    """docs/reliability.md named a Coral test in test_systemd_unit.py that lives in
    test_run_cli.py: a claim whose proof cannot be found is no better than one without."""
    files = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")),
             REPO / "models" / "MODEL_CARD.md"]
    assert missing_tests(files, REPO / "tests") == []


def test_several_cameras_example():
    section = re.search(r"## Several cameras\n(.*?)\n## ", DOC, re.S).group(1)
    example = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    cfg = parse_config(yaml.safe_load(example), "docs/config.md")
    front, back = cfg.cameras_resolved()
    assert (front.camera, back.camera) == ("front", "back")
    assert front.preview.http != back.preview.http
    assert back.tracking.end_after_s == 5 and front.tracking == cfg.tracking
    # the top-level preview belongs to the first camera, unless it has its own
    data = {"preview": {"http": "127.0.0.1:9000"},
            "cameras": {"a": {"source": {"kind": "demo"}}, "b": {"source": {"kind": "demo"}}}}
    a, b = parse_config(data, "x").cameras_resolved()
    assert a.preview.http == "127.0.0.1:9000" and b.preview.http is None
    # camera / source with cameras: the words the doc quotes
    quoted = re.search(r"\(exit 78: `(.*?)`\)", " ".join(section.split())).group(1)
    with pytest.raises(ConfigError) as err:
        parse_config({"camera": "door", "source": {"kind": "demo"}, **data}, "x")
    assert quoted in str(err.value)


def _doc_default(model_default: object) -> object:
    """A model default as the table's YAML cell reads back."""
    return str(model_default) if isinstance(model_default, Path) else model_default


def _bounds(metadata: list) -> list[str]:
    from annotated_types import Ge, Gt, Le, Lt

    def num(x: float) -> str:
        return str(int(x)) if float(x).is_integer() else str(x)

    signs = {Ge: (">=", "ge"), Gt: (">", "gt"), Le: ("<=", "le"), Lt: ("<", "lt")}
    return [f"{signs[type(m)][0]} {num(getattr(m, signs[type(m)][1]))}"
            for m in metadata if type(m) in signs]


def test_every_key_table_matches_the_code():
    """docs/config.md's "Every key" table: each key of Config once, with the code's default and
    numeric bounds, and no key the code does not have."""
    from typing import Annotated, Union, get_args, get_origin

    from pydantic import BaseModel

    from maskd.config import Config, ScheduleWindow

    section = re.search(r"## Every key\n(.*?)\n## ", DOC, re.S).group(1)
    rows = {m.group(1): (m.group(2), m.group(3)) for m in re.finditer(
        r"^\| `([^`]+)` \| [^|]+ \| `([^`]*)` \| ([^|]*) \|$", section, re.M)}

    expected = {}

    def walk(model: type[BaseModel], prefix: str = "") -> None:
        for name, field in model.model_fields.items():
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, f"{prefix}{name}.")
                continue
            meta = list(field.metadata)
            if get_origin(ann) is Union or type(ann).__name__ == "UnionType":
                for arg in get_args(ann):
                    if get_origin(arg) is Annotated:
                        meta += [m for x in get_args(arg)[1:] for m in getattr(x, "metadata", [x])]
            expected[f"{prefix}{name}"] = (field, meta)

    walk(Config)
    walk(ScheduleWindow, "schedule[].")
    assert sorted(rows) == sorted(expected)
    for key, (field, meta) in expected.items():
        default, allowed = rows[key]
        if key != "device_id":  # the host name, said in the row
            assert yaml.safe_load(default) == _doc_default(
                field.get_default(call_default_factory=True)), key
        for bound in _bounds(meta):
            assert bound in allowed, f"{key}: {bound} missing from {allowed!r}"
        assert not (set(re.findall(r"[<>]=? [\d.]+", allowed)) - set(_bounds(meta))), key


# what others say in install-pi.md's troubleshooting table: systemd's, the kernel's, the C
# library's and the broker's words, which maskd only passes on
NOT_MASKDS = ("failed (Result: exit-code)", "Watchdog timeout", "Read-only file system",
              "status=226/NAMESPACE", "Permission denied", "numpy.dtype size changed",
              "Not authorized", "Name or service not known", "Unauthorized", "Not Found")
COMMANDS = ("systemctl ", "journalctl ", "sudo ", "maskd ", "getent ", "v4l2-ctl ", "id ")
# the table's examples of what varies: a camera's name, a user's, what a camera's page is
EXAMPLES = ("door", "pi", "an HTML page")


def maskd_words(quote: str) -> list[str]:
    """The runs of two words or more of a quoted log line that maskd writes as they are: the
    line cut at what varies (``...``, ``<camera>``, ``N``, ``NAME``, a path, a number, a quoted
    name) and at the words of others (NOT_MASKDS)."""
    for other in NOT_MASKDS:
        quote = quote.replace(other, "...")
    quote = re.sub(rf"\b(?:{'|'.join(EXAMPLES)})\b", "...", quote)
    pieces = re.split(r"\.\.\.|<[^>]+>|\b(?:N|M|NAME|[A-Z]{2,})\b|\S*[/\d'\"]\S*|[()|]", quote)
    return [p for p in (p.strip(" .,;:") for p in pieces) if len(p.split()) >= 2]


def test_install_pis_troubleshooting_table_quotes_what_maskd_says():
    """A reader of docs/install-pi.md's "When something is wrong" greps the journal for the
    table's words: each run of maskd's own words it quotes is one maskd's code writes, so a
    message reworded in the code (as many were) cannot leave the table quoting its old words."""
    code = "\n".join(p.read_text() for p in sorted((REPO / "maskd").rglob("*.py")))
    code = re.sub(r"([\"'])\s*\n\s*(?:f|rf|fr)?\1", "", code)  # "a " "b": one string
    table = (REPO / "docs" / "install-pi.md").read_text().split("## When something is wrong")[1]
    symptoms = [row.split(" | ")[0] for row in table.splitlines() if row.startswith("| ")][2:]
    quotes = [q for s in symptoms for q in re.findall(r"`([^`]+)`", s)
              if " " in q and not q.startswith(COMMANDS) and q not in NOT_MASKDS
              and not re.match(r"[a-z_.]+: [a-z]+$", q)]  # a config key's value
    assert len(quotes) > 20
    unsaid = {q: words for q in quotes if (words := [w for w in maskd_words(q) if w not in code])}
    assert unsaid == {}
