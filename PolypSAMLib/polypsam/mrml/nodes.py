"""Small helpers shared by the MRML adapter: VTK matrices, parent transforms, node checks."""

from __future__ import annotations

from typing import Any

import numpy as np
import vtk

from ..errors import InvalidInputError

Extent = tuple[int, int, int, int, int, int]
"""Inclusive voxel extent ``(i0, i1, j0, j1, k0, k1)`` (VTK's order)."""


def matrix_to_numpy(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    """A ``vtkMatrix4x4`` as a 4x4 NumPy array."""
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=float)


def numpy_to_matrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    """A 4x4 NumPy array as a ``vtkMatrix4x4``."""
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def node_to_world(node: Any, what: str) -> np.ndarray:
    """4x4 node-to-world matrix of ``node``'s parent transforms; error if non-linear."""
    parent = node.GetParentTransformNode()
    if parent is None:
        return np.eye(4)
    if not parent.IsTransformToWorldLinear():
        raise InvalidInputError(
            f"{what} '{node.GetName()}' is under a non-linear transform "
            f"('{parent.GetName()}'); harden or remove the transform first"
        )
    matrix = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(matrix)
    return matrix_to_numpy(matrix)


def require_node(node: Any, class_name: str, what: str) -> None:
    """Raise :class:`InvalidInputError` naming ``what`` unless ``node`` is a ``class_name``."""
    if node is None:
        raise InvalidInputError(f"no {what} given")
    if not node.IsA(class_name):
        raise InvalidInputError(f"{what} must be a {class_name}, got a {node.GetClassName()}")


def image_dims(node: Any, what: str) -> tuple[int, int, int]:
    """``(I, J, K)`` voxel counts of a volume node's image (error naming ``what`` if none)."""
    image = node.GetImageData()
    if image is None:
        raise InvalidInputError(f"{what} '{node.GetName()}' has no image data")
    dims = image.GetDimensions()
    return int(dims[0]), int(dims[1]), int(dims[2])


def ijk_to_world(volume_node: Any) -> np.ndarray:
    """4x4 IJK-to-world matrix of a volume node (its linear parent transforms included)."""
    require_node(volume_node, "vtkMRMLVolumeNode", "volume")
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return node_to_world(volume_node, "volume") @ matrix_to_numpy(matrix)
