"""CITATION.cff parses as YAML and has what Citation File Format 1.2.0 requires of it and of each reference."""

from __future__ import annotations

from pathlib import Path

import yaml

CFF = Path(__file__).resolve().parents[1] / "CITATION.cff"
# CFF 1.2.0: the reference types and identifier types used here (a subset of the schema's enums)
REFERENCE_TYPES = {"article", "software", "conference-paper", "report", "dataset"}
IDENTIFIER_TYPES = {"doi", "url", "swh", "other"}


def check_authors(authors, where):
    assert isinstance(authors, list) and authors, where
    for person in authors:  # a person (family-names) or an entity (name)
        assert isinstance(person, dict) and ("family-names" in person or "name" in person), (where, person)
        assert all(isinstance(v, str) and v for v in person.values()), (where, person)


def test_citation_cff():
    cff = yaml.safe_load(CFF.read_text(encoding="utf-8"))
    assert cff["cff-version"] == "1.2.0"
    for key in ("message", "title"):
        assert isinstance(cff[key], str) and cff[key].strip(), key
    check_authors(cff["authors"], "authors")
    assert cff["type"] == "software" and cff["license"] == "Apache-2.0"
    titles = {}
    for ref in cff["references"]:
        assert ref["type"] in REFERENCE_TYPES and isinstance(ref["year"], int), ref["title"]
        check_authors(ref["authors"], ref["title"])
        for ident in ref.get("identifiers", []):
            assert ident["type"] in IDENTIFIER_TYPES and ident["value"], ref["title"]
        titles[ref["title"].split(":")[0]] = ref
    assert {"AlpacaFarm", "Length-Controlled AlpacaEval", "AlpacaEval"} <= set(titles)
    assert titles["AlpacaFarm"]["identifiers"][0]["value"] == "arXiv:2305.14387"
    assert titles["Length-Controlled AlpacaEval"]["identifiers"][0]["value"] == "arXiv:2404.04475"
    # the AlpacaEval release the pipeline reads: the commit scripts/get_alpaca_eval.py checks out
    script = (CFF.parent / "scripts" / "get_alpaca_eval.py").read_text(encoding="utf-8")
    assert f'COMMIT = "{titles["AlpacaEval"]["commit"]}"' in script
