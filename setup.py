"""Maps the repo folders runtime/ and tools/ into the agentkit namespace.

Static pyproject config cannot express "package agentkit.runtime lives in ./runtime" together with
auto-discovered subpackages, so the package list is computed here; everything else is in pyproject.toml.
"""

from setuptools import find_packages, setup

ROOTS = {"agentkit": "agentkit", "agentkit.runtime": "runtime", "agentkit.tools": "tools"}


def _packages() -> list[str]:
    out: list[str] = []
    for name, folder in ROOTS.items():
        out.append(name)
        out.extend(f"{name}.{sub}" for sub in find_packages(folder))
    return out


setup(packages=_packages(), package_dir=ROOTS)
