"""The user's engine choices kept in the application's settings, so a new scene starts from them.

The module's parameter node is saved with the scene, so before this every new scene (and File →
Close Scene) reset the model, device, precision and server URL to their defaults. Here the
choices are also written to the application's settings (``slicer.app.userSettings()``, a
``QSettings``; keys ``PolypSAM/<field>``) whenever they change, and a new scene's parameter node
starts from them (once: the node is then marked, and a saved scene keeps its own choices). The
server token is never written anywhere.

No Qt is imported: ``settings`` is anything with ``contains(key)``, ``value(key)`` and
``setValue(key, value)`` (``QSettings`` in Slicer and in the tests; by default Slicer's
``slicer.app.userSettings()``, none where there is no ``slicer.app``, as in slicer-core). Values
are stored as text (an INI file gives text back) and converted to each field's type when read.
:func:`engine_settings` turns the same fields into the engine's :class:`EngineSettings`.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from ..engines import EngineSettings

PREFIX = "PolypSAM/"
#: The parameter-node fields kept in the application settings (never the server token).
REMEMBERED = ("engine", "model", "customCheckpoint", "device", "precision", "imageSize",
              "serverUrl")
#: Set on a parameter node once it started from the settings (saved with the scene).
FROM_SETTINGS = "PolypSAM.engineChoicesFromSettings"

Parameters = TypeVar("Parameters")


def engine_settings(parameters: Any, token: str = "") -> EngineSettings:
    """The engine the module's parameter node describes; the server ``token`` is given by the
    caller (it is never stored in the scene or the settings)."""
    p = parameters
    return EngineSettings(
        kind=p.engine, model=p.model, checkpoint=p.customCheckpoint.strip(), device=p.device,
        image_size=int(p.imageSize), precision=p.precision, server_url=p.serverUrl.strip(),
        token=token.strip())


def application_settings() -> Any:
    """Slicer's user settings (``slicer.app.userSettings()``); ``None`` without an application."""
    import slicer

    app = getattr(slicer, "app", None)
    return app.userSettings() if app is not None and hasattr(app, "userSettings") else None


def remember_engine_choices(parameters: Any, settings: Any = None) -> list[str]:
    """Write ``parameters``' engine choices to ``settings`` (default: Slicer's), only the ones that
    changed; the fields written. ``parameters`` ``None`` writes nothing."""
    settings = application_settings() if settings is None else settings
    if parameters is None or settings is None:
        return []
    written = []
    for name in REMEMBERED:
        key, value = PREFIX + name, str(getattr(parameters, name))
        if not settings.contains(key) or str(settings.value(key)) != value:
            settings.setValue(key, value)
            written.append(name)
    return written


def with_engine_choices(wrap: Callable[[Any], Parameters], node: Any,
                        settings: Any = None) -> Parameters:
    """``wrap(node)`` (e.g. ``PolypSAMParameterNode(node)``), its engine choices taken from
    ``settings`` (default: Slicer's) when ``node`` is new: it lacks the :data:`FROM_SETTINGS`
    attribute, which a scene close removes and a saved scene keeps. A stored value the field
    refuses (a model no longer offered) is skipped: the field keeps its value.

    (Whether a parameter is present cannot tell a new node: after a scene close, Slicer's
    parameter-node wrappers still alive write their defaults into the reset node.)"""
    parameters = wrap(node)
    if node.GetAttribute(FROM_SETTINGS):
        return parameters
    settings = application_settings() if settings is None else settings
    for name in REMEMBERED if settings is not None else ():
        key = PREFIX + name
        if not settings.contains(key) or settings.value(key) is None:
            continue
        current = getattr(parameters, name)
        try:
            setattr(parameters, name, type(current)(str(settings.value(key))))
        except (TypeError, ValueError):
            continue
    node.SetAttribute(FROM_SETTINGS, "yes")
    return parameters
