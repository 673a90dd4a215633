"""The local annotation tool: the model predicts everyone, the user corrects a few keypoints, the model refines.

``python -m tools.annotate IMAGES --config CFG --checkpoint CKPT`` serves ``static/`` and a JSON API
(``server.py``) over a :class:`~tools.annotate.workspace.Workspace` (one ``session.PoseSession`` per image: people,
undo, visibility, records; saved at once to a COCO keypoints file by ``store.py``); ``effort.py`` keeps the effort
log. The API is documented in docs/annotate.md.
"""
