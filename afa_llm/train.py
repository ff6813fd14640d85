"""Deprecated shim: ``python -m afa_llm.train RECIPE.yaml`` runs ``afa-llm train RECIPE.yaml`` with a one-line notice,
until the next release; use ``afa-llm train`` or, for launchers that run a module, ``python -m afa_llm train``.

``afa_llm.train`` is the Python API's function (`afa_llm.api.train`), never this file: imported as a module,
this file puts that function in its place (``import afa_llm.train`` then finds the function too)."""

import sys

if __name__ == "__main__":
    from afa_llm.cli import main
    from afa_llm.deprecations import notice

    notice("python -m afa_llm.train", "afa-llm train (or python -m afa_llm train)")
    sys.exit(main(["train", *sys.argv[1:]]))
else:
    from afa_llm.api import train

    sys.modules[__name__] = train  # type: ignore[assignment]  # the package's attribute becomes the function
