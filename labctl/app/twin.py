"""Twin use cases that are not plain up/down: the process list and the end-to-end demo."""

from __future__ import annotations

from typing import Any

from labctl.core.state import state_home


def list_processes(playbook: str | None = None) -> list[dict[str, Any]]:
    """Supervised processes of one lab (``playbook``) or of every lab in the state home."""
    from labctl.netns import supervisor

    if playbook:
        from labctl.core.playbook import load_playbook
        from labctl.core.state import lab_state_dir

        labs = [(load_playbook(playbook).model.lab, lab_state_dir(
            load_playbook(playbook).model.lab, create=False))]
    else:
        base = state_home() / "labs"
        labs = [(p.name, p) for p in sorted(base.iterdir())] if base.is_dir() else []
    rows: list[dict[str, Any]] = []
    for lab, d in labs:
        for info in supervisor.read_all(d).values():
            rows.append({"lab": lab, **info.to_dict()})
    return rows
