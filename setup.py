"""Only what pyproject.toml cannot say: the package list, discovered, plus the suite files' package.

``stf_eval.suite_files`` is mapped to the repository's ``suites/`` folder ([tool.setuptools.package-dir]
in pyproject.toml), so the suite files ship in the wheel while staying where users and CI edit them.
"""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["stf_eval", "stf_eval.*"]), "stf_eval.suite_files"])
