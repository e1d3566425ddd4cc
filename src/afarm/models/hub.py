"""Model references in params: a local folder, a hub id, or a hub id pinned to a revision.

``Qwen/Qwen2.5-0.5B@060db64...`` names hub repository ``Qwen/Qwen2.5-0.5B`` at commit
``060db64...`` (the ``@revision`` form of ``huggingface_hub``'s file-system paths). A name that
is an existing local folder is always that folder, even if it contains ``@``. Standard library
only: the memory plan reads references before torch is imported.
"""

from __future__ import annotations

from pathlib import Path


def split_revision(name: str) -> tuple[str, str | None]:
    """(folder or hub id, revision or None) of a model reference."""
    if Path(name).exists() or "@" not in name:
        return name, None
    repo, revision = name.rsplit("@", 1)
    if not repo or not revision:
        raise ValueError(f"model reference {name!r}: expected a hub id, a local folder, or <hub id>@<revision>")
    return repo, revision


def pretrained_kwargs(name: str) -> tuple[str, dict[str, str]]:
    """(what to pass to ``from_pretrained``, the ``revision`` keyword when the reference pins one)."""
    repo, revision = split_revision(name)
    return repo, ({"revision": revision} if revision else {})
