"""Models: loading any model by name, and the bundled pretrained ImageNet network."""
