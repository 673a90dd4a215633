"""One HTTP service over one :class:`models.predictor.Predictor`: a Label Studio ML backend and an X-AnyLabeling
remote server (``python -m tools.serve``; see docs/serve.md).

Modules, one concept each: ``errors`` (the refusals a client gets), ``images`` (where an image may come from and
how it is decoded), ``labelconfig`` (a Label Studio labelling config: its controls and keypoint labels), ``core``
(the model, its lock, the image cache and the interactive sessions), ``annotations`` (submitted annotations as a
COCO keypoints file), ``labelstudio`` / ``xanylabeling`` (the two doors), ``access`` (token and request checks),
``app`` (the FastAPI application) and ``__main__`` (the command line).
"""
