"""Backbone families (ResNet, Swin, timm). ``models/clickpose/backbone.py`` maps names to them."""
