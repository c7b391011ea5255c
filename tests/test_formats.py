"""Every classifier.json format ever written still loads; the current one names its optional
sections, so a reader that lacks one refuses the file by that name.

``tests/formats/`` holds a spec of each earlier format as its writer made it (/1 by hand, as
the first version wrote it; /2, /3 and /4 by the writer of commit 773db82).
"""

import json
from pathlib import Path

import pytest

from sentiment_lora.errors import UserError
from sentiment_lora.spec import FORMAT, ClassifierSpec

FORMATS = Path(__file__).parent / "formats"
OLD = sorted(FORMATS.glob("classifier-*.json"))


def test_there_is_a_spec_of_every_earlier_format():
    found = {json.loads(p.read_text())["format"] for p in OLD}
    assert found == {f"sentiment-lora-classifier/{n}" for n in (1, 2, 3, 4)}


@pytest.mark.parametrize("path", OLD, ids=[p.stem for p in OLD])
def test_an_earlier_format_loads_and_is_rewritten_in_the_current_one(path):
    old = json.loads(path.read_text())
    spec = ClassifierSpec.from_dict(old, where=path.name)
    assert (spec.stack is not None) == ("stack" in old) and (spec.head is not None) == ("head" in old)
    new = spec.to_dict()
    assert new["format"] == FORMAT and new["sections"] == [s for s in ("head", "stack") if s in old]
    assert ClassifierSpec.from_dict(json.loads(json.dumps(new))) == spec


def _current(name: str) -> dict:
    d = ClassifierSpec.from_dict(json.loads((FORMATS / name).read_text())).to_dict()
    d.pop("checksum")
    return d


def test_a_section_this_version_does_not_read_is_refused_by_name():
    d = _current("classifier-4-headed-stacked.json")
    d["sections"] = [*d["sections"], "calibrator"]
    with pytest.raises(UserError, match="uses the section 'calibrator'.*upgrade sentiment-lora"):
        ClassifierSpec.from_dict(d)


@pytest.mark.parametrize("section", ["head", "stack"])
def test_an_undeclared_or_missing_section_is_refused(section):
    d = _current("classifier-4-headed-stacked.json")
    hidden = {**d, "sections": [s for s in d["sections"] if s != section]}
    with pytest.raises(UserError, match=f"field '{section}' is not named in 'sections'"):
        ClassifierSpec.from_dict(hidden)
    missing = {k: v for k, v in d.items() if k != section}
    with pytest.raises(UserError, match=f"but no {section}"):
        ClassifierSpec.from_dict(missing)
