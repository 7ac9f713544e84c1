"""The I/O signature: parsing, checking, inference, drawing, dynamic_shapes, and the manifest round trip."""

from __future__ import annotations

import json

import pytest
import torch

import enn_nb
from enn_nb.model import signature as sig
from enn_nb.errors import InputMismatchError, SpecError
from enn_nb.reference import zoo
from enn_nb.model.spec import ModelSpec


# -- parsing ----------------------------------------------------------------------------------------------
def test_parse_text_forms() -> None:
    values = sig.parse("values:float32[B, T, 6]")
    assert values == sig.TensorSig("values", "float32", ("batch", "time", 6))
    ids = sig.parse("ids: long[batch, 16]{1000}")
    assert (ids.dtype, ids.shape, ids.categories) == ("int64", ("batch", 16), 1000)
    bounded = sig.parse("x:float[B, time(2..512)]")
    assert bounded.shape[1] == sig.Dim("time", 2, 512)
    assert bounded.text() == "x: float32[batch, time(2..512)]"
    assert sig.TensorSig.from_dict(bounded.to_dict()) == bounded


@pytest.mark.parametrize("text", ["values", "values:float32", "values:complex64[B, 3]", "v:float32[B, -1]"])
def test_parse_rejects_with_the_form(text: str) -> None:
    with pytest.raises(SpecError) as err:
        sig.parse(text)
    assert "name:dtype[dims]" in str(err.value) or "dtype" in str(err.value) or "Dimension" in str(err.value)


def test_parse_many_accepts_maps_lists_and_one_shape() -> None:
    sigs = sig.parse_many({"values": ["B", 24, 6], "mask": "bool[B, 24]", "ids": {"dtype": "int64", "shape": ["B"]}})
    assert [(s.name, s.dtype, s.shape) for s in sigs] == [
        ("values", "float32", ("batch", 24, 6)), ("mask", "bool", ("batch", 24)), ("ids", "int64", ("batch",)),
    ]
    (one,) = sig.parse_many(["B", 12, 5])
    assert (one.name, one.shape) == ("features", ("batch", 12, 5))


# -- checking -----------------------------------------------------------------------------------------------
def test_check_inputs_names_input_expected_and_received() -> None:
    sigs = sig.parse_many(["ids:int64[B, 16]", "mask:bool[B, 16]"])
    ids, mask = torch.zeros(3, 16, dtype=torch.long), torch.ones(3, 16, dtype=torch.bool)
    assert sig.check_inputs(sigs, (ids, mask)) == {"batch": 3}
    with pytest.raises(InputMismatchError) as err:
        sig.check_inputs(sigs, (ids, mask.float()))
    text = str(err.value)
    assert "`mask` has dtype float32, expected bool" in text
    assert "Expected (ids: int64[batch, 16], mask: bool[batch, 16])" in text
    assert "received (ids: int64[3, 16], mask: float32[3, 16])" in text
    with pytest.raises(InputMismatchError, match=r"`mask` dim 0 \(`batch`\) is 2, but `batch` is 3 elsewhere"):
        sig.check_inputs(sigs, (ids, mask[:2]))
    with pytest.raises(InputMismatchError, match="1 input\\(s\\) given, the model takes 2"):
        sig.check_inputs(sigs, (ids,))


# -- inference ----------------------------------------------------------------------------------------------
def test_from_model_infers_names_categories_and_dict_outputs() -> None:
    spec = ModelSpec.from_model(zoo.ids_mask(), zoo.example_inputs("ids_mask"))
    assert [s.text() for s in spec.inputs] == [f"ids: int64[batch, 16]{{{int(zoo.example_inputs('ids_mask')[0].max()) + 1}}}",
                                              "mask: bool[batch, 16]"]
    head = ModelSpec.from_model(zoo.gaussian_head(), zoo.example_inputs("gaussian_head"))
    assert [s.name for s in head.outputs] == ["mean", "scale"] and head.output_structure == "dict"
    args = ModelSpec.from_model(zoo.ids_mask_args(), zoo.example_inputs("ids_mask_args"))
    assert [s.name for s in args.inputs] == ["args_0", "args_1"]
    # hour and weekday codes in one tensor: drawn codes must fit the smaller column (7 weekdays)
    calendar = ModelSpec.from_model(zoo.calendar_forecaster(), zoo.example_inputs("calendar_forecaster", batch=16))
    assert calendar.inputs[1].categories == 7


def test_declared_signature_wins_over_inference() -> None:
    model = zoo.gru_forecaster()
    model.input_signature = ["values:float32[B, T, 5]"]
    spec = ModelSpec.from_model(model, zoo.example_inputs("gru_forecaster"))
    assert spec.inputs == [sig.TensorSig("values", "float32", ("batch", "time", 5))]
    assert spec.outputs[0].shape == ("batch", 5)  # still inferred from one call


def test_draw_gives_valid_codes_masks_and_sizes() -> None:
    sigs = sig.parse_many(["v:float32[B, T, 3]", "ids:int64[B, T]{7}", "m:bool[B, T]"])
    v, ids, m = sig.draw(sigs, batch=5, seed=1, sizes={"time": 11})
    assert v.shape == (5, 11, 3) and ids.shape == (5, 11) and m.dtype == torch.bool
    assert int(ids.min()) >= 0 and int(ids.max()) < 7
    again = sig.draw(sigs, batch=5, seed=1, sizes={"time": 11})
    assert torch.equal(again[1], ids)


def test_dynamic_shapes_follow_the_forward_signature() -> None:
    sigs = sig.parse_many(["a:int64[B, T]", "b:bool[B, T]"])
    inputs = sig.draw(sigs)
    positional = sig.dynamic_shapes(zoo.ids_mask().forward, sigs, inputs, dynamic=["batch", "time"])
    assert list(positional) == ["ids", "mask"] and set(positional["ids"]) == {0, 1}
    assert positional["ids"][0] is positional["mask"][0]  # one Dim shared by every input using `batch`
    star = sig.dynamic_shapes(zoo.ids_mask_args().forward, sigs, inputs, dynamic=["batch"])
    assert list(star) == ["args"] and isinstance(star["args"], tuple) and len(star["args"]) == 2
    program = torch.export.export(zoo.ids_mask_args(), inputs, dynamic_shapes=star)
    assert program.module()(*sig.draw(sigs, batch=7)).shape == (7, 3)


# -- the spec and the manifest -------------------------------------------------------------------------------
def test_signature_round_trips_through_the_checkpoint(tmp_path) -> None:
    model = zoo.calendar_forecaster()
    spec = ModelSpec.from_model(model, zoo.example_inputs("calendar_forecaster"))
    path = tmp_path / "calendar.safetensors"
    enn_nb.save(model, path, spec=spec)
    manifest = enn_nb.inspect(path)
    assert manifest.spec.inputs == spec.inputs and manifest.spec.outputs == spec.outputs
    raw = manifest.to_dict()["spec"]
    assert raw["inputs"][1]["name"] == "calendar" and raw["output_structure"] == "tensor"
    loaded = enn_nb.load(path, model=zoo.CalendarForecaster())
    assert loaded.spec.inputs == spec.inputs


def test_specs_without_a_signature_keep_their_json_and_hash(tmp_path) -> None:
    spec = ModelSpec(in_dim=4, out_shape=(2,))
    assert not {"inputs", "outputs", "output_structure"} & set(spec.to_dict())
    net = torch.nn.Linear(4, 2)
    path = tmp_path / "old.safetensors"
    enn_nb.save(net, path, spec=spec)
    document = enn_nb.inspect(path).to_dict()
    assert "inputs" not in document["spec"]
    # an older manifest (no signature keys at all) still validates and loads
    from enn_nb.checkpoint import Manifest

    again = Manifest.from_dict(json.loads(json.dumps(document)))
    assert again.spec.inputs is None and again.content_hash == enn_nb.inspect(path).content_hash
    assert again.spec.input_signature() == [sig.TensorSig("features", "float32", ("batch", 4))]


def test_in_dim_shorthand_accepts_sequences_with_features_last() -> None:
    from enn_nb.engine.inputs import example_tensors

    spec = ModelSpec(in_dim=5)
    x = torch.randn(4, 12, 5)
    assert example_tensors(zoo.gru_forecaster(), spec, x, True)[0].shape == (4, 12, 5)
    with pytest.raises(InputMismatchError, match="last axis should hold 5 features"):
        example_tensors(zoo.gru_forecaster(), spec, torch.randn(4, 12, 6), True)


def test_a_model_rejecting_drawn_inputs_gets_a_signature_message_not_a_traceback(tmp_path) -> None:
    # upstream's in_dim=F on a GRU: inputs drawn as [B, F] do not fit a [B, T, F] model
    with pytest.raises(InputMismatchError) as err:
        enn_nb.export(zoo.gru_forecaster(), "pt2", out_dir=tmp_path, spec=ModelSpec(in_dim=5), isolate=False)
    text = str(err.value)
    assert "`GRUForecaster` rejected its example inputs" in text
    assert "Expected signature (features: float32[batch, 5])" in text and "received (features: float32[2, 5])" in text
    assert "ModelSpec(inputs=[...])" in text


def test_no_signature_message_names_every_surface(tmp_path) -> None:
    with pytest.raises(SpecError) as err:
        enn_nb.export(zoo.ids_mask(), "pt2", out_dir=tmp_path, isolate=False)
    text = str(err.value)
    assert "ModelSpec(inputs=" in text and "%%enn_export" in text and "--input" in text


def test_report_signature_table_shows_the_declared_signature() -> None:
    from enn_nb.surfaces.reports.model_info import signature_table

    spec = ModelSpec(inputs=["values:float32[B, T, 6]", "ids:int64[B, T]{7}"], outputs=["mean:float32[B, 2]",
                     "scale:float32[B, 2]"], output_structure="dict")
    rows = signature_table(spec).rows
    assert rows[0][:4] == ["input", "values", "[batch, time, 6]", "float32"]
    assert rows[1][1:] == ["ids", "[batch, time]", "int64", "integer codes in [0, 7)"]
    assert [r[1] for r in rows[2:]] == ["mean", "scale"] and rows[2][4] == "key of the returned dict"
    # the ENN shorthand keeps its rows
    assert signature_table(ModelSpec(in_dim=4, out_shape=(2,))).rows[0][:3] == ["input", "x", "[batch, 4]"]


@pytest.mark.parametrize("name", ["ids_mask", "gaussian_head"])
def test_checkpoints_of_signature_models_record_and_pass_the_restore_self_check(tmp_path, name):
    # Several integer/bool inputs and dict outputs get recorded vectors too, drawn from the signature.
    from enn_nb.reference import zoo

    model = getattr(zoo, name)()
    spec = enn_nb.ModelSpec.from_model(model, zoo.example_inputs(name))
    for target in (tmp_path / "m.pt", tmp_path / "m.safetensors", tmp_path / "m_dcp"):
        manifest = enn_nb.save(model, target, spec=spec)
        assert manifest.self_check is not None
        assert enn_nb.load(target, model=getattr(zoo, name)()).restore_check == "passed"


def test_drawing_is_capped_whichever_surface_asks():
    huge = [sig.parse("x:float32[B, 1000000000]"), sig.parse("t:float32[B, time(1000000000..)]")]
    for s in huge:  # the engine, the wizard, latency and the save-time self-check all draw through here
        with pytest.raises(SpecError, match=f"example_inputs.{s.name}.*more than the"):
            sig.draw([s])
    assert sig.draw([sig.parse("e:float32[B, 0]")])[0].shape == (2, 0)  # an empty dimension draws nothing
