"""The API reference keeps up with the public names: each has a docstring and a block in docs/api.md.

Reads the markdown only (mkdocs itself is checked by ``make docs``), so this runs without the docs extra.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from types import ModuleType

import pytest

import onnxembed
import onnxembed.kernels
import onnxembed.runtime

API_PAGE = Path(__file__).resolve().parents[1] / "docs" / "api.md"
MODULES = (onnxembed, onnxembed.runtime, onnxembed.kernels)
# Plain values: no docstring of their own; the page names them (constants with their values).
CONSTANTS = {"__version__", "DENSE_ACTIVATIONS", "POOLING_MODES", "PRECISIONS", "SIMILARITY_FNS"}

PUBLIC = [(module, name) for module in MODULES for name in module.__all__]


def _page() -> str:
    return API_PAGE.read_text(encoding="utf-8")


def _documented_names() -> set[str]:
    """The last component of every mkdocstrings identifier (``::: onnxembed.kernels.pool`` -> ``pool``)."""
    return {identifier.rsplit(".", 1)[-1] for identifier in re.findall(r"^::: *([\w.]+)", _page(), re.MULTILINE)}


@pytest.mark.parametrize(("module", "name"), PUBLIC, ids=[f"{m.__name__}.{n}" for m, n in PUBLIC])
def test_public_name_has_a_docstring_and_an_api_block(module: ModuleType, name: str) -> None:
    value = getattr(module, name)
    if name in CONSTANTS:
        assert not callable(value), f"{name} is callable: document it with a ::: block instead"
        # the page's table gives the value as Python would print it, with double quotes
        shown = repr(value).replace("'", '"')
        assert name == "__version__" or shown in _page(), f"docs/api.md should give {name} = {shown}"
        assert name in _page(), f"docs/api.md does not name {module.__name__}.{name}"
        return
    assert callable(value), f"{module.__name__}.{name} is a plain value: add it to CONSTANTS and the page's table"
    # a class's own docstring, not one inherited from Exception or object
    doc = value.__dict__.get("__doc__") if inspect.isclass(value) else value.__doc__
    assert doc and doc.strip(), f"{module.__name__}.{name} has no docstring"
    assert name in _documented_names(), f"docs/api.md has no '::: ...{name}' block for {module.__name__}.{name}"


def test_api_page_blocks_name_public_objects() -> None:
    """Every ::: block points at something that exists (mkdocs --strict catches it too, later)."""
    import importlib

    for identifier in re.findall(r"^::: *([\w.]+)", _page(), re.MULTILINE):
        module_name, _, attribute = identifier.rpartition(".")
        module = importlib.import_module(module_name)
        assert hasattr(module, attribute), identifier


def _slug(heading: str) -> str:
    """Python-Markdown's toc slug (what mkdocs gives a heading's id)."""
    text = re.sub(r"[^\w\s-]", "", heading).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def test_docs_links_in_the_code_point_at_headings_that_exist() -> None:
    """Comments keep the why and link the figures (``docs/performance.md#int8-variants``): the page and the
    heading must exist, or the link rots silently when a heading is renamed."""
    root = API_PAGE.parents[1]
    sources = [*root.glob("onnxembed/**/*.py"), *root.glob("bench/*.py"), *root.glob("examples/*.py")]
    seen = 0
    for source in sources:
        for page, anchor in re.findall(r"docs/([\w-]+\.md)(?:#([\w-]+))?", source.read_text(encoding="utf-8")):
            path = root / "docs" / page
            assert path.is_file(), f"{source.relative_to(root)} links {page}, which docs/ does not have"
            if anchor:
                headings = re.findall(r"^#+ +(.+?) *$", path.read_text(encoding="utf-8"), re.MULTILINE)
                assert anchor in {_slug(h) for h in headings}, f"{source.relative_to(root)}: no heading {page}#{anchor}"
            seen += 1
    assert seen, "no docs/ links found in the code; was the pattern changed?"
