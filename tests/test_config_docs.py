"""docs/config.md's "Several cameras" example is a valid config and means what the text says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from maskd.config import ConfigError, parse_config

DOC = (Path(__file__).resolve().parents[1] / "docs" / "config.md").read_text()


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
