"""The camera side of a unit: capture, motion, clips, snapshots, tamper, retention.

``daemon``    the component ``xunfang run … camera`` runs: supervises one worker
              process per camera, commits their journal writes, runs retention
``worker``    one camera's process: capture + pipeline (``python -m camera.worker``)
``capture``   a source read on its own thread; stall → offline; reconnects
``motion``    motion on a small grey frame; masks; recalibration; sensitivity
``tamper``    covered, defocused, moved, frozen against a learned baseline
``recorder``  the pre-roll ring, clips, snapshots, the ``footage`` metadata
``avi``       MJPEG-in-AVI from already-encoded JPEG frames; crash repair
``pipeline``  frames and journal requests in, events out
``retention`` quota, age and the journal's disk reserve
``files``     where footage lives and what it is called (no OpenCV)

See ``docs/camera.md``.
"""
