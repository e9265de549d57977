"""The Slicer module's self-test scenarios (``polypsam.mrml.scenarios``), run here on slicer-core.

``PolypSAMTest`` runs the same functions in desktop Slicer with the module's logic; here the
logic is what they use of it: the library's session and an engine worker thread.
"""

from __future__ import annotations

import sys
import types

import pytest

pytestmark = pytest.mark.usefixtures("slicer_core")


@pytest.fixture
def logic(slicer_scene):
    from polypsam import mrml
    from polypsam.background import EngineWorker

    worker = EngineWorker()
    session = mrml.Session(slicer_scene)
    yield types.SimpleNamespace(session=session, worker=worker)
    session.close()
    worker.close()


def _names():
    from polypsam.mrml import scenarios

    return [what for what, _ in scenarios.SCENARIOS]


@pytest.mark.parametrize("what", _names())
def test_self_test_scenario_runs_on_slicer_core(what, logic, module_engine):
    from polypsam.mrml import scenarios

    pumped = []
    scenario = dict(scenarios.SCENARIOS)[what]
    scenario(logic, module_engine, lambda: pumped.append(1))
    if scenario is scenarios.propagate_volume:
        assert pumped, "the scenario served the calling thread while the model worked"


def test_propagate_scenario_exports_without_slicerio(logic, module_engine, monkeypatch):
    """Desktop Slicer has no slicerio: the self-test's ``.seg.nrrd`` export goes through Slicer's
    own storage node (issue 18 §3.7)."""
    from polypsam.mrml import scenarios

    monkeypatch.setitem(sys.modules, "slicerio", None)  # import slicerio raises ImportError
    scenarios.propagate_volume(logic, module_engine, lambda: None)


def test_a_failing_check_names_what_failed(logic, module_engine, slicer_scene):
    """A scenario raises AssertionError with its message (what the self-test reports)."""
    from polypsam.mrml import scenarios

    class NoSegments:
        def __init__(self, session):
            self.session = session

        def run(self, request, engine, context=None):
            result = self.session.run(request, engine, context)
            result.segment_ids.clear()
            return result

    broken = types.SimpleNamespace(session=NoSegments(logic.session), worker=logic.worker)
    with pytest.raises(AssertionError, match="segments written"):
        scenarios.segment_rgb_frame(broken, module_engine, lambda: None)
