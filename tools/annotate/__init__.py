"""The local annotation tool: the model predicts everyone, the user corrects a few keypoints, the model refines.

``python tools/annotate.py IMAGES --config CFG --checkpoint CKPT`` serves ``static/`` and a JSON API
(``server.py``) over a :class:`~tools.annotate.workspace.Workspace` (one ``PoseSession`` per image, saved at once to a
COCO keypoints file by ``store.py``); ``summary.py`` prints the effort log. The API is documented in docs/annotate.md.
"""
