"""The extension layout, the package's import hygiene, the CLI entry point and the Slicer module."""

import ast
import struct
import subprocess
import sys
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]


def test_backend_imports_without_slicer_vtk_qt_or_torch_side_effects():
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('slicer', 'vtk', 'qt', 'vtkmodules', 'ctk'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import SpineSSLLib, SpineSSLLib.cli, SpineSSLLib.levels, SpineSSLLib.io, SpineSSLLib.index\n"
        "import SpineSSLLib.scene  # Qt-free: slicer/vtk only inside its functions\n"
        "assert 'torch' not in sys.modules, 'importing the package must stay light'\n"
        "print(SpineSSLLib.__version__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().count(".") == 2


def test_cli_help_lists_subcommands_and_version():
    exe = Path(sys.executable).parent / "spine-ssl"
    assert exe.exists(), "console script spine-ssl is not installed in the venv"
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "info" in out.stdout
    ver = subprocess.run([str(exe), "--version"], capture_output=True, text=True)
    import SpineSSLLib

    assert ver.stdout.strip() == f"spine-ssl {SpineSSLLib.__version__}"


def test_cli_info_reports_device_json():
    import json

    from SpineSSLLib.cli import main

    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["info", "--json"]) == 0
    info = json.loads(buf.getvalue())
    assert info["device"] in ("cpu", "cuda")
    assert info["torch"].startswith("2.")


def test_cli_without_command_is_usage_error():
    from SpineSSLLib.cli import main

    assert main([]) == 2


def _module_class_names(path: Path) -> dict:
    tree = ast.parse(path.read_text(), filename=str(path))
    return {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}


def test_slicer_module_is_valid_python_with_template_classes():
    path = REPO / "SpineSSL" / "SpineSSL.py"
    logic = REPO / "SpineSSL" / "SpineSSLModuleLib" / "logic.py"  # the Logic class lives in the module's helper package
    compile(path.read_text(), str(path), "exec")
    classes = _module_class_names(path) | _module_class_names(logic)
    for name, base in [("SpineSSL", "ScriptedLoadableModule"), ("SpineSSLWidget", "ScriptedLoadableModuleWidget"),
                       ("SpineSSLLogic", "ScriptedLoadableModuleLogic"), ("SpineSSLTest", "ScriptedLoadableModuleTest")]:
        assert name in classes, f"{name} missing"
        bases = [b.id if isinstance(b, ast.Name) else ast.unparse(b) for b in classes[name].bases]
        assert base in bases
    # the module class sets the metadata Slicer shows
    src = ast.unparse(classes["SpineSSL"])
    for attr in ("title", "categories", "contributors", "helpText", "acknowledgementText"):
        assert f"self.parent.{attr}" in src


def test_module_resources_exist_and_icon_is_128px_png():
    icon = REPO / "SpineSSL" / "Resources" / "Icons" / "SpineSSL.png"
    data = icon.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack(">II", data[16:24])
    assert (w, h) == (128, 128)
    import xml.etree.ElementTree as ET

    ET.parse(REPO / "SpineSSL" / "Resources" / "UI" / "SpineSSL.ui")


def test_extension_cmake_declares_what_the_index_checks():
    top = (REPO / "CMakeLists.txt").read_text()
    assert "project(SpineSSL)" in top
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        assert f"set({key}" in top
    assert 'set(EXTENSION_DEPENDS "PyTorch")' in top
    assert "add_subdirectory(SpineSSL)" in top
    mod = (REPO / "SpineSSL" / "CMakeLists.txt").read_text()
    assert "slicerMacroBuildScriptedModule" in mod and "WITH_GENERIC_TESTS" in mod


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text()
    readme = (REPO / "README.md").read_text()
    assert "make test" in ci and "make test" in readme and "make demo" in readme
    assert (REPO / "LICENSE").read_text().count("Apache License") >= 1
