"""Models: ``build_model(args) -> (model, criterion, postprocessors)``."""
