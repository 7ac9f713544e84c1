"""No quiet downgrades: a dim declared dynamic that the model fixes, a loaded model's signature, a script's
silence, and two different parameter counts."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import textwrap

import pytest
import torch

import enn_nb
from enn_nb.errors import StaticDimError


class Flat(torch.nn.Module):
    """Flattens time into features: torch.export must specialise ``time`` to the capture size (8)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Linear(8 * 5, 1)

    def forward(self, x):
        return self.head(x.flatten(1))


def test_a_declared_dynamic_dim_the_model_fixes_is_named_everywhere_and_strict_fails(tmp_path):
    from enn_nb.surfaces.notebook.wizard_state import result_rows
    from enn_nb.surfaces.notebook.wizard_view import results_table_html

    spec = enn_nb.ModelSpec(inputs=["x:float32[B, T, 5]"])
    report = enn_nb.export(Flat(), ["pt2"], out_dir=tmp_path / "e", spec=spec, example_inputs=torch.randn(2, 8, 5),
                           isolate=False, quiet=True)
    result = report["pt2"]
    assert result.ok and result.verified
    assert list(result.static_dims) == ["time"]  # `batch` stayed dynamic and is not named
    why = result.static_dims["time"]
    assert why.startswith("torch.export: ") and "constant (8)" in why
    for text in (report.summary, str(report), result.summary(), result.note):  # exit line, table, result line
        assert "`time` static although declared dynamic" in text, text
    assert "`batch`" not in report.summary
    rows = result_rows(report)
    assert "`time` static" in rows[0]["message"] and "`time` static" in results_table_html(rows)  # the wizard
    sidecar = json.loads(result.sidecar.read_text())
    assert sidecar["static_dims"] == {"time": why} and "batch" in sidecar["dynamic_dims"]
    assert not any("`batch`" in note for note in sidecar["notes"])

    with pytest.raises(StaticDimError) as info:
        enn_nb.export(Flat(), ["pt2"], out_dir=tmp_path / "strict", spec=spec, example_inputs=torch.randn(2, 8, 5),
                      isolate=False, strict=True, quiet=True)
    assert info.value.dims == {"time": why} and "`time` static" in str(info.value)


def test_a_loaded_model_carries_its_checkpoint_signature_into_export(tmp_path):
    spec = enn_nb.ModelSpec(inputs=["x:float32[B, 8, 5]"])
    enn_nb.save(Flat(), tmp_path / "flat.safetensors", spec=spec, quiet=True)
    loaded = enn_nb.load(tmp_path / "flat.safetensors", model=Flat())
    report = enn_nb.export(loaded.model, ["pt2"], out_dir=tmp_path / "e", isolate=False, quiet=True)
    assert report["pt2"].verified
    assert report["pt2"].inputs[0]["shape"] == ["batch", 8, 5]


SCRIPT = textwrap.dedent("""
    import torch, enn_nb
    m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    spec = enn_nb.ModelSpec(inputs=["x:float32[B, 3]"])
    enn_nb.save(m, "m.safetensors", spec=spec)
    enn_nb.export(m, ["pt2"], out_dir="exports", spec=spec, isolate=False)
    enn_nb.save(m, "quiet.safetensors", spec=spec, quiet=True)
    enn_nb.export(m, ["pt2"], out_dir="quiet_exports", spec=spec, isolate=False, quiet=True)
    print("the script's own output")
""")


def _run_on_a_terminal(tmp_path) -> tuple[str, str]:
    """Run SCRIPT with stderr on a pseudo-terminal (as in a shell) and stdout piped: ``(stdout, terminal)``."""
    (tmp_path / "script.py").write_text(SCRIPT)
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "script.py"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    out, _ = proc.communicate(timeout=300)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    assert proc.returncode == 0, seen.decode()
    return out.decode(), seen.decode().replace("\r\n", "\n")


@pytest.mark.slow
def test_save_and_export_print_one_line_each_on_a_terminal_unless_quiet(tmp_path):
    out, terminal = _run_on_a_terminal(tmp_path)
    assert out == "the script's own output\n"  # stdout stays the script's
    lines = [line for line in terminal.splitlines() if line.startswith("enn_nb.")]
    assert len(lines) == 2, terminal
    assert lines[0].startswith("enn_nb.save: wrote m.safetensors (safetensors, 24 parameters (33 values with buffers)")
    assert lines[1].startswith("enn_nb.export: 1 verified -> ") and lines[1].endswith("exports")
    assert "quiet" not in terminal


def test_the_wizard_and_enn_save_show_one_labelled_count(ip, tmp_path):
    from enn_nb.surfaces.notebook.wizard_view import module_summary_html
    from tests.fixtures.magics import run_cell

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    label = "24 parameters (33 values with buffers)"  # 3*4+4 + 4+4 ; running mean, var and count: 9 more
    assert f"<td>{label}</td>" in module_summary_html(model)
    ip.user_ns["net"] = model
    saved = run_cell(ip, f"%enn_save net {tmp_path / 'net.safetensors'}")
    assert label in repr(saved)
