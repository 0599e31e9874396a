"""Which scripts the server knows, per tab: the one table /sdapi/v1/scripts, script-info and
the request checks read.

A1111 lists every loaded script of a tab by lower-cased title (selectable ones such as
"x/y/z plot" and always-on extensions such as "controlnet"); clients detect features by
looking for names here, so an entry appears exactly when the feature works.
"""

from __future__ import annotations

from dataclasses import dataclass

TABS = ("txt2img", "img2img")


@dataclass(frozen=True)
class ScriptEntry:
    """One script as A1111 lists it: lower-cased title, tabs it appears on, kind."""

    name: str
    tabs: tuple[str, ...]
    selectable: bool  # chosen with script_name; False: always-on (alwayson_scripts)


# Filled by the features that implement them; keep the titles exactly as A1111 spells them.
# The always-on extensions first, then the built-in selectable scripts in A1111's listing order,
# then the extensions' selectable ones.
SCRIPTS: tuple[ScriptEntry, ...] = (
    ScriptEntry("controlnet", TABS, selectable=False),  # sd-webui-controlnet's units (alwayson_scripts)
    ScriptEntry("prompts from file or textbox", TABS, selectable=True),
    ScriptEntry("sd upscale", ("img2img",), selectable=True),
    ScriptEntry("x/y/z plot", TABS, selectable=True),
    # sd-webui-controlnet's movie-frames script: listed because webuiapi detects ControlNet by
    # this name; running it is refused (builtin_scripts.runner.UNSUPPORTED_SCRIPTS).
    ScriptEntry("controlnet m2m", TABS, selectable=True),
)


def names(tab: str, selectable: bool | None = None) -> list[str]:
    """Lower-cased titles on `tab`; `selectable` None lists both kinds, as A1111's /scripts does."""
    return [s.name for s in SCRIPTS if tab in s.tabs and (selectable is None or s.selectable == selectable)]


def is_known(name: str, tab: str, selectable: bool) -> bool:
    """Case-insensitive lookup, as A1111 matches script names."""
    return name.lower() in names(tab, selectable)
