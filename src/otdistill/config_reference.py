"""The config reference (docs/config.md), generated from the typed config itself.

Each key's type and default come from the dataclasses; its meaning from the comment on its
line in config.py (or the comment lines just above it), so the reference cannot drift from
the code: `otdistill config --reference` prints it and a test compares it with docs/config.md.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing

from .config import Config


def _comments(cls) -> dict[str, str]:
    """{field name: its comment} from the class source."""
    lines, _ = inspect.getsourcelines(cls)
    found, above = {}, []
    for line in lines:
        text = line.strip()
        if text.startswith("#"):
            above.append(text.lstrip("# ").strip())
            continue
        m = re.match(r"(\w+)\s*:[^#]*?(?:#\s*(.*))?$", text)
        if m and m.group(1) in {f.name for f in dataclasses.fields(cls)}:
            found[m.group(1)] = " ".join([*above, m.group(2) or ""]).strip()
        above = []
    return found


def _type_name(tp) -> str:
    if dataclasses.is_dataclass(tp):
        return tp.__name__
    return re.sub(r"<class '(\w+)'>|typing\.|otdistill\.config\.", lambda m: m.group(1) or "", str(tp))


def _doc(cls) -> str:
    doc = cls.__dict__.get("__doc__") or ""
    # dataclasses invent a signature docstring for classes that have none
    return "" if doc.startswith(cls.__name__ + "(") else inspect.cleandoc(doc).replace("\n", " ")


def _sections(cls, prefix: str, out: list[str]) -> None:
    hints = typing.get_type_hints(cls)
    comments = _comments(cls)
    defaults = cls()
    nested = []
    out += [f"## `{prefix or 'top level'}`", ""]
    if _doc(cls):
        out += [_doc(cls), ""]
    out += ["| key | type | default | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        key = f"{prefix}.{f.name}" if prefix else f.name
        item = (typing.get_args(tp) or [None])[0] if typing.get_origin(tp) is list else None
        if dataclasses.is_dataclass(tp):
            nested.append((tp, key))
            default, meaning = "see below", comments.get(f.name) or _doc(tp)
        elif dataclasses.is_dataclass(item):
            nested.append((item, f"{key}.N"))
            default = f"{len(getattr(defaults, f.name))} entry"
            meaning = comments.get(f.name) or f"a list; each entry as `{key}.N` below"
        else:
            default, meaning = repr(getattr(defaults, f.name)), comments.get(f.name, "")
        cells = [f"`{key}`", _type_name(tp), f"`{default}`", meaning]
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")  # a | inside a cell
    out.append("")
    for tp, key in nested:
        _sections(tp, key, out)


def reference() -> str:
    out = ["# Config reference", "",
           "Generated from `src/otdistill/config.py` by `otdistill config --reference`; do not edit by hand.",
           "A recipe (YAML) sets any of these keys; `base: other.yaml` inherits another recipe; `per_ipc:",
           "{10: {keys}}` sets keys from that IPC on, over the recipe's own (the last entry not above",
           "sample.ipc applies); on the command line `--set key.path=value` overrides one (list items by",
           "index: `--set teachers.0.epochs=10`).", ""]
    _sections(Config, "", out)
    return "\n".join(out)

