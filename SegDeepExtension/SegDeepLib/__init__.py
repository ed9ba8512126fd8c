"""Support library of the SegDeep 3D Slicer module.

* :mod:`SegDeepLib.logic` -- :class:`~SegDeepLib.logic.SegDeepLogicBase`, everything the module
  does with MRML nodes (segment, compare with a threshold, export for printing). It imports only
  ``slicer`` (MRML, no Qt) and VTK, so it runs both inside Slicer and against ``slicer-core``.
* :mod:`SegDeepLib.mrml` -- exact conversions between MRML nodes and the engine's
  :class:`~SegDeepLogic.volume.Volume` (RAS in MRML, LPS in the engine).
* :mod:`SegDeepLib.process` -- the worker process: start, read its progress, kill its tree.
* :mod:`SegDeepLib.worker` -- the script run in that process (engine only; never imports slicer).
* :mod:`SegDeepLib.dependencies` -- Python packages installed on first use, with consent.
* :mod:`SegDeepLib.selftest` -- the end-to-end scenario shared by ``SegDeepTest`` and pytest.

Nothing here installs anything or starts anything when imported.
"""
