"""Scene set-up for the buttons: Add box (an ROI in place mode), the box list's rows and a new
output segmentation."""

from __future__ import annotations

from typing import Any, Iterable

import slicer

from .roi import FRAME_ATTRIBUTE


def _remember_frame_when_placed(roi: Any, browser: Any) -> None:
    """Record the browser's item on ``roi`` when its position is defined (placed), not before:
    the user may move through the sequence between pressing Add box and drawing the box."""

    def on_defined(caller: Any, event: str) -> None:
        del event
        if browser.GetScene() is not None:
            caller.SetAttribute(FRAME_ATTRIBUTE, str(int(browser.GetSelectedItemNumber())))

    roi.AddObserver(slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, on_defined)


def place_box(scene: Any, selection_node: Any, interaction_node: Any, name: str = "Polyp",
              browser: Any = None) -> Any:
    """A new ROI with the slice views in place mode for it: the user's next click-drag draws it.

    With a sequence ``browser``, the item shown when the ROI is placed is remembered on the ROI
    (:data:`~polypsam.mrml.roi.FRAME_ATTRIBUTE`) for Track and Refine.
    """
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", scene.GenerateUniqueName(name))
    roi.CreateDefaultDisplayNodes()
    if browser is not None:
        _remember_frame_when_placed(roi, browser)
    _start_placing(selection_node, interaction_node, roi, persistent=False)
    return roi


def box_rows(scene: Any, chosen: Iterable[Any] = ()) -> list[tuple[str, str, bool]]:
    """The box list: ``(node ID, name, checked)`` of every ROI of ``scene`` in scene order, checked
    when it is one of ``chosen`` (the parameter node's ``rois``). The list is rebuilt only when
    these rows change, so other nodes and moved handles leave it (and its selection) alone."""
    ids = {node.GetID() for node in chosen if node is not None}
    rois = [scene.GetNthNodeByClass(i, "vtkMRMLMarkupsROINode")
            for i in range(scene.GetNumberOfNodesByClass("vtkMRMLMarkupsROINode"))]
    return [(roi.GetID(), roi.GetName(), roi.GetID() in ids) for roi in rois]


def _start_placing(selection_node: Any, interaction_node: Any, node: Any, persistent: bool) -> None:
    """Slice views in place mode for ``node`` (one placement, or until the user leaves it)."""
    selection_node.SetReferenceActivePlaceNodeClassName(node.GetClassName())
    selection_node.SetActivePlaceNodeID(node.GetID())
    interaction_node.SetPlaceModePersistence(1 if persistent else 0)
    interaction_node.SetCurrentInteractionMode(interaction_node.Place)


def new_segmentation(scene: Any, reference_volume: Any = None, name: str = "PolypSAM") -> Any:
    """A new segmentation tied to ``reference_volume`` (if given), as Slicer's own modules do:
    its reference geometry (parameter and node reference role) is the volume, and it sits beside
    the volume in the subject hierarchy (under its study), which DICOM SEG export needs."""
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(name))
    segmentation.CreateDefaultDisplayNodes()
    if reference_volume is not None:
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume)
        segmentation.SetNodeReferenceID(segmentation.GetReferenceImageGeometryReferenceRole(),
                                        reference_volume.GetID())
        hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
        if hierarchy is not None:
            volume_item = hierarchy.GetItemByDataNode(reference_volume)
            parent = hierarchy.GetItemParent(volume_item) if volume_item else 0
            if parent:
                item = hierarchy.GetItemByDataNode(segmentation)
                if item:  # desktop Slicer's subject hierarchy plugins add an item for new nodes
                    hierarchy.SetItemParent(item, parent)
                else:
                    hierarchy.CreateItem(parent, segmentation)
    return segmentation


def place_clicks(selection_node: Any, interaction_node: Any, point_list: Any,
                 browser: Any = None) -> None:
    """Persistent place mode for ``point_list``: every click in a slice view adds a point to it
    (until the user leaves place mode), as the include/exclude click tools need.

    With a sequence ``browser``, each point records the item shown when it is placed
    (:func:`~polypsam.mrml.video_clicks.observe_click_frames`), for tracking with clicks.
    """
    if browser is not None:
        from .video_clicks import observe_click_frames

        observe_click_frames(point_list, browser)
    _start_placing(selection_node, interaction_node, point_list, persistent=True)
