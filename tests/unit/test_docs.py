"""What the README and the package docstrings promise about the layout."""

import importlib
import pkgutil
import subprocess

from tests.conftest import ROOT


def _tracked_top_folders() -> set[str]:
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files"], capture_output=True,
                           text=True, check=True).stdout.split()
    return {f.split("/")[0] for f in files if "/" in f and not f.startswith(".")}


def test_readme_layout_table_lists_every_top_level_folder():
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## What is here"):readme.index("## Make targets")]
    missing = [d for d in sorted(_tracked_top_folders()) if f"`{d}/`" not in table]
    assert not missing, f"README's 'What is here' table lacks {missing}"


def _subpackages(package: str) -> list[str]:
    module = importlib.import_module(package)
    return [m.name for m in pkgutil.iter_modules(module.__path__) if m.ispkg]


def test_services_docstring_names_every_service():
    import services
    for name in _subpackages("services"):
        assert f"``{name}``" in services.__doc__, name


def test_node_docstring_names_every_process_it_runs():
    import node
    for name in _subpackages("node"):
        assert f"``node.{name}``" in node.__doc__, name
    assert "``services.endpoint``" in node.__doc__
