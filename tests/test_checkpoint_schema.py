"""The manifest schema: jsonschema and the fast row check agree, migrations, the shipped file."""

from __future__ import annotations

import copy
import random

import jsonschema
import pytest

import enn_nb
from enn_nb.checkpoint.schema import schema, validate
from enn_nb.errors import CorruptCheckpointError, SpecError

from tests.fixtures.models import tiny


BAD_VALUES = [None, "", "x", -1, 1.5, 2.0, -3.0, True, [], [1, -2], ["a"], {}, "A" * 64, "0" * 63, "0" * 64, 3, [2, 3]]


@pytest.fixture(scope="module")
def document(tmp_path_factory) -> dict:
    import torch

    model = tiny()
    opt = torch.optim.Adam(model.parameters())
    model.forward_export(torch.randn(2, 6)).sum().backward()
    opt.step()
    path = tmp_path_factory.mktemp("schema") / "m_dcp"
    return enn_nb.save(model, path, optimizer=opt).to_dict()


def _jsonschema_ok(doc: dict) -> bool:
    return jsonschema.Draft202012Validator(schema()).is_valid(doc)


def _ours_ok(doc: dict) -> bool:
    try:
        validate(doc)
    except CorruptCheckpointError:
        return False
    return True


def test_written_manifests_validate(document):
    assert _jsonschema_ok(document) and _ours_ok(document)
    assert len(document["tensors"]) == 5 and len(document["files"]) >= 2 and len(document["optimizer"]["tensors"]) == 12


@pytest.mark.parametrize("array", [("tensors",), ("files",), ("optimizer", "tensors")])
def test_fast_row_check_agrees_with_jsonschema(document, array):
    """Damage a row beyond the first (checked by the fast path) in many ways; both must agree."""
    rng = random.Random(0)
    rows_of = lambda d: d[array[0]] if len(array) == 1 else d[array[0]][array[1]]  # noqa: E731
    keys = list(rows_of(document)[1])
    for trial in range(300):
        doc = copy.deepcopy(document)
        row = rows_of(doc)[1 + trial % (len(rows_of(doc)) - 1)]
        action = rng.choice(["set", "drop", "add"])
        if action == "set":
            row[rng.choice(keys)] = rng.choice(BAD_VALUES)
        elif action == "drop":
            row.pop(rng.choice(keys))
        else:
            row["unexpected"] = 1
        assert _ours_ok(doc) == _jsonschema_ok(doc), (action, row)


def test_errors_list_every_problem(document):
    doc = copy.deepcopy(document)
    doc["tensors"][0]["nbytes"] = -1
    doc["tensors"][3]["hash"] = "XYZ"
    doc["files"][1]["path"] = ""
    with pytest.raises(CorruptCheckpointError) as info:
        validate(doc)
    text = str(info.value)
    assert "`tensors/0/nbytes`" in text and "`tensors/3/hash`" in text and "`files/1/path`" in text
    with pytest.raises(SpecError):
        validate(doc, error=SpecError)


def test_the_format_names_are_listed_once_and_match_the_schema():
    import json

    from enn_nb.checkpoint import FORMATS
    from enn_nb.checkpoint.schema import SCHEMA_FILE

    schema = json.loads(SCHEMA_FILE.read_text())
    assert tuple(schema["properties"]["format"]["enum"]) == FORMATS
