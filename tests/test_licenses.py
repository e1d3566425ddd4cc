"""The licence files the README and pyproject promise are in the repository."""

from __future__ import annotations

import re


def test_license_is_apache_2(repo):
    text = (repo / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text  # the whole licence, not a pointer to it
    assert 'license = { text = "Apache-2.0" }' in (repo / "pyproject.toml").read_text(encoding="utf-8")


def test_liblinear_port_carries_its_notice(repo):
    module = (repo / "src" / "afarm" / "metrics" / "l1_logistic.py").read_text(encoding="utf-8")
    docstring = module.split('"""')[1]
    assert "THIRD_PARTY_NOTICES.md" in docstring and "solve_l1r_lr" in docstring
    notices = (repo / "THIRD_PARTY_NOTICES.md").read_text(encoding="utf-8")
    assert re.search(r"^Copyright \(c\) 2007-20\d\d The LIBLINEAR Project\.$", notices, re.M)
    # the BSD-3-Clause conditions and disclaimer travel with the notice
    for clause in ("Redistributions of source code must retain the above copyright",
                   "Neither name of copyright holders nor the names of its contributors",
                   "THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS"):
        assert clause in notices, clause
