"""Layers: anti-aliased and polyphase subsampling, each as a function and a Module."""
