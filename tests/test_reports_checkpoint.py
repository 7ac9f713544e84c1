"""checkpoint_report: the diff of two checkpoints (exact numbers), and the template executed through a kernel."""

from __future__ import annotations

import re

import pytest
import torch

from tests.fixtures.models import tiny_reference
from tests.fixtures.notebooks import metadata, outputs



@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """a.pt and a.dcp: the same model; b.safetensors: one tensor nudged by 0.25; c.safetensors: depth 2."""
    import enn_nb

    d = tmp_path_factory.mktemp("ckpts")
    model = tiny_reference()
    enn_nb.save(model, d / "a.pt")
    enn_nb.save(model, d / "a.dcp", format="dcp")
    name = next(n for n, p in model.named_parameters() if p.dim() == 2)
    with torch.no_grad():
        dict(model.named_parameters())[name][0, 0] += 0.25
    enn_nb.save(model, d / "b.safetensors", metadata={"note": "nudged"})
    enn_nb.save(tiny_reference(depth=2), d / "c.safetensors")
    return d, name


def test_same_model_in_two_formats_is_identical(checkpoints):
    from enn_nb.surfaces.reports.checkpoints import diff

    d, _ = checkpoints
    result = diff(d / "a.pt", d / "a.dcp")
    assert result.identical and result.changed == [] and result.added == [] and result.removed == []
    assert result.formats == ("pt", "dcp") and result.unchanged > 10
    assert result.headline().startswith("Same model")


def test_one_nudged_tensor_is_the_only_change_with_its_max_abs_diff(checkpoints):
    from enn_nb.surfaces.reports.checkpoints import diff

    d, name = checkpoints
    result = diff(d / "a.pt", d / "b.safetensors")
    assert [c.name for c in result.changed] == [name]
    assert result.changed[0].change == "values"
    assert result.changed[0].max_abs_diff == pytest.approx(0.25, abs=1e-6)
    assert result.config == {} and result.metadata == {"note": (None, "nudged")}
    assert not result.identical


def test_another_depth_adds_tensors_and_changes_the_config(checkpoints):
    from enn_nb.surfaces.reports.checkpoints import diff

    d, _ = checkpoints
    result = diff(d / "a.pt", d / "c.safetensors")
    assert result.config["config.depth"] == (1, 2)
    assert result.added and all(n.startswith("blocks.1.") for n in result.added)
    assert result.removed == []
    text = repr(result)
    assert "Tensors added / removed" in text and "config.depth" in text


@pytest.mark.slow
@pytest.mark.notebook
def test_checkpoint_report_executes_and_shows_the_diff(checkpoints, tmp_path):
    import enn_nb

    d, name = checkpoints
    result = enn_nb.report("checkpoint_report", tmp_path, checkpoint=str(d / "a.pt"), other=str(d / "c.safetensors"),
                           html=True, progress=False, title="Depth 1 vs 2")
    # the verdict box, as the export report has: both restores checked
    assert result.ok and result.verdict.ok and result.verdict.failures == []
    texts = [o.get("data", {}).get("text/plain", "") or o.get("text", "") for _, o in outputs(result.notebook)]
    assert texts[0].startswith("Depth 1 vs 2") and "a.pt vs c.safetensors" in texts[0]
    assert texts[1].startswith("PASS: 2 checkpoints; 2 of 2 restores checked and passed;")
    assert "config change(s)" in texts[2] and "a.pt" in texts[2] and "c.safetensors" in texts[2]
    assert sum(t.startswith(("a.pt (pt)", "c.safetensors (safetensors)")) for t in texts) == 2  # both manifests
    # each checkpoint's tensor table is shown once (the manifests show their fields only)
    assert sum(bool(re.match(r"(a\.pt|c\.safetensors): \d+ tensors, [\d,]+ values", t)) for t in texts) == 2
    assert not any("blocks.0.fc2.weight" in t for t in texts if t.startswith(("a.pt (pt)", "c.safetensors (")))
    assert any("Tensors added / removed" in t and "blocks.1." in t for t in texts)
    page = result.html.read_text(encoding="utf-8")
    assert "Tensors added / removed" in page and "config.depth" in page
    assert metadata(result.notebook)["enn_nb"]["parameters"]["other"] == str(d / "c.safetensors")

    single = enn_nb.report("checkpoint_report", tmp_path, name="single", checkpoint=str(d / "b.safetensors"),
                           progress=False)
    texts = [o.get("data", {}).get("text/plain", "") or o.get("text", "") for _, o in outputs(single.notebook)]
    assert sum(name in t for t in texts) == 1  # the tensor table lists every tensor, once
    assert any("One checkpoint: nothing to compare." in t for t in texts)


@pytest.mark.notebook
def test_missing_checkpoint_is_refused_before_a_kernel_starts(tmp_path):
    import enn_nb
    from enn_nb.errors import ReportInputError

    with pytest.raises(ReportInputError, match="nope.pt` does not exist"):
        enn_nb.report("checkpoint_report", tmp_path / "out", checkpoint=str(tmp_path / "nope.pt"), progress=False)
    assert not (tmp_path / "out").exists()  # no kernel ran, nothing was written


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.notebook
def test_the_checkpoint_report_page_opens_on_a_verdict_box_and_lists_tensors_once(checkpoints, tmp_path,
                                                                                   artifacts_dir):
    import shutil

    import enn_nb
    from tests.fixtures.browser import chromium_page

    d, name = checkpoints
    result = enn_nb.report("checkpoint_report", tmp_path, checkpoint=str(d / "b.safetensors"), html=True,
                           progress=False)
    shutil.copy(result.html, artifacts_dir / "checkpoint_report.html")
    with chromium_page(tmp_path / "chromium-profile", width=1100, height=900) as page:
        page.goto(result.html.resolve().as_uri())
        box = page.locator("[data-verdict='pass']").first
        assert box.bounding_box()["y"] < 300 and "1 of 1 restore checked and passed" in box.inner_text()
        assert page.get_by_text(name, exact=True).count() == 1  # one tensor table
        height = page.evaluate("document.body.scrollHeight")
        page.screenshot(path=str(artifacts_dir / "checkpoint_report.png"), full_page=True)
    assert height < 3000  # the 31-row table once, not twice
